"""Coordinate attention: a_h is N x C x H x 1 and a_w is N x C x 1 x W (non-square maps catch
transposition bugs), the shared conv width max(8, C/32), and a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.coord_attention import CoordAttention


def test_attention_map_shapes():
    module = CoordAttention(64)
    a_h, a_w = module.attention(torch.randn(2, 64, 6, 10))
    assert a_h.shape == (2, 64, 6, 1)
    assert a_w.shape == (2, 64, 1, 10)


@pytest.mark.parametrize(("channels", "hidden"), [(16, 8), (256, 8), (512, 16), (2048, 64)])
def test_hidden_width(channels: int, hidden: int):
    module = CoordAttention(channels)
    assert module.conv.out_channels == hidden
    assert module.conv_h.out_channels == module.conv_w.out_channels == channels


def test_matches_hand_computation():
    module = CoordAttention(32, reduction=4)
    nn.init.uniform_(module.bn.running_mean, -0.5, 0.5)
    nn.init.uniform_(module.bn.running_var, 0.5, 2.0)
    module.eval()
    x = torch.randn(2, 32, 5, 7)

    def conv1x1(conv, t):  # t: N, Cin, L
        return torch.einsum("oc,ncl->nol", conv.weight[:, :, 0, 0], t) + conv.bias[None, :, None]

    rows = x.mean(dim=3)  # N, C, H: row i averaged over the width
    cols = x.mean(dim=2)  # N, C, W: column j averaged over the height
    y = conv1x1(module.conv, torch.cat([rows, cols], dim=2))
    bn = module.bn
    y = (y - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + bn.eps)
    y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
    y = y * torch.clamp(y + 3, 0, 6) / 6  # h-swish
    a_h = torch.sigmoid(conv1x1(module.conv_h, y[:, :, :5]))  # N, C, H
    a_w = torch.sigmoid(conv1x1(module.conv_w, y[:, :, 5:]))  # N, C, W
    expected = x * a_h[:, :, :, None] * a_w[:, :, None, :]
    torch.testing.assert_close(module(x), expected)


def test_row_and_column_attention_follow_their_axis():
    module = CoordAttention(16).eval()
    x = torch.randn(1, 16, 4, 6)
    x_rows_permuted = x[:, :, [3, 2, 1, 0]]
    a_h, a_w = module.attention(x)
    b_h, b_w = module.attention(x_rows_permuted)
    torch.testing.assert_close(b_h, a_h[:, :, [3, 2, 1, 0]])  # a_h moves with the rows
    torch.testing.assert_close(b_w, a_w)  # column means do not change when rows are permuted


def test_recipe_on_resnet50():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("coord_attention"), input_shape=(1, 3, 224, 224))
    assert len(result.report.edits) == 16

    def per_block(c):
        m = max(8, c // 32)
        return c * m + m + 2 * m + 2 * (m * c + c)  # shared conv, BN, two output convs

    expected = sum(n * per_block(c) for n, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)))
    assert sum(p.numel() for p in result.model.parameters()) - base == expected == 1_917_832
