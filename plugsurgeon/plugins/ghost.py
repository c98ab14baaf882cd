"""Ghost module: part of a conv's output from the conv itself, the rest from cheap depthwise ops on it.

Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap Operations", CVPR 2020.
https://arxiv.org/abs/1911.11907

A conv producing n maps is replaced by a primary conv producing m = ceil(n / s) "intrinsic" maps (the
replaced conv's kernel size, stride, padding and dilation) and cheap linear operations, a d x d
depthwise conv making s - 1 "ghost" maps from each intrinsic one; the intrinsic and the ghost maps are
concatenated (the identity mapping keeps the intrinsic ones) and trimmed to n (Sec. 3.1, Eq. 2-3).
Each of the two convs is followed by BN and ReLU, as GhostNet's layers are (Sec. 3.2); ``relu=False``
drops the ReLUs.

Defaults: ratio s = 2, dw_size d = 3. The replaced conv's groups carry over to the primary conv,
clamped to divide its channels. Parameters and FLOPs shrink by about s.

Deliberate differences: the replaced conv's ``weight`` cannot be reused (a different shape), so a
vanilla checkpoint's key for it has no place in the edited model. The model's own BN after the
replaced conv stays, after the module.

Placement: the paper's Ghost-ResNet-50 replaces every conv of ResNet-50 (Sec. 4.1.2), and so does the
recipe: 14.0M parameters, 2.1 GMACs. The paper's 13.0M (2.2B FLOPs) also counts the classifier as a
1x1 conv made a Ghost module (2048 -> 500 + cheap op, 1.0M instead of the Linear's 2.05M); a Linear
is not a conv site here, and with that substitution the count is 13.0M.
Not identity at init.

Reference: timm's ``GhostModule`` (timm.models.ghostnet, a port of the authors' huawei-noah release),
the same function (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import conv_padding, replaced_conv
from plugsurgeon.plugins._kernels import clamp_groups, pair
from plugsurgeon.plugins.args import KERNEL_ON_MAP, BnEps, BnMomentum, OddKernel, PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class GhostArgs(PluginArgs):
    ratio: int = Field(2, ge=2, le=64, description="s: the primary conv makes 1/s of the maps, cheap operations the rest")
    dw_size: Annotated[OddKernel, KERNEL_ON_MAP] = Field(3, description="d: kernel of the cheap depthwise conv")
    relu: bool = Field(True, description="ReLU after each of the two convs")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "ghost",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020, arXiv:1911.11907",
    year=2020,
    summary="primary conv to C/s maps + cheap depthwise conv making the rest, concatenated",
    args=GhostArgs,
)
class GhostModule(nn.Module):
    def __init__(self, source: nn.Conv2d, ratio: int = 2, dw_size: int = 3, relu: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        if ratio < 2:
            raise ValueError(f"ratio must be 2 or more, got {ratio}")
        if dw_size < 1 or dw_size % 2 == 0:
            raise ValueError(f"dw_size must be odd, got {dw_size}")
        cin, cout = source.in_channels, source.out_channels
        self.in_channels, self.out_channels, self.ratio, self.relu = cin, cout, ratio, bool(relu)
        self.intrinsic = math.ceil(cout / ratio)
        m = self.intrinsic
        device, dtype = source.weight.device, source.weight.dtype
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        self.primary = nn.Conv2d(cin, m, pair(source.kernel_size), pair(source.stride), conv_padding(source), pair(source.dilation),
                                 clamp_groups(source.groups, cin, m), bias=False, padding_mode=source.padding_mode,
                                 device=device, dtype=dtype)
        self.primary_bn = nn.BatchNorm2d(m, **bn)
        self.cheap = nn.Conv2d(m, m * (ratio - 1), dw_size, 1, dw_size // 2, groups=m, bias=False, device=device, dtype=dtype)
        self.cheap_bn = nn.BatchNorm2d(m * (ratio - 1), **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary_bn(self.primary(x))
        if self.relu:
            y = F.relu(y)
        ghosts = self.cheap_bn(self.cheap(y))
        if self.relu:
            ghosts = F.relu(ghosts)
        return torch.cat([y, ghosts], dim=1)[:, : self.out_channels]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, ratio={self.ratio}, relu={self.relu}"
