"""Coordinate attention.

Hou, Zhou, Feng. "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907

Global pooling is factorised into two 1-D poolings: averaging along W gives a C x H x 1
descriptor, averaging along H a C x 1 x W one. The two are concatenated along the spatial axis,
passed through a shared 1x1 conv (C -> C/r), BatchNorm and a non-linearity (h-swish), split back,
and two separate 1x1 convs (C/r -> C) with sigmoids give the attention along H (N x C x H x 1) and
along W (N x C x 1 x W); the output is x * a_h * a_w.

Defaults: r = 32 with at least 8 hidden channels, h-swish, convs with biases, as in the authors'
code. Placed like SE, at the end of the residual branch before the add, in every block.
Not identity at init: both gates start near 0.5.

Reference: timm's ``CoordAttn`` (timm.layers.coord_attn) with ``bias=True`` and the authors'
hidden width, the same function (tests/plugins/test_reference_equivalence.py); the authors' code is
houqb/CoordAttention.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class CoordAttentionArgs(PluginArgs):
    reduction: Reduction = Field(32, description="r: the shared 1x1 conv has C / r channels")
    min_hidden: HiddenWidth = Field(8, description="at least this many channels in the shared conv (the authors' 8)")


@register_plugin(
    "coord_attention",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Hou et al., Coordinate Attention for Efficient Mobile Network Design, CVPR 2021, arXiv:2103.02907",
    year=2021,
    summary="pooling along H and along W separately, shared 1x1 conv, per-direction sigmoid gates x * a_h * a_w",
    args=CoordAttentionArgs,
)
class CoordAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(min_hidden, channels // reduction)
        self.conv = nn.Conv2d(channels, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention maps a_h (N x C x H x 1) and a_w (N x C x 1 x W)."""
        h, w = x.shape[2], x.shape[3]
        along_h = x.mean(dim=3, keepdim=True)  # N, C, H, 1: each row averaged over W
        along_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # N, C, W, 1: each column averaged over H
        mixed = self.act(self.bn(self.conv(torch.cat([along_h, along_w], dim=2))))
        mixed_h, mixed_w = torch.split(mixed, [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_h(mixed_h))
        a_w = torch.sigmoid(self.conv_w(mixed_w.transpose(2, 3)))
        return a_h, a_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.attention(x)
        return x * a_h * a_w
