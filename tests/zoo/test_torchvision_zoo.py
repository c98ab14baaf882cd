"""torchvision detection and segmentation builders (random weights, small images): `se` on the backbone's
residual blocks (segmentation: `se` on every builder, `cbam` on two), and on every FPN detector `asff` (one per pyramid output level) and `seb` (one per top-down
merge). The edited model keeps its class, its eval outputs (detections: the same keys and per-detection
shapes) and its train outputs (the same losses, given targets). Two representatives run by default; every
builder runs under the `slow` marker.

Ground truth: torchvision's own structure (``backbone.body`` is the extractor, ``backbone.fpn`` has one
``inner_block`` per input level and one ``layer_block`` per top-down output), eager same-shape add counts of the
extractor (tests/zoo/counting.py), the keys of the model's own outputs.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import count_adds
from tests.zoo.helpers import (
    build_detector,
    detection_images,
    extractor,
    image_size,
    new_module_paths,
    run,
    structure,
    targets_for,
    within,
)

DETECTION = torchvision.models.list_models(module=torchvision.models.detection)
SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)
FPN = [n for n in DETECTION if "fpn" in n]


def assert_detector_runs_like(edited: nn.Module, model: nn.Module, size: int) -> None:
    images = detection_images(size)
    assert type(edited) is type(model)
    assert structure(run(edited, images, train=False), ragged=True) == structure(run(model, images, train=False), ragged=True)
    torch.manual_seed(1)
    edited_losses = run(edited, images, train=True, targets=targets_for(model, size))
    torch.manual_seed(1)
    losses = run(model, images, train=True, targets=targets_for(model, size))
    assert structure(edited_losses) == structure(losses)
    assert all(torch.isfinite(v) for v in edited_losses.values())


@pytest.mark.parametrize(("name", "recipe"), slow_except(
    [(n, r) for n in DETECTION for r in ("se",)] + [(n, r) for n in FPN for r in ("asff", "seb")], default={("retinanet_resnet50_fpn", "seb")}))
def test_detector_takes_the_recipe(name, recipe):
    model = build_detector(name)
    size = image_size(model)
    shape = (1, 3, size, size)
    if recipe == "se":
        expected = count_adds(extractor(model), torch.randn(shape))  # ResNet / MobileNet blocks; VGG: none
        where = "backbone"
    else:
        fpn = model.backbone.fpn
        levels = len(model.backbone(torch.randn(shape)))  # every pyramid output, extra levels (P6/P7, pool) too
        expected = (len(fpn.layer_blocks), levels) if recipe == "asff" else (len(fpn.inner_blocks) - 1,) * 2
        where = "backbone.fpn"
    try:
        result = ps.apply(model, recipe, input_shape=shape)
    except ps.SiteError as error:
        assert recipe == "se" and expected == 0, f"refused: {error}"
        assert "has no residual.branch sites" in error.message
        return
    new = new_module_paths(model, result.model)
    assert len(new) == len(result.report.edits)
    assert all(within(p, where) for p in new), new
    if recipe == "se":
        assert len(new) == expected
    else:
        assert expected[0] <= len(new) <= expected[1], (len(new), expected)
    assert_detector_runs_like(result.model, model, size)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "recipe"), [(n, "se") for n in SEGMENTATION] + [("deeplabv3_resnet50", "cbam"), ("fcn_resnet50", "cbam")])
def test_segmentation_model_takes_the_recipe(name, recipe):
    aux = {} if name.startswith("lraspp") else {"aux_loss": True}  # LR-ASPP has no auxiliary head
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **aux).eval()
    shape = (2, 3, 128, 128)  # batch 2: the image-pooling BatchNorm of ASPP trains only on batches > 1
    x = torch.randn(shape)
    expected = count_adds(model.backbone, x)
    result = ps.apply(model, recipe, input_shape=shape)
    new = new_module_paths(model, result.model)
    assert len(new) == len(result.report.edits) == expected
    assert all(within(p, "backbone") for p in new), new
    assert type(result.model) is type(model)
    for train in (False, True):
        assert structure(run(result.model, x, train=train)) == structure(run(model, x, train=train)), f"train={train}"
