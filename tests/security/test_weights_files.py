"""`--weights FILE` / ps.load_weights: only weights-only loads, sizes bounded before anything is
decompressed, and every key, shape and dtype checked before a single tensor is copied."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import plugsurgeon as ps
from tests.nets import TinyResNet
from tests.security.conftest import finishes

# weights_only checks sparse tensors' invariants and says so; refusing them is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")


class Hostile:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def model():
    return TinyResNet()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


@pytest.fixture
def never_loads(monkeypatch):
    """Fails the test if torch.load or safetensors' load_file is reached."""
    import safetensors.torch

    reached = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: reached.append("torch.load"))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: reached.append("load_file"))
    return reached


def _bomb(path, model, expanded: int):
    """A real torch checkpoint of ``model`` plus one deflated entry of ``expanded`` zero bytes: a few
    KB on disk. Streamed, so making it allocates nothing."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    source = zipfile.ZipFile(buffer)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in source.infolist():
            archive.writestr(entry.filename, source.read(entry.filename))
        prefix = source.infolist()[0].filename.split("/")[0]
        with archive.open(f"{prefix}/data/999", "w", force_zip64=True) as stream:
            chunk = bytes(1 << 20)
            for _ in range(expanded >> 20):
                stream.write(chunk)


def test_a_deflated_zip_that_expands_is_refused_before_it_is_read(tmp_path, model, never_loads):
    _bomb(tmp_path / "bomb.pt", model, 64 << 20)
    assert (tmp_path / "bomb.pt").stat().st_size < 1 << 20
    before = _state(model)
    with pytest.raises(ps.ModelLoadError, match=r"bomb.pt' expands to 6\d,\d{3},\d{3} bytes, more than the 1\d,\d{3},\d{3} a checkpoint of this model may take"):
        ps.load_weights(model, tmp_path / "bomb.pt")
    assert never_loads == [] and _unchanged(model, before)


def test_a_file_larger_than_any_checkpoint_of_the_model(tmp_path, model, never_loads):
    with open(tmp_path / "huge.safetensors", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: takes no disk
    with pytest.raises(ps.ModelLoadError, match="has 1,073,741,824 bytes, more than the"):
        ps.load_weights(model, tmp_path / "huge.safetensors")
    assert never_loads == []


def test_a_safetensors_file_with_unknown_tensors_is_refused_from_its_header(tmp_path, model, never_loads):
    save_file({**model.state_dict(), "payload": torch.zeros(1000, 1000)}, tmp_path / "extra.safetensors")
    with pytest.raises(ps.ModelLoadError, match=r"1 unexpected key\(s\) \['payload'\]"):
        ps.load_weights(model, tmp_path / "extra.safetensors")
    assert never_loads == []


def test_checkpoints_with_optimizer_state_still_load(tmp_path, model):
    """The bound leaves room for what training checkpoints hold next to the weights."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    moments = {k: [torch.zeros_like(v), torch.zeros_like(v)] for k, v in state.items() if v.is_floating_point()}
    torch.save({"model": state, "optimizer": moments, "epoch": 3}, tmp_path / "train.pt")
    ps.load_weights(model, tmp_path / "train.pt")
    assert torch.equal(model.head.weight, state["head.weight"])


def test_half_precision_checkpoints_load_into_float_models(tmp_path, model):
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "half.safetensors")
    ps.load_weights(model, tmp_path / "half.safetensors")
    assert model.head.weight.dtype == torch.float32


@pytest.mark.parametrize("format_", ["pickle", "torch.save"])
def test_hostile_pickles_never_run(tmp_path, model, format_):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    if format_ == "pickle":
        path.write_bytes(pickle.dumps({"head.weight": Hostile(marker)}))
    else:
        torch.save({"head.weight": Hostile(marker)}, path)
    before = _state(model)
    with pytest.raises(ps.ModelLoadError, match="it was not unpickled"):
        ps.load_weights(model, path)
    assert not marker.exists() and _unchanged(model, before)


def _save(path, state):
    torch.save(state, path)
    return path


def _bad(model, kind):
    state = _state(model)
    if kind == "int keys":
        return {i: v for i, v in enumerate(state.values())}
    if kind == "tuple keys":
        return {tuple(k.split(".")): v for k, v in state.items()}
    if kind == "int64 for float":
        return {k: v.long() for k, v in state.items()}
    if kind == "complex for float":
        return {k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()}
    if kind == "float for int":
        return {k: v.float() for k, v in state.items()}
    if kind == "bool for float":
        return {k: v.bool() if v.is_floating_point() else v for k, v in state.items()}
    if kind == "sparse":
        return {**state, "head.weight": state["head.weight"].to_sparse()}
    if kind == "one bad shape at the end":
        return {**state, "head.bias": torch.zeros(3)}
    if kind == "not a tensor":
        return {**state, "head.bias": [0.0] * 10}
    if kind == "empty":
        return {}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("int keys", "has the key 0 (int); state_dict keys are strings"),
        ("tuple keys", "has the key ('stem', '0', 'weight') (tuple); state_dict keys are strings"),
        ("int64 for float", "'stem.0.weight' is int64 where the model has float32"),
        ("complex for float", "'stem.0.weight' is complex64 where the model has float32"),
        ("float for int", "is float32 where the model has int64"),
        ("bool for float", "'stem.0.weight' is bool where the model has float32"),
        ("sparse", "'head.weight' is a torch.sparse_coo tensor, not a plain dense one"),
        ("one bad shape at the end", "'head.bias' has shape (3,) where the model has (10,)"),
        ("not a tensor", "holds a list at 'head.bias', not a tensor"),
        ("empty", "holds no state_dict of tensors"),
    ],
)
def test_bad_checkpoints_are_refused_before_anything_is_copied(tmp_path, model, kind, problem):
    """Every tensor but the bad ones differs from the model's: a copy-then-refuse would show."""
    for parameter in model.parameters():
        parameter.data.fill_(0.5)
    before = _state(model)
    path = _save(tmp_path / "bad.pt", _bad(TinyResNet(), kind))
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load_weights(model, path)
    assert problem in refused.value.message
    assert _unchanged(model, before)


def test_weights_paths_that_are_not_files(tmp_path, model):
    with pytest.raises(ps.ModelLoadError, match="weights file '.*' is a directory"):
        ps.load_weights(model, tmp_path)
    with pytest.raises(ps.ModelLoadError, match="weights file '.*missing.pt' does not exist"):
        ps.load_weights(model, tmp_path / "missing.pt")
    os.mkfifo(tmp_path / "fifo.pt")
    error = finishes(lambda: ps.load_weights(model, tmp_path / "fifo.pt"))
    assert isinstance(error, ps.ModelLoadError) and "is not a regular file" in error.message


def test_data_parallel_prefix_is_dropped_only_when_every_key_has_it(tmp_path, model):
    state = {f"module.{k}": v for k, v in _state(TinyResNet()).items()}
    ps.load_weights(model, _save(tmp_path / "dp.pt", state))
    state["head.bias"] = state.pop("module.head.bias")
    with pytest.raises(ps.ModelLoadError, match="missing"):
        ps.load_weights(model, _save(tmp_path / "mixed.pt", state))
