"""ASFF: every level is resized to the target's shape, the weights are a softmax over levels, and
the fused output is the weighted sum of the right levels (hand-computed), on TinyFPN and on
torchvision's FPN (BackboneWithFPN of fasterrcnn_resnet50_fpn)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.asff import ASFF, scale_step
from tests.nets import TinyFPN, randomize_batchnorm


def test_every_resizing_path_gives_the_target_shape():
    # Target 16 channels at 8x8; others 2x, 4x, 8x finer, 2x, 4x coarser, same size with other channels.
    others = [(32, 16), (8, 32), (16, 64), (24, 4), (16, 2), (40, 8)]
    module = ASFF(16, [(c, scale_step((1, 16, 8, 8), (1, c, s, s))) for c, s in others]).eval()
    assert module.others == ((32, 1), (8, 2), (16, 3), (24, -1), (16, -2), (40, 0))
    x = torch.randn(2, 16, 8, 8)
    levels = module.resized(x, *[torch.randn(2, c, s, s) for c, s in others])
    assert [tuple(t.shape) for t in levels] == [(2, 16, 8, 8)] * 7
    # The paper's paths: 2x finer = one stride-2 3x3 conv; 4x finer = max pool, then the conv.
    pools = [sum(isinstance(m, nn.MaxPool2d) for m in r.pools.modules()) for r in module.resize]
    assert pools == [0, 1, 2, 0, 0, 0]
    assert [r.conv[0].kernel_size for r in module.resize] == [(3, 3)] * 3 + [(1, 1)] * 3
    assert [r.conv[0].stride for r in module.resize] == [(2, 2)] * 3 + [(1, 1)] * 3


def test_odd_sizes_of_a_ceil_mode_pyramid_keep_the_target_shape():
    # ResNet pyramids round up: 50 -> 25 -> 13 -> 7.
    module = ASFF(8, [(8, 1), (8, 2), (8, -1)]).eval()
    out = module.fuse(torch.randn(1, 8, 13, 13), torch.randn(1, 8, 25, 25), torch.randn(1, 8, 50, 50), torch.randn(1, 8, 7, 7))
    assert out.shape == (1, 8, 13, 13)


def test_weights_are_a_softmax_over_levels_at_every_pixel():
    module = ASFF(16, [(16, 1), (16, -1)]).eval()
    nn.init.normal_(module.logits.weight, std=1.0)
    x = torch.randn(2, 16, 8, 8)
    weights = module.level_weights(module.resized(x, torch.randn(2, 16, 16, 16), torch.randn(2, 16, 4, 4)))
    assert weights.shape == (2, 3, 8, 8)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 8, 8))
    assert (weights > 0).all() and (weights < 1).all()
    assert weights.flatten(2).std(dim=2).min() > 0, "weights are per pixel, not per image"


def _transparent(module: ASFF) -> None:
    """Make every resize path a pure resampling: identity kernels, exact identity BatchNorm."""
    for resize in module.resize:
        conv, bn = resize.conv[0], resize.conv[1]
        with torch.no_grad():
            conv.weight.zero_()
            k = conv.kernel_size[0] // 2
            for c in range(conv.out_channels):
                conv.weight[c, c, k, k] = 1.0
        bn.eps = 0.0  # running_var = 1, running_mean = 0, weight 1, bias 0


def test_fused_output_is_the_hand_computed_weighted_sum():
    torch.manual_seed(1)
    module = ASFF(2, [(2, -1), (2, 1)], gamma_init=1.0)
    _transparent(module)
    p = torch.tensor([0.2, 0.3, 0.5])  # weights of [target, coarser, finer]
    with torch.no_grad():
        module.logits.weight.zero_()
        module.logits.bias.copy_(p.log())
    module.eval()
    x, coarse, fine = torch.rand(1, 2, 4, 4), torch.rand(1, 2, 2, 2), torch.rand(1, 2, 8, 8)  # non-negative: LeakyReLU passes
    up = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x
    down = fine[:, :, ::2, ::2]  # 3x3 stride-2 conv with a centre tap, padding 1
    expected = 0.2 * x + 0.3 * up + 0.5 * down
    torch.testing.assert_close(module(x, coarse, fine), expected, atol=1e-6, rtol=1e-6)


def test_gamma_blends_from_the_identity_to_the_paper_output():
    module = ASFF(16, [(16, 1), (16, -1)]).eval()
    x, fine, coarse = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 16, 16), torch.randn(2, 16, 4, 4)
    assert torch.equal(module(x, fine, coarse), x)
    fused = module.fuse(x, fine, coarse)
    with torch.no_grad():
        module.gamma.fill_(1.0)
    torch.testing.assert_close(module(x, fine, coarse), fused)
    assert not torch.allclose(fused, x)


def test_levels_are_inferred_from_the_tiny_fpn_sites():
    spec = ps.get_plugin("asff")
    sites = {s.path: s for s in ps.find_sites(TinyFPN(), "neck.level", input_shape=(1, 3, 64, 64))}
    assert spec.infer(sites["smooth.2"], None)["others"] == ((16, 1), (16, 2))  # p5 reads p4, p3
    assert spec.infer(sites["smooth.0"], None)["others"] == ((16, -2), (16, -1))  # p3 reads p5, p4


def test_recipe_on_tiny_fpn_reads_the_original_levels():
    host = randomize_batchnorm(TinyFPN()).eval()
    x = torch.randn(2, 3, 64, 64)
    result = ps.apply(host, "asff", input_shape=(2, 3, 64, 64))
    edited = result.model.eval()
    assert [e.site for e in result.report.edits] == ["smooth.2", "smooth.1", "smooth.0"]
    before, after = host(x), edited(x)
    assert all(torch.equal(before[k], after[k]) for k in before)
    seen = {}
    for edit in result.report.edits:
        edited.get_submodule(edit.module).register_forward_hook(lambda m, args, out, name=edit.site: seen.setdefault(name, args))
    edited(x)
    # Each ASFF reads the three raw levels, its own first, the others in Site.extra order.
    assert [tuple(a.shape[-2:]) for a in seen["smooth.1"]] == [(8, 8), (4, 4), (16, 16)]
    for name, order in {"smooth.2": ("p5", "p4", "p3"), "smooth.1": ("p4", "p5", "p3"), "smooth.0": ("p3", "p5", "p4")}.items():
        assert all(torch.equal(got, before[level]) for got, level in zip(seen[name], order, strict=True))


def test_torchvision_fpn_with_four_levels():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    backbone = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.eval()
    x = torch.randn(1, 3, 128, 128)
    result = ps.apply(backbone, "asff", input_shape=(1, 3, 128, 128))
    edits = result.report.edits
    assert [e.module for e in edits] == ["fpn.asff", "fpn.asff_1", "fpn.asff_2", "fpn.asff_3"]
    edited = result.model.eval()
    assert type(edited) is type(backbone) and ps.edited_source(edited.fpn) is not None  # the FPN is the owner
    assert isinstance(edited.fpn, type(backbone.fpn))
    coarsest = edited.fpn.asff
    assert coarsest.others == ((256, 1), (256, 2), (256, 3))  # P5 reads P4, P3, P2: 2x, 4x, 8x finer
    with torch.no_grad():
        before, after = backbone(x), edited(x)
        assert list(after) == ["0", "1", "2", "3", "pool"]
        assert all(torch.equal(before[k], after[k]) for k in before)
        for edit in edits:
            edited.get_submodule(edit.module).gamma.fill_(1.0)
        fused = edited(x)
    assert all(fused[k].shape == before[k].shape for k in before)
    assert not torch.allclose(fused["3"], before["3"])
    # The extra 'pool' level is computed from the fused P5, as the FPN computes it from P5.
    torch.testing.assert_close(fused["pool"], F.max_pool2d(fused["3"], 1, 2))
    assert math.isfinite(sum(float(t.abs().sum()) for t in fused.values()))


@pytest.mark.parametrize("channels", [16, 48])
def test_runs_for_small_channels_and_maps(channels):
    module = ASFF(channels, [(channels, 1), (channels, -1)]).eval()
    out = module(torch.randn(1, channels, 4, 4), torch.randn(1, channels, 8, 8), torch.randn(1, channels, 2, 2))
    assert out.shape == (1, channels, 4, 4)
