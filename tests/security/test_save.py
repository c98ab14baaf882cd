"""ps.save never overwrites a saved model unless asked, never writes through links, and writes
nothing when it refuses."""

from __future__ import annotations

import math
import os

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.surgery.record import get_provenance, set_provenance
from tests.nets import TinyResNet
from tests.security.conftest import snapshot


@pytest.fixture
def small():
    return ps.load_model("squeezenet1_1")


def test_an_existing_model_directory_is_kept_unless_forced(plain_dir, small):
    (plain_dir / "notes.txt").write_text("mine")
    before = snapshot(plain_dir)
    with pytest.raises(ps.PlugsurgeonError, match="already holds a saved model .manifest.json, weights.safetensors.; nothing was written") as refused:
        ps.save(small, plain_dir)
    assert "force=True" in refused.value.hint and "--force" in refused.value.cli_hint  # Python, and the CLI's words
    assert snapshot(plain_dir) == before
    with torch.no_grad():
        small.classifier[1].bias.add_(1)  # the autouse seed would build the saved weights again
    ps.save(small, plain_dir, force=True)
    after = snapshot(plain_dir)
    assert after["notes.txt"] == b"mine" and after["weights.safetensors"] != before["weights.safetensors"]
    assert sorted(after) == sorted(before)  # no temporary files left behind


@pytest.mark.parametrize("present", ["manifest.json", "weights.safetensors"])
def test_either_file_marks_a_model_directory(tmp_path, small, present):
    (tmp_path / present).write_text("x")
    with pytest.raises(ps.PlugsurgeonError, match="already holds a saved model"):
        ps.save(small, tmp_path)
    assert (tmp_path / present).read_text() == "x"


def test_forced_save_replaces_links_instead_of_writing_through_them(plain_dir, small, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("weights.safetensors", "manifest.json"):
        (plain_dir / name).unlink()
        (plain_dir / name).symlink_to(victim)
    ps.save(small, plain_dir, force=True)
    assert victim.read_text() == "precious"
    assert not (plain_dir / "weights.safetensors").is_symlink()
    assert type(ps.load(plain_dir)).__name__ == "SqueezeNet"


def test_a_file_in_the_way(tmp_path, small):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(ps.PlugsurgeonError, match="exists and is not a directory"):
        ps.save(small, tmp_path / "out", force=True)
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("source", ["../model", "/abs/model", "timm:hf-hub:a/b", "x:y:z", ""])
def test_sources_that_could_not_be_loaded_are_refused_at_save(tmp_path, source):
    with pytest.raises(ps.PlugsurgeonError):
        ps.save(TinyResNet(), tmp_path / "out", source=source)
    assert not (tmp_path / "out").exists()


def test_a_step_that_cannot_be_recorded_writes_nothing(tmp_path, small):
    set_provenance(small, {"source": "squeezenet1_1", "steps": [{"kind": "deploy", "input_shape": [1, 3, math.nan, 1]}]})
    with pytest.raises(ps.PlugsurgeonError, match="cannot record how this SqueezeNet was made"):
        ps.save(small, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path, small, monkeypatch):
    import safetensors.torch

    def broken(model, filename, **kwargs):
        open(filename, "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", broken)
    with pytest.raises(ps.PlugsurgeonError, match="cannot write to .*No space left on device"):
        ps.save(small, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_round_trip_records_edits_and_versions(edited_dir):
    from plugsurgeon.store.saved import read_manifest

    manifest = read_manifest(edited_dir)
    assert manifest.format == "plugsurgeon/2" and set(manifest.versions) == {"plugsurgeon", "torch", "torchvision"}
    (step,) = manifest.steps
    assert [e.path for e in step.edits] == ["layer1.0.se", "layer1.1.se", "layer2.0.se", "layer2.1.se"]
    assert {(e.plugin, e.mode, e.role, e.step) for e in step.edits} == {("se", "after", "residual.branch", 1)}
    loaded = ps.load(edited_dir, trust_source=True)
    assert get_provenance(loaded)["steps"] == [step.model_dump(mode="json")]
    x = torch.randn(2, 3, 32, 32)
    resaved = edited_dir.parent / "again"
    ps.save(loaded, resaved)  # the provenance of a loaded model saves again without the caller's help
    with torch.no_grad():
        torch.testing.assert_close(ps.load(resaved, trust_source=True)(x), loaded(x), rtol=0, atol=0)
    assert os.listdir(resaved) and (resaved / "manifest.json").read_text() == (edited_dir / "manifest.json").read_text()


def test_steps_recorded_without_their_edits_are_resolved_at_save(tmp_path):
    """A recipe step recorded without edits is redone on a fresh build, which must give the model saved."""
    from plugsurgeon.store.saved import read_manifest

    result = ps.apply(TinyResNet(), "se", input_shape=(1, 3, 32, 32))
    provenance = get_provenance(result.model)
    bare = [{k: v for k, v in step.items() if k != "edits"} for step in provenance["steps"]]
    set_provenance(result.model, {"source": "tests.nets:TinyResNet", "steps": bare})
    ps.save(result.model, tmp_path / "resolved")
    assert [e.path for e in read_manifest(tmp_path / "resolved").steps[0].edits] == ["layer1.0.se", "layer1.1.se", "layer2.0.se", "layer2.1.se"]
    set_provenance(result.model, {"source": "tests.nets:BranchyNet", "steps": bare})
    with pytest.raises(ps.PlugsurgeonError):
        ps.save(result.model, tmp_path / "other")  # BranchyNet has no residual sites: not what was edited
    assert not (tmp_path / "other").exists()
    set_provenance(result.model, {"source": "tests.nets:TinyResNet", "steps": bare})
    result.model.head = torch.nn.Linear(32, 5)  # changed by hand after surgery
    with pytest.raises(ps.PlugsurgeonError, match=r"is not what its recorded source and steps build \(first differences: \['head.bias'"):
        ps.save(result.model, tmp_path / "changed")
    assert not (tmp_path / "changed").exists()
