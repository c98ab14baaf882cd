"""Every torchvision classification model either takes `cbam` and `se` and keeps its output shape, or gets a
clear error saying it has no residual sites. A representative per family runs by default; set
PLUGSURGEON_FULL_SWEEP=1 to run all of torchvision's classification models (several minutes)."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

import plugsurgeon as ps

REPRESENTATIVES = [
    "resnet18", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
    "convnext_tiny", "mnasnet0_5", "maxvit_t", "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x0_5",
    "squeezenet1_1", "alexnet", "vgg11_bn", "vit_b_16", "swin_t",
]
ALL = torchvision.models.list_models(module=torchvision.models)
MODELS = ALL if os.environ.get("PLUGSURGEON_FULL_SWEEP") else REPRESENTATIVES
SHAPES = {"inception_v3": (1, 3, 299, 299)}


def check(name: str, recipe: str) -> str:
    model = ps.load_model(name).eval()
    shape = SHAPES.get(name, (1, 3, 224, 224))
    x = torch.randn(shape)
    try:
        result = ps.apply(model, recipe, input_shape=shape)
    except ps.SiteError as error:
        assert "has no residual.branch sites" in error.message, error.message
        return "no residual sites"
    with torch.no_grad():
        assert result.model.eval()(x).shape == model(x).shape
    assert result.report.edits
    return f"{len(result.report.edits)} edits"


@pytest.mark.parametrize("name", MODELS)
def test_cbam_and_se_apply_or_say_why_not(name):
    outcomes = {check(name, recipe) for recipe in ("cbam", "se")}
    assert len(outcomes) == 1, outcomes  # both recipes see the same sites
