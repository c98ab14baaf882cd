"""Selective Kernel convolution (SK unit).

Li, Wang, Hu, Yang. "Selective Kernel Networks", CVPR 2019. https://arxiv.org/abs/1903.06586

Split: M = 2 paths over the same input, a 3x3 conv and a 3x3 conv with dilation 2 (the paper's
replacement for a 5x5, Sec. 3.1), each followed by BatchNorm and ReLU. Fuse: U = sum of the paths,
s = global average pool of U, z = ReLU(BN(W s)) with d = max(C / r, L) units, r = 16, L = 32 (Eq. 4).
Select: one FC per path (A, B, ...) on z, softmax across the paths for every channel (Eq. 5), and
V = sum over paths of weight * path.

Defaults: paths 2, groups 32, reduction 16, min_hidden (L) 32. With more paths, path m is a 3x3 with
dilation m (receptive field 2m + 1). Stride, padding mode and the host's dilation carry over: path m
uses m times the replaced conv's dilation, padded so that every path has the replaced conv's output size.

Deliberate differences:
- The 3x3 path *is* the replaced conv: it keeps its ``weight``/``bias`` (and groups), so pretrained
  checkpoints load. The other paths are new, with ``groups`` groups, clamped to the largest count
  <= 32 dividing both channel counts (16 on a 16-channel net, 1 on a 3-channel stem). On
  ResNeXt-50 32x4d, the paper's base, the replaced 3x3 has 32 groups too and the block is SKNet-50's
  SK unit (27.5M parameters, as in the paper's Table 2); on ResNet-50 the kept path is the dense 3x3.
- The model's own BN and ReLU after the replaced conv stay where they were, after the SK unit.
- The FCs have no bias, as in Eq. 4-5 (z is batch-normalised). Like the paper's, the BN on the
  pooled vector needs a batch of 2 or more in training mode.
Not identity at init: the paths are mixed with softmax weights and pass through new BN/ReLU.

Reference: timm's ``SelectiveKernel`` (timm.layers) with ``split_input=False, keep_3x3=True``, the same
function when both paths have the same groups (tests/plugins/test_reference_equivalence.py); the authors'
release is implus/SKNet (Caffe).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import KeepsConvWeights, replaced_conv
from plugsurgeon.plugins._kernels import clamp_groups, matching_padding, pair, square_odd_kernel
from plugsurgeon.plugins.args import (
    MAX_BRANCHES,
    MAX_WIDTH,
    BnEps,
    BnMomentum,
    HiddenWidth,
    PluginArgs,
    Reduction,
)
from plugsurgeon.plugins.registry import register_plugin


class SKArgs(PluginArgs):
    paths: int = Field(2, ge=2, le=MAX_BRANCHES, description="M: path m is a 3x3 conv with dilation m")
    groups: int = Field(32, ge=1, le=MAX_WIDTH, description="groups of the new paths (clamped to divide the channels)")
    reduction: Reduction = Field(16, description="r: the fuse layer has C / r units")
    min_hidden: HiddenWidth = Field(32, description="L: at least this many units in the fuse layer (the paper's 32)")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "sk",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Li et al., Selective Kernel Networks, CVPR 2019, arXiv:1903.06586",
    year=2019,
    summary="3x3 and dilated 3x3 paths with BN-ReLU, fused by a softmax over paths per channel (selective kernel)",
    args=SKArgs,
    suggested_where={"kernel": 3},
)
class SKConv(KeepsConvWeights):
    def __init__(self, source: nn.Conv2d, paths: int = 2, groups: int = 32, reduction: int = 16, min_hidden: int = 32,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__(source)
        k = square_odd_kernel(source, "sk", smallest=3)
        if paths < 2:
            raise ValueError(f"sk needs at least 2 paths, got {paths}")
        if reduction < 1 or min_hidden < 1:
            raise ValueError(f"reduction and min_hidden must be positive, got {reduction} and {min_hidden}")
        cin, c = self.in_channels, self.out_channels
        device, dtype = self.weight.device, self.weight.dtype
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        self.paths = paths
        self.path_groups = clamp_groups(groups, cin, c)
        self.dilated = nn.ModuleList()
        for m in range(2, paths + 1):
            dilation = pair([m * d for d in self.dilation])
            padding = matching_padding(self.padding, self.dilation, k, k, dilation)
            self.dilated.append(nn.Conv2d(cin, c, k, self.stride, padding, dilation, self.path_groups, bias=False,
                                          padding_mode=self.padding_mode, device=device, dtype=dtype))
        self.bn = nn.ModuleList(nn.BatchNorm2d(c, **bn) for _ in range(paths))  # bn[0] follows the kept conv
        hidden = max(c // reduction, min_hidden)
        self.fc = nn.Linear(c, hidden, bias=False, device=device, dtype=dtype)
        self.fc_bn = nn.BatchNorm1d(hidden, **bn)
        self.select = nn.Linear(hidden, paths * c, bias=False, device=device, dtype=dtype)  # one FC per path, stacked

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The paths' outputs, stacked: (N, paths, C, H, W)."""
        outs = [self.conv(self.pad(x))] + [conv(x) for conv in self.dilated]
        return torch.stack([F.relu(bn(u)) for bn, u in zip(self.bn, outs, strict=True)], dim=1)

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the paths for every channel: (N, paths, C), summing to 1 over dim 1."""
        s = u.sum(dim=1).mean(dim=(2, 3))
        z = F.relu(self.fc_bn(self.fc(s)))
        return self.select(z).view(u.shape[0], self.paths, self.out_channels).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.split(x)
        a = self.attention(u)
        return (u * a[:, :, :, None, None]).sum(dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, paths={self.paths}, path_groups={self.path_groups}"
