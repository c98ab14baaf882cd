"""CoordConv: the coordinate channels span [-1, 1] the right way round, the block equals the paper's
conv over [input, coords], and with zero coordinate weights it is exactly the replaced conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugsurgeon.plugins.coordconv import CoordConv


def test_coordinate_channels():
    block = CoordConv(nn.Conv2d(3, 4, 3, padding=1), with_r=True)
    c = block.coordinates(torch.zeros(1, 3, 5, 9))
    assert c.shape == (1, 3, 5, 9)
    torch.testing.assert_close(c[0, 0, 2], torch.linspace(-1, 1, 9))  # x runs along the width
    torch.testing.assert_close(c[0, 1, :, 4], torch.linspace(-1, 1, 5))  # y along the height
    assert torch.all(c[0, 0] == c[0, 0, :1]) and torch.all(c[0, 1] == c[0, 1, :, :1])
    assert c[0, 2, 2, 4] == 0 and torch.allclose(c[0, 2, [0, 0, -1, -1], [0, -1, 0, -1]], torch.ones(4))  # radius


@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("conv", [dict(stride=1, padding=1), dict(stride=2, padding=3, dilation=2, bias=True)])
def test_equals_a_conv_over_input_and_coordinates(with_r, conv):
    source = nn.Conv2d(3, 8, 3, **{"bias": False, **conv})
    block = CoordConv(source, with_r=with_r)
    with torch.no_grad():
        block.coord_weight.normal_()
        x = torch.randn(2, 3, 10, 12)
        h, w = torch.meshgrid(torch.linspace(-1, 1, 10), torch.linspace(-1, 1, 12), indexing="ij")
        coords = [w, h] + ([torch.sqrt(w**2 + h**2) / 2**0.5] if with_r else [])
        stacked = torch.cat([x, torch.stack(coords)[None].expand(2, -1, -1, -1)], dim=1)
        kernel = torch.cat([source.weight, block.coord_weight], dim=1)
        want = F.conv2d(stacked, kernel, source.bias, source.stride, source.padding, source.dilation)
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [dict(), dict(stride=2, groups=4, bias=True), dict(padding_mode="reflect")])
def test_zero_coordinate_weights_give_the_replaced_conv(conv):
    source = nn.Conv2d(8, 8, 3, padding=1, **conv)
    block = CoordConv(source)
    assert block.weight is source.weight and block.bias is source.bias
    assert block.coord_weight.shape == (8, 2, 3, 3) and not block.coord_weight.any()
    assert set(block.state_dict()) == {"weight", "coord_weight"} | ({"bias"} if source.bias is not None else set())
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(block(x), source(x))


def test_gradient_reaches_the_coordinate_kernel():
    block = CoordConv(nn.Conv2d(3, 4, 3, padding=1))
    block(torch.randn(2, 3, 6, 6)).square().sum().backward()
    assert block.coord_weight.grad is not None and block.coord_weight.grad.abs().sum() > 0
