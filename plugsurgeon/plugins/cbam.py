"""Convolutional Block Attention Module.

Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

Channel attention: a shared MLP (C -> C/r -> C, r = 16) applied to both the average- and the
max-pooled descriptor, the two outputs summed, sigmoid (Eq. 2). Spatial attention: channel-wise max
and mean maps concatenated, 7x7 conv, BatchNorm (as in the authors' code), sigmoid (Eq. 3). Channel
first, then spatial (Sec. 3.3). Placed like SE, on the residual branch before the add.
Not identity at init: both gates start near 0.5, as in the paper.

Reference: timm's ``CbamModule`` (timm.layers.cbam) with ``mlp_bias=True``, the same function with the
spatial conv's two inputs swapped (tests/plugins/test_reference_equivalence.py); the [max, mean] order is
the authors' code (Jongchan/attention-module).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import KERNEL_ON_MAP, OddKernel, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Both descriptors through the shared MLP as one batch: one matrix product per layer instead of two.
        avg, peak = self.mlp(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))])).chunk(2)
        return x * torch.sigmoid(avg + peak)[:, :, None, None]


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the map size, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAMArgs(PluginArgs):
    reduction: Reduction = Field(16, description="r: the channel MLP has C / r hidden units")
    kernel_size: Annotated[OddKernel, KERNEL_ON_MAP] = Field(7, description="kernel of the spatial gate's conv")
    spatial: bool = Field(True, description="keep the spatial gate (False: channel attention only)")


@register_plugin(
    "cbam",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Woo et al., CBAM: Convolutional Block Attention Module, ECCV 2018, arXiv:1807.06521",
    year=2018,
    summary="channel attention (avg+max pooled, shared MLP) then spatial attention (7x7 conv)",
    args=CBAMArgs,
)
class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, spatial: bool = True) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size) if spatial else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
