"""SPP and SPPF: stride-1 "same" max pools against a hand-written window max (borders and negative
values included), the input kept in the concatenation, and SPPF(5) == SPP(5, 9, 13) with shared weights."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.nets import randomize_batchnorm

SPP = ps.get_plugin("spp").factory
SPPF = ps.get_plugin("sppf").factory


def _window_max(x, k):
    """Max over the k x k window centred on each position, clipped to the map (no zero padding)."""
    r = k // 2
    h, w = x.shape[-2:]
    out = torch.empty_like(x)
    for i in range(h):
        for j in range(w):
            out[..., i, j] = x[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].amax(dim=(-2, -1))
    return out


def test_pools_are_stride_one_same_size_window_maxima():
    spp = SPP(16)
    x = -torch.rand(2, 16, 8, 7) - 0.1  # all negative: zero padding would leak 0 into the border maxima
    for pool, k in zip(spp.pools, (5, 9, 13), strict=True):
        got = pool(x)
        assert got.shape == x.shape
        torch.testing.assert_close(got, _window_max(x, k))


def test_concatenation_keeps_the_input_first_then_the_pools_in_order():
    # Fuse weights that copy one block of the 4C concatenation to the output; BN is the identity in eval
    # mode at init and ReLU keeps positive values, so the output shows which block is which.
    spp = SPP(16).eval()
    x = torch.rand(1, 16, 9, 9) + 0.1
    for block, expected in enumerate([x, *(_window_max(x, k) for k in (5, 9, 13))]):
        with torch.no_grad():
            weight = torch.zeros(16, 64, 1, 1)
            weight[torch.arange(16), block * 16 + torch.arange(16)] = 1.0
            spp.fuse[0].weight.copy_(weight)
            torch.testing.assert_close(spp(x), expected, atol=1e-4, rtol=1e-4)  # BN eps


@pytest.mark.parametrize("reduction", [1, 2])
def test_sppf_equals_spp_5_9_13_with_the_same_weights(reduction):
    spp = randomize_batchnorm(SPP(32, reduction=reduction)).double().eval()
    sppf = SPPF(32, reduction=reduction).double().eval()
    sppf.load_state_dict(spp.state_dict(), strict=True)  # same parameter names: only reduce/fuse hold weights
    for size in [(13, 13), (7, 7), (4, 6)]:
        x = torch.randn(2, 32, *size, dtype=torch.float64)
        torch.testing.assert_close(sppf(x), spp(x), rtol=0, atol=0)


def test_chained_pools_are_the_larger_windows():
    sppf = SPPF(16)
    x = torch.randn(1, 16, 10, 11)
    once = sppf.pool(x)
    twice = sppf.pool(once)
    torch.testing.assert_close(twice, _window_max(x, 9))
    torch.testing.assert_close(sppf.pool(twice), _window_max(x, 13))


def test_parameter_count_on_a_resnet50_backbone_map():
    with torch.device("meta"):
        spp, sppf, halved = SPP(2048), SPPF(2048), SPP(2048, reduction=2)
    c = 2048
    assert sum(p.numel() for p in spp.parameters()) == 4 * c * c + 2 * c == 16_781_312
    assert sum(p.numel() for p in sppf.parameters()) == 4 * c * c + 2 * c
    # YOLOv5's layout: 1x1 to C/2, pools, 1x1 from 4 * C/2 back to C
    assert sum(p.numel() for p in halved.parameters()) == (c * c // 2 + c) + (2 * c * c + 2 * c)


def test_even_pool_sizes_are_refused():
    with pytest.raises(ValueError, match="odd"):
        SPP(16, kernels=(4, 9))
