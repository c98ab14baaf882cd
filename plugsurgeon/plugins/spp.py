"""Spatial pyramid pooling as used in detectors (SPP, YOLOv3-SPP) and its fast form SPPF (YOLOv5).

He, Zhang, Ren, Sun. "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
ECCV 2014 / TPAMI 2015. https://arxiv.org/abs/1406.4729
Redmon, Farhadi. "YOLOv3: An Incremental Improvement", arXiv 2018. https://arxiv.org/abs/1804.02767
(the YOLOv3-SPP configuration); SPPF: Jocher et al., Ultralytics YOLOv5 (software, 2020, no paper).

He et al. pool a map into fixed bins for a fully connected head. The detection form keeps the map:
max pools of sizes 5, 9 and 13 at stride 1 with "same" padding (padding k // 2, padded with -inf so
borders take the max over the window inside the map), concatenated with the input (4C channels),
then a 1x1 conv + BatchNorm + ReLU back to C channels. SPPF chains one 5x5 pool three times: the
max over a 5-window of a 5-window is the max over a 9-window (and again 13), borders included, so
SPPF(5) computes exactly SPP(5, 9, 13) with fewer operations; the tests check that with shared weights.

Placement: on the backbone's last feature map (YOLOv3-SPP puts it between the Darknet-53 backbone and
the head); the recipes ``spp`` and ``sppf`` do that.

Deliberate differences: YOLOv3 uses leaky ReLU and YOLOv5 SiLU; here the fuse conv uses ReLU like the
ResNet hosts this catalog targets. YOLOv5 first halves the channels with a 1x1 conv before pooling;
that is ``reduction=2`` here, while the default ``reduction=1`` pools the input itself, as
YOLOv3-SPP does. The concatenation order is [x, pool5, pool9, pool13] as in YOLOv5 (darknet's
YOLOv3-SPP config concatenates in the reverse order; only the fuse conv's weight layout differs).
Not the identity at init.

Reference: ultralytics' ``SPP`` and ``SPPF`` (ultralytics.nn.modules.block, the YOLOv5 line), the same
functions with ``reduction=2`` and ReLU set as their activation (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import (
    KERNEL_ON_MAP,
    MAX_BRANCHES,
    OddKernel,
    PluginArgs,
    Reduction,
    tuple_length,
)
from plugsurgeon.plugins.registry import register_plugin, site_channels


def _same_max_pool(kernel: int) -> nn.MaxPool2d:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pool sizes must be odd to keep the map size, got {kernel}")
    return nn.MaxPool2d(kernel, stride=1, padding=kernel // 2)


class _PoolAndFuse(nn.Module):
    def __init__(self, channels: int, levels: int, reduction: int) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(1, channels // reduction)
        self.reduce = ConvNormAct(channels, hidden) if reduction > 1 else nn.Identity()
        self.fuse = ConvNormAct(hidden * (levels + 1), channels)


class SPPArgs(PluginArgs):
    kernels: Annotated[tuple[OddKernel, ...], tuple_length(), KERNEL_ON_MAP] = Field((5, 9, 13), description="sizes of the stride-1 max pools")
    reduction: Reduction = Field(1, description="pool C / reduction channels after a 1x1 conv (YOLOv5 halves: 2)")


class SPPFArgs(PluginArgs):
    kernel: Annotated[OddKernel, KERNEL_ON_MAP] = Field(5, description="size of the chained stride-1 max pool")
    repeats: int = Field(3, ge=1, le=MAX_BRANCHES, description="how many times the pool is chained")
    reduction: Reduction = Field(1, description="pool C / reduction channels after a 1x1 conv (YOLOv5 halves: 2)")


@register_plugin(
    "spp",
    roles=("backbone", "stage"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="He et al., Spatial Pyramid Pooling in Deep Convolutional Networks, ECCV 2014, arXiv:1406.4729; YOLOv3-SPP, arXiv:1804.02767",
    year=2014,
    summary="parallel stride-1 max pools (5, 9, 13) concatenated with the input, 1x1 conv back to C",
    args=SPPArgs,
)
class SPP(_PoolAndFuse):
    def __init__(self, channels: int, kernels: tuple[int, ...] = (5, 9, 13), reduction: int = 1) -> None:
        super().__init__(channels, len(kernels), reduction)
        self.pools = nn.ModuleList(_same_max_pool(int(k)) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


@register_plugin(
    "sppf",
    roles=("backbone", "stage"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="SPPF (Ultralytics YOLOv5, 2020): the fast form of SPP, He et al., ECCV 2014, arXiv:1406.4729",
    year=2020,
    summary="one 5x5 stride-1 max pool chained three times (= SPP 5, 9, 13), concatenated, 1x1 conv back to C",
    args=SPPFArgs,
)
class SPPF(_PoolAndFuse):
    def __init__(self, channels: int, kernel: int = 5, repeats: int = 3, reduction: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be positive, got {repeats}")
        super().__init__(channels, repeats, reduction)
        self.pool = _same_max_pool(kernel)
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [self.reduce(x)]
        for _ in range(self.repeats):
            levels.append(self.pool(levels[-1]))
        return self.fuse(torch.cat(levels, dim=1))
