"""Every torchvision classification model either takes `cbam` and `se` (one module per residual merge, counted
independently by tests/zoo/counting.py) and runs in train and eval mode with its output shape, or gets a clear
error saying it has no residual sites. A representative per family runs by default; all of torchvision's
classification builders run under the `slow` marker (`pytest -m slow`), with `se`.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import expected_residuals
from tests.zoo.helpers import new_module_paths, run, structure

REPRESENTATIVES = [
    "resnet18", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
    "convnext_tiny", "mnasnet0_5", "maxvit_t", "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x0_5",
    "squeezenet1_1", "alexnet", "vgg11_bn", "vit_b_16", "swin_t",
]
ALL = torchvision.models.list_models(module=torchvision.models)
# Transformers need their training resolution (position embeddings, windows); convnets run at 160 to save time.
SHAPES = {"inception_v3": (1, 3, 299, 299)}
FIXED = ("vit_", "maxvit_", "swin_")


def shape_for(name: str) -> tuple[int, ...]:
    if name in SHAPES:
        return SHAPES[name]
    return (1, 3, 224, 224) if name.startswith(FIXED) else (1, 3, 160, 160)


def check(name: str, recipe: str) -> str:
    model = ps.load_model(name).eval()
    shape = shape_for(name)
    x = torch.randn(shape)
    batch = torch.randn(2, *shape[1:])  # train-mode BatchNorm after global pooling needs N > 1
    expected = expected_residuals(f"torchvision:{name}", model, x)
    try:
        result = ps.apply(model, recipe, input_shape=shape)
    except ps.SiteError as error:
        assert "has no residual.branch sites" in error.message, error.message
        assert expected.low == 0, f"refused, but {name} has {expected} residual merges ({expected.rule})"
        return "no residual sites"
    found = len(result.report.edits)
    assert found in expected, f"{found} residual sites, expected {expected} ({expected.rule})"
    assert len(new_module_paths(model, result.model)) == found
    for train in (False, True):
        assert structure(run(result.model, batch, train=train)) == structure(run(model, batch, train=train)), f"train={train}"
    return f"{found} edits"


@pytest.mark.parametrize("name", slow_except(REPRESENTATIVES, default={"resnet18", "convnext_tiny", "squeezenet1_1"}))
def test_cbam_and_se_apply_or_say_why_not(name):
    outcomes = {check(name, recipe) for recipe in ("cbam", "se")}
    assert len(outcomes) == 1, outcomes  # both recipes see the same sites


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in REPRESENTATIVES])
def test_every_classification_builder_takes_se_or_says_why_not(name):
    check(name, "se")
