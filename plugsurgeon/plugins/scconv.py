"""Self-calibrated convolution (SCNet).

Liu, Hou, Cheng, Wang, Feng. "Improving Convolutional Networks with Self-Calibrated Convolutions",
CVPR 2020. https://openaccess.thecvf.com/content_CVPR_2020/html/Liu_Improving_Convolutional_Networks_With_Self-Calibrated_Convolutions_CVPR_2020_paper.html
(no arXiv version; the paper's code: https://github.com/MCG-NKU/SCNet)

The input channels are split in half, X = [X1, X2] (Sec. 3.1, Fig. 2):
  T1  = AvgPool_r(X1)                      pooling rate r = 4 (filter size and stride)
  X1' = Up(K2 * T1)                        K2: 3x3 conv + BN; Up: bilinear back to X1's size
  Y1' = (K3 * X1) . sigmoid(X1 + X1')      K3: 3x3 conv + BN; the identity term inside the sigmoid
  Y1  = K4 * Y1'                           K4: 3x3 conv
  Y2  = K1 * X2                            K1: the plain 3x3 conv of the other half
  Y   = [Y1, Y2]
K1..K4 each map half the channels to half the channels, so the block has the replaced conv's
parameter count (SCNet-50: 25.6M, as ResNet-50).

Stride, as in the paper's official code: K2 and K3 run at stride 1 (so the gate has X1's size), K4 and
K1 carry the replaced conv's stride, padding and dilation, so the output has its shape. K2/K3 use
"same" padding with the replaced conv's dilation. Groups carry over, clamped to divide the halves.
With odd or unequal channel counts, X1 gets floor(C_in / 2) channels, Y1 floor(C_out / 2).

Deliberate differences:
- In SCNet the two halves come from two 1x1 convs, each with BN and ReLU; here they are the two
  halves of the model's own 1x1 conv/BN/ReLU output, which is the same thing. K1 and K4 have no BN of
  their own: the model's BN after the replaced conv follows the concatenation and plays that role.
- If the map is smaller than r, the pooling window shrinks to the map (the paper assumes maps >= r).
- The replaced conv's ``weight`` cannot be reused (four half-size kernels in a different arrangement),
  so a vanilla checkpoint's key for it has no place in the edited model.
Not identity at init.

Reference: the authors' release above (MCG-NKU/SCNet; not on pip, and no pip package has SCConv).
Checked instead against the paper's equations step by step and SCNet-50's count
(tests/plugins/test_scconv.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import conv_padding, replaced_conv
from plugsurgeon.plugins._kernels import clamp_groups, pair, square_odd_kernel
from plugsurgeon.plugins.args import ON_MAP, BnEps, BnMomentum, PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class SCConvArgs(PluginArgs):
    pooling_rate: Annotated[int, Field(ge=1, le=64), ON_MAP] = Field(4, description="r: window and stride of the calibration pooling")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "scconv",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Liu et al., Improving Convolutional Networks with Self-Calibrated Convolutions, CVPR 2020 (SCNet)",
    year=2020,
    summary="half the channels through a self-calibrated path (pooled K2 gate on K3, then K4), half through a plain conv",
    args=SCConvArgs,
    suggested_where={"kernel": 3},
)
class SCConv(nn.Module):
    def __init__(self, source: nn.Conv2d, pooling_rate: int = 4, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        k = square_odd_kernel(source, "scconv", smallest=3)
        if pooling_rate < 1:
            raise ValueError(f"pooling_rate must be positive, got {pooling_rate}")
        cin, cout = source.in_channels, source.out_channels
        if cin < 2 or cout < 2:
            raise ValueError(f"scconv splits channels in half; the conv has {cin} in and {cout} out")
        self.in_channels, self.out_channels, self.pooling_rate = cin, cout, pooling_rate
        a, b = cin // 2, cin - cin // 2  # X1 (calibrated), X2 (plain)
        ya, yb = cout // 2, cout - cout // 2
        self.splits = (a, b)
        device, dtype = source.weight.device, source.weight.dtype
        dilation, mode = pair(source.dilation), source.padding_mode
        same = pair([d * (k - 1) // 2 for d in dilation])
        common: dict[str, Any] = dict(bias=False, device=device, dtype=dtype)
        host: dict[str, Any] = dict(stride=source.stride, padding=conv_padding(source), dilation=dilation, padding_mode=mode, device=device, dtype=dtype)
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        g = source.groups
        self.k2 = nn.Conv2d(a, a, k, 1, same, dilation, clamp_groups(g, a), **common)  # pooled map: zero padding
        self.k2_bn = nn.BatchNorm2d(a, **bn)
        self.k3 = nn.Conv2d(a, a, k, 1, same, dilation, clamp_groups(g, a), padding_mode=mode, **common)
        self.k3_bn = nn.BatchNorm2d(a, **bn)
        self.k4 = nn.Conv2d(a, ya, k, groups=clamp_groups(g, a, ya), bias=source.bias is not None, **host)
        self.k1 = nn.Conv2d(b, yb, k, groups=clamp_groups(g, b, yb), bias=source.bias is not None, **host)

    def calibration(self, x1: torch.Tensor) -> torch.Tensor:
        """sigmoid(X1 + Up(K2 * AvgPool_r(X1))): the gate on K3's output."""
        h, w = x1.shape[-2:]
        r = min(self.pooling_rate, h, w)
        t = F.avg_pool2d(x1, r, r)
        up = F.interpolate(self.k2_bn(self.k2(t)), size=(h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(x1 + up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, list(self.splits), dim=1)
        y1 = self.k4(self.k3_bn(self.k3(x1)) * self.calibration(x1))
        return torch.cat([y1, self.k1(x2)], dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, pooling_rate={self.pooling_rate}"
