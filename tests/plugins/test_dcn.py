"""Deformable convs: zero offsets (and unit modulation) reproduce the replaced conv exactly; an offset of
one pixel samples one pixel over (the (dy, dx) order), half a pixel blends bilinearly; the modulation
scales the taps; plan-time fake tensors and FLOP counting work with torchvision's kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugsurgeon.graph.fake import run_fake
from plugsurgeon.plugins.dcn import DeformConv, dcnv1, dcnv2


@pytest.mark.parametrize("factory", [dcnv1, dcnv2])
@pytest.mark.parametrize(
    "conv",
    [
        dict(stride=1, padding=1),
        dict(stride=2, padding=1, bias=True),
        dict(stride=1, padding=2, dilation=2, groups=4),
        dict(stride=2, padding=1, padding_mode="reflect"),
    ],
    ids=["plain", "strided-bias", "dilated-grouped", "reflect"],
)
def test_zero_offsets_and_unit_mask_reproduce_the_conv(factory, conv):
    source = nn.Conv2d(8, 12, 3, **{"bias": False, **conv})
    block = factory(source)
    assert block.weight is source.weight and block.bias is source.bias
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(block(x), source(x), atol=1e-5, rtol=1e-5)


def _set_offsets(block: DeformConv, dy: float, dx: float, mask_logit: float = 0.0) -> None:
    taps = block._taps
    with torch.no_grad():
        bias = block.offset.bias
        bias[0 : 2 * taps : 2] = dy  # torchvision's layout: (dy, dx) per tap, taps row-major
        bias[1 : 2 * taps : 2] = dx
        if block.modulated:
            bias[2 * taps :] = mask_logit


def test_a_one_pixel_offset_samples_one_pixel_over():
    source = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    block = dcnv1(source)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        _set_offsets(block, dy=0.0, dx=1.0)
        shifted = F.pad(x[..., 1:], (0, 1))  # x[..., j + 1]
        torch.testing.assert_close(block(x)[..., 1:-1], source(shifted)[..., 1:-1], atol=1e-5, rtol=1e-5)
        _set_offsets(block, dy=1.0, dx=0.0)
        shifted = F.pad(x[..., 1:, :], (0, 0, 0, 1))  # x[..., i + 1, :]
        torch.testing.assert_close(block(x)[..., 1:-1, :], source(shifted)[..., 1:-1, :], atol=1e-5, rtol=1e-5)


def test_a_half_pixel_offset_blends_bilinearly():
    source = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    block = dcnv1(source)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        _set_offsets(block, dy=0.5, dx=0.0)
        down = F.pad(x[..., 1:, :], (0, 0, 0, 1))
        want = 0.5 * (source(x) + source(down))
        torch.testing.assert_close(block(x)[..., 1:-1, :], want[..., 1:-1, :], atol=1e-5, rtol=1e-5)


def test_modulation_scales_the_taps():
    source = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 7, 7)
    block = dcnv2(source)
    with torch.no_grad():
        _set_offsets(block, 0.0, 0.0, mask_logit=math.log(3.0))  # 2 * sigmoid(log 3) = 1.5
        torch.testing.assert_close(block(x), 1.5 * source(x), atol=1e-5, rtol=1e-5)
        paper = dcnv2(source, mask_scale=1.0)  # the paper's sigmoid: 0.5 at init, not identity
        torch.testing.assert_close(paper(x), 0.5 * source(x), atol=1e-5, rtol=1e-5)


def test_runs_on_fake_tensors_and_counts_flops():
    source = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    out, flops = run_fake(dcnv2(source), [(2, 16, 9, 9)])
    assert tuple(out.shape) == (2, 32, 5, 5)
    conv = 2 * 2 * 32 * 5 * 5 * 16 * 9
    offset = 2 * 2 * 27 * 5 * 5 * 16 * 9
    assert flops == conv + offset


def test_deformable_groups():
    source = nn.Conv2d(8, 8, 3, padding=1)
    block = dcnv2(source, deformable_groups=2)
    assert block.offset.out_channels == 3 * 2 * 9
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), source(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="deformable_groups"):
        dcnv1(source, deformable_groups=3)
