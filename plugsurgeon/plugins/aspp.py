"""Atrous Spatial Pyramid Pooling (DeepLab v3).

Chen, Papandreou, Schroff, Adam. "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv 2017. https://arxiv.org/abs/1706.05587

Five parallel branches on the feature map, each with 256 filters, BatchNorm and ReLU: a
1x1 conv, three 3x3 atrous convs with rates (6, 12, 18) (output stride 16), and image-level
features (global average pooling -> 1x1 conv -> bilinear upsampling back to the map, which for a
1x1 map is a broadcast). The branches are concatenated and projected by a 1x1 conv with BatchNorm
(and ReLU). ``dropout`` (default 0, the paper names none) is available after the projection.

Placement: on the backbone's last feature map; the recipe ``aspp`` does that.

Deliberate differences from the paper: DeepLab projects to 256 channels and feeds a classifier; as a
drop-in "after" plugin the projection goes back to the site's C channels so the host network
continues unchanged. The module is the paper's, not a residual: it is NOT the identity at init
(the host's downstream layers see a new function until fine-tuned).

Small maps: on ImageNet-size 224x224 inputs ResNet-50's last map is 7x7, smaller than every rate.
That still runs (padding = rate keeps the size), but for rate >= the map size every off-centre tap
reads zero padding and the atrous 3x3 conv degenerates to a 1x1 conv with its centre weights; the
paper points out this degeneration as the reason for the image-pooling branch.

Reference: torchvision's DeepLabV3 ``ASPP`` (torchvision.models.segmentation.deeplabv3), the same function
with branch width C and its Dropout(0.5) set to 0 (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import ON_MAP, Dilation, HiddenWidth, PluginArgs, tuple_length
from plugsurgeon.plugins.registry import register_plugin, site_channels


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv + BN + ReLU -> back to the map size (a broadcast of the 1x1 map)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvNormAct(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x)).expand(-1, -1, x.shape[2], x.shape[3])


class ASPPArgs(PluginArgs):
    rates: Annotated[tuple[Dilation, ...], tuple_length(min_length=0), ON_MAP] = Field(
        (6, 12, 18), description="dilation rates of the atrous 3x3 branches (the paper's, for output stride 16)")
    branch_channels: HiddenWidth = Field(256, description="filters of every branch (the paper's 256)")
    image_pooling: bool = Field(True, description="add the image-level branch (global pooling, 1x1 conv, broadcast)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after the projection (the paper names none)")


@register_plugin(
    "aspp",
    roles=("backbone", "stage"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation (DeepLab v3), arXiv:1706.05587, 2017",
    year=2017,
    summary="1x1 + three atrous 3x3 (rates 6, 12, 18) + image pooling, concatenated, projected back to C",
    args=ASPPArgs,
)
class ASPP(nn.Module):
    def __init__(
        self,
        channels: int,
        rates: tuple[int, ...] = (6, 12, 18),
        branch_channels: int = 256,
        image_pooling: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if channels < 1 or branch_channels < 1 or any(r < 1 for r in rates):
            raise ValueError(f"channels, branch_channels and rates must be positive, got {channels}, {branch_channels}, {rates}")
        branches: list[nn.Module] = [ConvNormAct(channels, branch_channels)]
        branches += [ConvNormAct(channels, branch_channels, 3, dilation=int(r)) for r in rates]
        if image_pooling:
            branches.append(ImagePooling(channels, branch_channels))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * branch_channels, channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))
