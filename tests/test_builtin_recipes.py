"""Every built-in recipe applies to the model family its paper used and the edited model trains.

Recipes whose steps target pyramid roles run on fasterrcnn_resnet50_fpn; the rest on resnet50.
"""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.slow import slow_except

RECIPES = sorted(ps.builtin_recipes())


def _needs_pyramid(recipe: ps.Recipe) -> bool:
    return any(step.role().startswith(("neck", "upsample")) for step in recipe.steps)


@pytest.fixture(scope="module")
def resnet50():
    return ps.load_model("resnet50")


# Every built-in recipe on the paper's model family is a sweep; by default one recipe per code path: insert after a
# site, replace a conv (weights kept / keys renamed), de-stride, pools, a backbone module, multi-input neck plugins on
# a detector, a torchvision op.
@pytest.mark.parametrize("name", slow_except(RECIPES, default={
    "cbam", "se", "acnet", "antialias", "maxblurpool", "asff", "seb", "blaze", "dcnv2", "aspp", "ghost"}))
def test_recipe_applies_and_trains(name: str, resnet50):
    recipe = ps.load_recipe(name)
    if _needs_pyramid(recipe):
        import torchvision

        # The detector's transform would resize every input to 800 px; a small size keeps the test cheap.
        model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=160)
        result = ps.apply(model, recipe, input_shape=(1, 3, 128, 128))
        edited = result.model.eval()
        with torch.no_grad():
            detections = edited([torch.rand(3, 128, 160)])
        assert set(detections[0]) == {"boxes", "labels", "scores"}
        assert type(edited) is type(model)
        # Training a detector needs targets; the edited backbone (with its FPN) trains on its own.
        features = edited.backbone.train()(torch.randn(2, 3, 128, 128))
        sum(f.square().mean() for f in features.values()).backward()
        new = [edited.get_submodule(e.module) for e in result.report.edits]
        assert all(p.grad is not None for m in new for p in m.parameters() if p.requires_grad)
        return
    # 128 px: every stage of a ResNet-50 keeps a map of at least 4x4, which every catalog module takes.
    result = ps.apply(resnet50, recipe, input_shape=(1, 3, 128, 128))
    edited = result.model.train()
    x = torch.randn(2, 3, 128, 128)
    out = edited(x)
    assert out.shape == (2, 1000)
    out.square().mean().backward()
    new = [edited.get_submodule(e.module) for e in result.report.edits]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for m in new for p in m.parameters()) or all(
        not list(m.parameters()) for m in new
    )
    missing, unexpected = edited.load_state_dict(resnet50.state_dict(), strict=False)
    # Replacements that cannot hold the replaced weights (Ghost, SCConv, ...) must say so in the report.
    assert sorted(unexpected) == result.report.renamed_keys, "an original key vanished without being reported"
    assert all(any(key.startswith(e.module + ".") for e in result.report.edits) for key in missing)


# Pool recipes on models whose strided pools are not all plain max pools (issue 8, item 13): each step
# selects downsample.pool by shape, and skips what its plugin cannot reproduce instead of refusing the
# model. Input 64x64 keeps the two moderately heavy models cheap.


def test_maxblurpool_skips_densenet_average_pools():
    model = ps.load_model("densenet121")
    result = ps.apply(model, "maxblurpool", input_shape=(1, 3, 64, 64))
    assert [e.site for e in result.report.edits] == ["features.pool0"]
    skipped = [note for note in result.report.notes if " skipped '" in note]
    assert [note.split("'")[1] for note in skipped] == [f"features.transition{i}.pool" for i in (1, 2, 3)]
    assert all("AvgPool2d" in note for note in skipped)
    assert isinstance(result.model.features.transition1.pool, torch.nn.AvgPool2d)
