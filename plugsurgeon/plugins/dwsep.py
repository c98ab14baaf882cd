"""Depthwise-separable convolution: a kxk conv factorised into a depthwise kxk and a pointwise 1x1.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam. "MobileNets: Efficient Convolutional
Neural Networks for Mobile Vision Applications", arXiv 2017. https://arxiv.org/abs/1704.04861
Chollet. "Xception: Deep Learning with Depthwise Separable Convolutions", CVPR 2017.
https://arxiv.org/abs/1610.02357

A kxk conv (C_in -> C_out) becomes a depthwise kxk conv (one filter per input channel) followed by a
1x1 conv mixing channels (MobileNets Sec. 3.1, Fig. 2-3); cost about 1/C_out + 1/k^2 of the original.
MobileNets puts BN and ReLU after the depthwise conv (Fig. 3); Xception found the intermediate
non-linearity hurts (Sec. 4.7, Fig. 10). Defaults: BN after the depthwise conv (``bn=True``) and the
MobileNet ReLU (``activation=True``); ``activation=False`` is Xception's form. The depthwise conv
takes the replaced conv's kernel, stride, padding (and mode) and dilation; the pointwise conv takes its
bias, if any. The BN and ReLU after the pointwise conv are the model's own, which stay.

Deliberate difference: none in the block; the replaced conv's ``weight`` cannot be reused (a
different factorisation), so a vanilla checkpoint's key for it has no place in the edited model.
Not identity at init.

Reference: timm's ``DepthwiseSeparableConv`` (timm.models._efficientnet_blocks) with ``noskip=True,
pw_act=False``: ours followed by the host's BN is that block (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import conv_padding, replaced_conv
from plugsurgeon.plugins._kernels import pair
from plugsurgeon.plugins.args import BnEps, BnMomentum, PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class DWSepArgs(PluginArgs):
    bn: bool = Field(True, description="BatchNorm after the depthwise conv")
    activation: bool = Field(True, description="ReLU after the depthwise conv (MobileNets); False is Xception's form")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "dwsep",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Howard et al., MobileNets, arXiv:1704.04861 (2017); Chollet, Xception, CVPR 2017, arXiv:1610.02357",
    year=2017,
    summary="depthwise kxk conv (+BN, ReLU) then pointwise 1x1: a factorised standard conv",
    args=DWSepArgs,
    suggested_where={"kernel": 3, "depthwise": False},
)
class DepthwiseSeparableConv(nn.Module):
    def __init__(self, source: nn.Conv2d, bn: bool = True, activation: bool = True,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        cin, cout = source.in_channels, source.out_channels
        self.in_channels, self.out_channels, self.activation = cin, cout, bool(activation)
        device, dtype = source.weight.device, source.weight.dtype
        self.depthwise = nn.Conv2d(cin, cin, pair(source.kernel_size), pair(source.stride), conv_padding(source), pair(source.dilation),
                                   groups=cin, bias=not bn, padding_mode=source.padding_mode, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(cin, eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype) if bn else None
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=source.bias is not None, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activation:
            x = F.relu(x)
        return self.pointwise(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, activation={self.activation}"
