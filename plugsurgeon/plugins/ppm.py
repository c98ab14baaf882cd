"""Pyramid pooling module (PSPNet).

Zhao, Shi, Qi, Wang, Jia. "Pyramid Scene Parsing Network", CVPR 2017. https://arxiv.org/abs/1612.01105

The feature map is average-pooled into 1x1, 2x2, 3x3 and 6x6 bins (adaptive pooling, so
any map size works); each level goes through a 1x1 conv that reduces it to 1/N of the channels (N = 4
levels, so C/4) with BatchNorm and ReLU, is upsampled bilinearly back to the map size, and the levels
are concatenated with the input map (2C channels). A 3x3 conv with BatchNorm and ReLU then fuses them.

Placement: on the backbone's last feature map (the paper's dilated ResNet output); the recipe ``ppm``
does that.

Deliberate differences: PSPNet's fusing conv outputs 512 channels for its classifier; as a drop-in
"after" plugin it outputs the site's C channels, which makes it large on wide maps (about 80M
parameters on ResNet-50's 2048-channel map, almost all in the 3x3 conv: ``kernel_size=1`` cuts that
by 9). Upsampling uses ``align_corners=True`` as in the authors' code. The image-level (1x1) bin has
BatchNorm on one value per channel and sample, so training needs batches larger than one, as in the
paper. Not the identity at init.

Reference: segmentation_models_pytorch's ``PSPModule`` with its PSPDecoder's 1x1 fusing conv, the same
function in eval mode for ``kernel_size=1`` (smp's 1x1 bin has no BN, so not in train mode;
tests/plugins/test_reference_equivalence.py); the authors' code is hszhao/semseg.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import KERNEL_ON_MAP, ON_MAP, OddKernel, PluginArgs, tuple_length
from plugsurgeon.plugins.registry import register_plugin, site_channels


class PoolingLevel(nn.Module):
    """Adaptive average pooling to ``bins`` x ``bins``, 1x1 conv + BN + ReLU, bilinear upsampling back."""

    def __init__(self, channels: int, out_channels: int, bins: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.conv = ConvNormAct(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=True)


class PPMArgs(PluginArgs):
    bins: Annotated[tuple[Annotated[int, Field(ge=1, le=64)], ...], tuple_length(), ON_MAP] = Field(
        (1, 2, 3, 6), description="side of each pooled level's grid (the paper's 1, 2, 3, 6)")
    kernel_size: Annotated[OddKernel, KERNEL_ON_MAP] = Field(3, description="kernel of the fusing conv (1 cuts it by 9)")


@register_plugin(
    "ppm",
    roles=("backbone", "stage"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Zhao et al., Pyramid Scene Parsing Network (PSPNet), CVPR 2017, arXiv:1612.01105",
    year=2017,
    summary="average pools to 1, 2, 3, 6 bins, 1x1 conv to C/4 each, upsample, concat with the input, 3x3 conv back to C",
    args=PPMArgs,
)
class PyramidPooling(nn.Module):
    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6), kernel_size: int = 3) -> None:
        super().__init__()
        if channels < 1 or not bins or any(b < 1 for b in bins):
            raise ValueError(f"channels and bins must be positive, got {channels} and {bins}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the map size, got {kernel_size}")
        reduced = max(1, channels // len(bins))
        self.levels = nn.ModuleList(PoolingLevel(channels, reduced, int(b)) for b in bins)
        self.bottleneck = ConvNormAct(channels + len(bins) * reduced, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *(level(x) for level in self.levels)], dim=1))
