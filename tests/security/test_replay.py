"""The saved format records what was done; a rebuild that would put modules elsewhere, or build them
with other arguments, is refused, naming the difference and the versions that differ."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.security.conftest import read_manifest, snapshot, write_manifest


def _edit(directory, change):
    data = read_manifest(directory)
    change(data["steps"][0]["edits"], data)
    write_manifest(directory, data)


def test_a_moved_module_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[0].update(path="layer1.0.se_x"))
    before = snapshot(edited_dir)
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(edited_dir, trust_source=True)
    message = refused.value.message
    assert "replaying it would not rebuild the saved model" in message
    assert "recorded but not planned now: se at 'layer1.0.bn2' as 'layer1.0.se_x' (step 1)" in message
    assert "planned now but not recorded: se at 'layer1.0.bn2' as 'layer1.0.se' (step 1)" in message
    assert "versions" in refused.value.hint
    assert snapshot(edited_dir) == before


def test_a_moved_site_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[0].update(site="layer1.0.conv2"))
    with pytest.raises(ps.ModelLoadError, match="recorded but not planned now: se at 'layer1.0.conv2'"):
        ps.load(edited_dir, trust_source=True)


def test_a_missing_edit_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits.pop())
    with pytest.raises(ps.ModelLoadError, match="planned now but not recorded: se at 'layer2.1.bn2'"):
        ps.load(edited_dir, trust_source=True)


def test_other_arguments_are_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[1].update(args={"reduction": 2}))
    with pytest.raises(ps.ModelLoadError, match="recorded but not planned now: se at 'layer1.1.bn2'"):
        ps.load(edited_dir, trust_source=True)


def test_a_mismatch_names_the_versions_that_differ(edited_dir):
    def change(edits, data):
        edits[0]["path"] = "layer1.0.moved"
        data["versions"]["torchvision"] = "0.1.0"

    _edit(edited_dir, change)
    with pytest.raises(ps.ModelLoadError, match=r"it was written with torchvision 0\.1\.0 \(here \d"):
        ps.load(edited_dir, trust_source=True)


def test_other_library_versions_load_when_the_rebuild_matches(edited_dir):
    """The compatibility rule: torch/torchvision differences are fine when the structure is the same."""
    data = read_manifest(edited_dir)
    data["versions"].update(torch="2.3.0", torchvision="0.18.0")
    write_manifest(edited_dir, data)
    model = ps.load(edited_dir, trust_source=True)
    assert hasattr(model.layer2[1], "se")


def test_an_older_plugsurgeon_release_loads(edited_dir):
    data = read_manifest(edited_dir)
    data["versions"]["plugsurgeon"] = "0.0.1"
    write_manifest(edited_dir, data)
    ps.load(edited_dir, trust_source=True)


def test_deployed_models_round_trip(tmp_path):
    from tests.nets import TinyResNet, randomize_batchnorm

    model = randomize_batchnorm(TinyResNet()).eval()
    deployed = ps.deploy(model, input_shape=(1, 3, 32, 32)).model
    ps.save(deployed, tmp_path / "deployed", source="tests.nets:TinyResNet")
    loaded = ps.load(tmp_path / "deployed", trust_source=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=0)
