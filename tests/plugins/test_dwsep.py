"""Depthwise-separable conv: one kxk filter per input channel, then a 1x1 mix; a rank-one-per-channel
kernel (the factorisation's defining property) is reproduced exactly; the parameter saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugsurgeon.plugins.dwsep import DepthwiseSeparableConv


def test_computes_depthwise_then_pointwise():
    source = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True)
    block = DepthwiseSeparableConv(source, bn=False, activation=False)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        per_channel = torch.cat([F.conv2d(x[:, i : i + 1], block.depthwise.weight[i : i + 1], block.depthwise.bias[i : i + 1],
                                          stride=2, padding=1) for i in range(6)], dim=1)
        want = torch.einsum("oi,nihw->nohw", block.pointwise.weight[:, :, 0, 0], per_channel) + block.pointwise.bias[:, None, None]
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)
        # Without the intermediate BN/ReLU it is the standard conv with kernel W[o, i] = P[o, i] * D[i] (Xception's form).
        kernel = block.pointwise.weight[:, :, 0, 0][:, :, None, None] * block.depthwise.weight[:, 0][None]
        bias = block.pointwise.bias + block.pointwise.weight[:, :, 0, 0] @ block.depthwise.bias
        torch.testing.assert_close(block(x), F.conv2d(x, kernel, bias, stride=2, padding=1), atol=1e-5, rtol=1e-5)


def test_mobilenet_form_has_bn_and_relu_between():
    block = DepthwiseSeparableConv(nn.Conv2d(4, 8, 3, padding=1)).eval()
    assert isinstance(block.bn, nn.BatchNorm2d) and block.activation and block.depthwise.bias is None
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        mid = F.relu(block.bn(block.depthwise(x)))
        torch.testing.assert_close(block(x), block.pointwise(mid))


@pytest.mark.parametrize("conv", [dict(stride=2, padding=1), dict(padding=2, dilation=2), dict(padding=1, padding_mode="reflect")])
def test_output_shape_matches_the_replaced_conv(conv):
    source = nn.Conv2d(16, 32, 3, **conv)
    x = torch.randn(2, 16, 11, 11)
    assert DepthwiseSeparableConv(source)(x).shape == source(x).shape


def test_parameter_saving():
    source = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    block = DepthwiseSeparableConv(source)
    convs = block.depthwise.weight.numel() + block.pointwise.weight.numel()
    assert convs == 256 * 9 + 256 * 256
    assert convs / source.weight.numel() == pytest.approx(1 / 256 + 1 / 9, rel=1e-6)
