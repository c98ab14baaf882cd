"""TorchScript modules (torch.jit.script, torch.jit.trace) are compiled code: every entry point refuses
them with one clear error before touching them (they take no hooks, so a raw RuntimeError came out)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.errors import PlugsurgeonError
from tests.nets import TinyResNet
from tests.slow import slow_except

SHAPE = (1, 3, 32, 32)
CALLS = {
    "apply": lambda m: ps.apply(m, "se", input_shape=SHAPE),
    "plan": lambda m: ps.plan(m, "se", input_shape=SHAPE),
    "find_sites": lambda m: ps.find_sites(m, input_shape=SHAPE),
    "picture": lambda m: ps.picture(m, input_shape=SHAPE),
    "deploy": lambda m: ps.deploy(m, input_shape=SHAPE),
}


class Holder(nn.Module):
    """A plain model with a scripted part."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))

    def forward(self, x):
        return self.body(self.stem(x))


@pytest.fixture(scope="module")
def models():
    model = TinyResNet().eval()
    return {
        "script": torch.jit.script(model),
        "trace": torch.jit.trace(model, torch.randn(SHAPE)),
        "scripted part": Holder().eval(),
    }


@pytest.mark.parametrize(
    ("kind", "call"),
    slow_except(
        itertools.product(["script", "trace", "scripted part"], CALLS),
        default=[*(("script", call) for call in CALLS), ("trace", "deploy"), ("scripted part", "find_sites")],
    ),
)
def test_torchscript_models_are_refused_clearly_by_every_entry_point(models, kind, call):
    model = models[kind]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlugsurgeonError, match="TorchScript") as refused:
        CALLS[call](model)
    assert "torch.jit" in str(refused.value) and "nn.Module it was made from" in refused.value.hint
    if kind == "scripted part":
        assert "'body'" in str(refused.value)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    model(torch.randn(SHAPE))  # still runs as it did
