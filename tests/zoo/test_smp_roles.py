"""smp models traced in parts (Segformer: an encoder handing over its maps, then per-level MLPs, a fuse, a head):
`backbone` and `stage` sites lie in the encoder, at its own maps, and ASPP at `backbone` reads the encoder's last map.

Ground truth: smp's split into ``encoder`` / ``decoder`` / ``segmentation_head`` and the encoder's feature list
(``model.encoder(x)``: one map per stride, the last the deepest), from an eager run.
"""

from __future__ import annotations

import math

import pytest
import torch

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.helpers import capture, run, within

smp = pytest.importorskip("segmentation_models_pytorch")

SHAPE = (1, 3, 64, 64)
MODELS = [("Segformer", "mit_b0"), ("Unet", "resnet18"), ("FPN", "resnet18"), ("DeepLabV3", "resnet18")]


def build(arch: str, encoder: str):
    return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=2).eval()


def encoder_maps(model) -> list[torch.Tensor]:
    with torch.no_grad():
        return [f for f in model.encoder(torch.randn(SHAPE)) if f.dim() == 4 and f.shape[1] > 0]


@pytest.mark.parametrize(("arch", "encoder"), slow_except(MODELS, default=[("Segformer", "mit_b0")]))
def test_extractor_sites_are_the_encoders(arch, encoder):
    model = build(arch, encoder)
    maps = encoder_maps(model)
    trace = ps.trace(model, SHAPE)
    (backbone,) = ps.find_sites(trace, "backbone")
    assert within(backbone.path, "encoder"), backbone.path
    assert tuple(backbone.shape) == tuple(maps[-1].shape)
    last_at = {SHAPE[-1] // m.shape[-1]: tuple(m.shape) for m in maps if SHAPE[-1] // m.shape[-1] > 1}
    stages = ps.find_sites(trace, "stage")
    assert all(within(s.path, "encoder") for s in stages), [s.path for s in stages]
    assert sorted(s.stage for s in stages) == sorted(int(math.log2(stride)) for stride in last_at)
    for site in stages:
        assert tuple(site.shape) == last_at[2 ** site.stage], site.path


@pytest.mark.slow
def test_aspp_on_segformer_reads_the_encoders_last_map():
    model = build("Segformer", "mit_b0")
    x = torch.randn(SHAPE)
    deepest = encoder_maps(model)[-1]
    result = ps.apply(model, "aspp", input_shape=SHAPE)
    (edit,) = result.report.edits
    assert within(edit.module, "encoder"), edit.module
    edited = result.model.eval()
    seen, remove = capture({"aspp": edited.get_submodule(edit.module)}, inputs=True)
    run(edited, x, train=False)
    remove()
    assert tuple(seen["aspp"][0].shape) == tuple(deepest.shape)
