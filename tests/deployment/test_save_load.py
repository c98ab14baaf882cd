"""A deployed model saves and loads: load replays the recipe, then deploy, then loads the fused weights strictly."""

from __future__ import annotations

import json

import torch

import plugsurgeon as ps
from tests.deployment.helpers import types_by_path
from tests.nets import randomize_batchnorm

SHAPE = (1, 3, 32, 32)


def test_deployed_acnet_model_round_trips(tmp_path):
    model = ps.load_model("tests.nets:TinyResNet")
    acnet = randomize_batchnorm(ps.apply(model, "acnet", input_shape=SHAPE).model)
    deployed = ps.deploy(acnet, input_shape=SHAPE).model
    ps.save(deployed, tmp_path / "d")
    steps = json.loads((tmp_path / "d" / "manifest.json").read_text())["steps"]
    assert [s["kind"] for s in steps] == ["recipe", "deploy"] and steps[1]["input_shape"] == list(SHAPE)

    loaded = ps.load(tmp_path / "d", trust_source=True)  # the manifest names tests.nets:TinyResNet, which is code
    assert types_by_path(loaded) == types_by_path(deployed) and not loaded.training
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))

    ps.save(loaded, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["steps"] == steps
