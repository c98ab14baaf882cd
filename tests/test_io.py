"""Saving and loading without pickle, and checkpoints that are not what they claim."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import plugsurgeon as ps
from tests.nets import randomize_batchnorm


class Hostile:
    """Unpickling this would run code: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved")
    model = randomize_batchnorm(ps.load_model("resnet18")).eval()
    result = ps.apply(model, "cbam")
    ps.save(result.model, directory)
    return directory, result.model.eval()


def test_round_trip_gives_identical_outputs(saved):
    directory, model = saved
    loaded = ps.load(directory)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == "plugsurgeon/2" and manifest["source"] == "resnet18"
    (step,) = manifest["steps"]
    assert step["recipe"]["name"] == "cbam" and len(step["edits"]) == 8  # every basic block of resnet18
    assert step["edits"][0] == {"step": 1, "plugin": "cbam", "mode": "after", "role": "residual.branch", "site": "layer1.0.bn2",
                                "path": "layer1.0.cbam", "args": step["edits"][0]["args"]}
    assert set(manifest["versions"]) == {"plugsurgeon", "torch", "torchvision"}


def test_load_rejects_what_is_not_a_saved_model(tmp_path, saved):
    with pytest.raises(ps.ModelLoadError, match="not a plugsurgeon model directory"):
        ps.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ps.ModelLoadError, match="not a valid plugsurgeon manifest"):
        ps.load(tmp_path)
    directory, _ = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((directory / "manifest.json").read_text())
    (broken / "weights.safetensors").write_bytes(b"garbage that is not safetensors")
    with pytest.raises(ps.ModelLoadError, match="not a valid safetensors file"):
        ps.load(broken)


def test_save_needs_a_known_source(tmp_path):
    from tests.nets import TinyResNet

    with pytest.raises(ps.PlugsurgeonError, match="does not know how to rebuild"):
        ps.save(TinyResNet(), tmp_path)
    ps.save(TinyResNet(), tmp_path, source="tests.nets:TinyResNet")
    with pytest.raises(ps.ModelLoadError, match="trust_source=True"):
        ps.load(tmp_path)
    assert isinstance(ps.load(tmp_path, trust_source=True), TinyResNet)


def test_load_weights_formats(tmp_path):
    model = ps.load_model("resnet18")
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    ps.load_weights(model, tmp_path / "w.safetensors")
    assert torch.equal(model.fc.weight, state["fc.weight"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    ps.load_weights(ps.load_model("resnet18"), tmp_path / "w.pt")
    with pytest.raises(ps.ModelLoadError, match="does not fit the model"):
        ps.load_weights(ps.load_model("resnet34"), tmp_path / "w.safetensors")


def test_hostile_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"fc.weight": Hostile(marker)}, handle)
    torch.save({"x": Hostile(marker)}, tmp_path / "evil2.pt")
    assert not marker.exists()
    for candidate in (path, tmp_path / "evil2.pt"):
        with pytest.raises(ps.ModelLoadError, match="was not unpickled"):
            ps.load_weights(ps.load_model("resnet18"), candidate)
    assert not marker.exists()
