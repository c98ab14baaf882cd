"""RepVGG block: a kxk conv trained with a 1x1 branch and an identity branch, fused for deploy.

Ding, Zhang, Ma, Han, Ding, Sun. "RepVGG: Making VGG-style ConvNets Great Again", CVPR 2021.
https://arxiv.org/abs/2101.03697

Training-time block (Sec. 3.2-3.3, Fig. 2, 4): 3x3 conv + BN, 1x1 conv + BN and, when the input and
output have the same shape (C_in == C_out, stride 1), an identity BN; the three outputs are summed.
For inference every branch is a kxk kernel plus a bias: the BNs fold into their convs, the 1x1
kernel is zero-padded into the kxk centre, the identity is a one-hot kxk kernel (Eq. 3-4), and the
kernels and biases add up to one conv.

Deliberate differences, mirroring ACBlock (acnet.py):
- The block replaces only the conv. The kxk branch *is* the replaced conv (its ``weight``/``bias``
  keep their names, so pretrained checkpoints load) and the model's own BN after it stays where it
  was, acting as the kxk branch's BN; it also normalises the other branches' sum, as in ACNet.
- The 1x1 and identity branches' BN scales (gamma) start at zero, so right after surgery the block
  computes exactly the replaced conv (identity at init); the paper initialises gamma to 1.
- Any odd kernel k >= 3, stride, dilation, groups and padding mode carry over: the input is padded
  once and the 1x1 branch reads the kernel centre's positions. The identity branch exists when
  C_in == C_out, stride 1 and the padding keeps the size (d * (k // 2)); for groups it is the
  one-hot kernel of each channel inside its group.
``reparameterize()`` returns that single conv (with bias) in eval mode; the deploy pass calls it.

Reference: timm's ``RepVggBlock`` (timm.models.byobnet, after the authors' DingXiaoH/RepVGG): ours
followed by the host's BN and a ReLU is that block in eval mode; in train mode the host BN normalises the
branches' sum (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import KeepsConvWeights, fold_bn, replaced_conv
from plugsurgeon.plugins._kernels import square_odd_kernel
from plugsurgeon.plugins.args import BnEps, BnMomentum, PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class RepVGGArgs(PluginArgs):
    identity: bool = Field(True, description="add the identity branch where input and output shapes match")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "repvgg",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=True,
    paper="Ding et al., RepVGG: Making VGG-style ConvNets Great Again, CVPR 2021, arXiv:2101.03697",
    year=2021,
    summary="kxk conv + 1x1 conv with BN + identity BN, trained together, fused into one conv for deploy",
    args=RepVGGArgs,
    suggested_where={"kernel": 3},
)
class RepVGGBlock(KeepsConvWeights):
    def __init__(self, source: nn.Conv2d, identity: bool = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__(source)
        k = square_odd_kernel(source, "repvgg", smallest=3)
        device, dtype = self.weight.device, self.weight.dtype
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        self._centre = (self.dilation[0] * (k // 2), self.dilation[1] * (k // 2))
        self.pointwise = nn.Conv2d(self.in_channels, self.out_channels, 1, self.stride, groups=self.groups, bias=False,
                                   device=device, dtype=dtype)
        self.pointwise_bn = nn.BatchNorm2d(self.out_channels, **bn)
        nn.init.zeros_(self.pointwise_bn.weight)
        keeps_shape = self.in_channels == self.out_channels and self.stride == (1, 1) and self.padding == self._centre
        self.identity_bn = nn.BatchNorm2d(self.out_channels, **bn) if identity and keeps_shape else None
        if self.identity_bn is not None:
            nn.init.zeros_(self.identity_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = self.pad(x)
        ch, cw = self._centre
        h, w = padded.shape[-2], padded.shape[-1]
        out = self.conv(padded) + self.pointwise_bn(self.pointwise(padded[:, :, ch : h - ch, cw : w - cw]))
        if self.identity_bn is not None:
            out = out + self.identity_bn(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """The single conv this block computes in eval mode: BNs folded, 1x1 and identity added at the kernel centre."""
        k = self.kernel_size[0]
        c = k // 2
        kernel = self.weight.detach().clone()
        bias = self.bias.detach().clone() if self.bias is not None else kernel.new_zeros(self.out_channels)
        branches = [(self.pointwise.weight, self.pointwise_bn)]
        if self.identity_bn is not None:
            per_group = self.in_channels // self.groups
            one_hot = kernel.new_zeros(self.out_channels, per_group, 1, 1)
            channels = torch.arange(self.out_channels, device=kernel.device)
            one_hot[channels, channels % per_group, 0, 0] = 1.0
            branches.append((one_hot, self.identity_bn))
        for weight, bn in branches:
            w, b = fold_bn(weight, bn)
            kernel[:, :, c : c + 1, c : c + 1] += w
            bias += b
        fused = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.groups, bias=True, padding_mode=self.padding_mode, device=kernel.device, dtype=kernel.dtype)
        assert fused.bias is not None  # made with a bias
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        return fused.eval()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, identity={self.identity_bn is not None}"
