"""MixConv: the channel split (remainder to the first group), each group's kernel size and channels,
the replaced depthwise conv reproduced at init, and the recipe on a depthwise net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.mixconv import MixConv
from tests.nets import randomize_batchnorm


@pytest.mark.parametrize(
    ("cin", "kernels", "split", "want"),
    [(16, (3, 5, 7), "equal", [6, 5, 5]), (48, (3, 5, 7), "equal", [16, 16, 16]), (32, (3, 5, 7, 9), "exponential", [16, 8, 4, 4])],
)
def test_channel_split(cin, kernels, split, want):
    block = MixConv(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), kernels=kernels, split=split)
    assert block.in_splits == want == block.out_splits
    assert [c.kernel_size[0] for c in block.convs] == list(kernels)
    assert [c.groups for c in block.convs] == want  # depthwise inside every group


def test_each_group_convolves_its_own_channels_with_its_kernel():
    block = MixConv(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False))
    with torch.no_grad():
        for conv in block.convs:
            conv.weight.normal_()
        x = torch.randn(2, 16, 9, 9)
        pieces, start = [], 0
        for conv, k, c in zip(block.convs, (3, 5, 7), (6, 5, 5), strict=True):
            pieces.append(F.conv2d(x[:, start : start + c], conv.weight, stride=2, padding=k // 2, groups=c))
            start += c
        torch.testing.assert_close(block(x), torch.cat(pieces, dim=1))


@pytest.mark.parametrize("conv", [dict(), dict(stride=2), dict(bias=True), dict(out_channels=24), dict(padding=2, dilation=2)])
def test_starts_as_the_replaced_depthwise_conv(conv):
    args = {"in_channels": 12, "out_channels": 12, "kernel_size": 3, "padding": 1, "groups": 12, "bias": False, **conv}
    source = nn.Conv2d(**args)
    block = MixConv(source)
    x = torch.randn(2, 12, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(block(x), source(x), atol=1e-5, rtol=1e-5)


def test_dense_conv_becomes_grouped_mixed_kernels():
    source = nn.Conv2d(48, 96, 3, stride=2, padding=1, bias=False)
    block = MixConv(source)
    assert not block.depthwise and block.in_splits == [16, 16, 16] and block.out_splits == [32, 32, 32]
    assert sum(c.weight.numel() for c in block.convs) == 16 * 32 * (9 + 25 + 49)  # 83/81 of a dense 3x3's
    x = torch.randn(2, 48, 11, 11)
    assert block(x).shape == source(x).shape


def test_too_few_channels_for_the_groups():
    with pytest.raises(ValueError, match="cannot split"):
        MixConv(nn.Conv2d(2, 2, 3, padding=1, groups=2))


class _DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Conv2d(16, 32, 1)
        self.dw2 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())

    def forward(self, x):
        return self.dw2(self.pw(self.dw(self.stem(x))))


def test_recipe_replaces_depthwise_convs_and_starts_from_them():
    host = randomize_batchnorm(_DepthwiseNet()).eval()
    result = ps.apply(host, "mixconv", input_shape=(2, 3, 32, 32))
    assert [e.module for e in result.report.edits] == ["dw.0", "dw2.0"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), host(x), atol=1e-5, rtol=1e-5)
