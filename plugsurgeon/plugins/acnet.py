"""ACNet asymmetric convolution block (ACBlock).

Ding, Guo, Ding, Han. "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric
Convolution Blocks", ICCV 2019. https://arxiv.org/abs/1908.03930

A kxk conv is trained together with a kx1 and a 1xk conv, each followed by BatchNorm, and the three
outputs are summed; for inference the branches fold into the kxk kernel's centre cross (Sec. 3.3).

Deliberate difference: the block replaces only the conv. The kxk branch *is* the replaced conv
(its ``weight``/``bias`` keep their names, so pretrained checkpoints load) and the model's own BN
after it stays where it was, acting as the square branch's BN. The asymmetric branches' BN scales
start at zero, so right after surgery the block computes exactly what the replaced conv did.

The input is padded once, with the conv's own padding mode, and each branch reads the rows/columns
through the kernel's centre, so stride, dilation, groups and reflect padding all stay exact.

Reference: the authors' release (DingXiaoH/ACNet on GitHub; not on pip, and no pip package has an
ACBlock). Checked instead: identity at init (the registry matrix) and that the fused conv computes the
trained block exactly (tests/deployment/test_acnet_deploy.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plugsurgeon.plugins._conv import KeepsConvWeights, fold_bn, replaced_conv
from plugsurgeon.plugins.args import BnEps, BnMomentum, PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class ACNetArgs(PluginArgs):
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


@register_plugin(
    "acnet",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=True,
    paper="Ding et al., ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks, ICCV 2019, arXiv:1908.03930",
    year=2019,
    summary="kxk conv + kx1 and 1xk branches with BN, trained together, fused into one conv for deploy",
    args=ACNetArgs,
    suggested_where={"kernel": 3},
)
class ACBlock(KeepsConvWeights):
    def __init__(self, source: nn.Conv2d, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__(source)
        kh, kw = self.kernel_size
        if kh != kw or kh % 2 == 0 or kh < 3:
            raise ValueError(f"ACBlock needs a square, odd kernel of size 3 or more, got {self.kernel_size}; "
                             "select convs with `where: {kernel: 3}`")
        k = kh
        device, dtype = self.weight.device, self.weight.dtype
        make: dict[str, Any] = dict(stride=self.stride, dilation=self.dilation, groups=self.groups, bias=False, device=device, dtype=dtype)
        self.ver = nn.Conv2d(self.in_channels, self.out_channels, (k, 1), **make)
        self.ver_bn = nn.BatchNorm2d(self.out_channels, eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        self.hor = nn.Conv2d(self.in_channels, self.out_channels, (1, k), **make)
        self.hor_bn = nn.BatchNorm2d(self.out_channels, eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        for bn in (self.ver_bn, self.hor_bn):
            nn.init.zeros_(bn.weight)
        # Offsets of the kernel's centre row/column inside the padded input.
        self._centre = (self.dilation[0] * (k // 2), self.dilation[1] * (k // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        ch, cw = self._centre
        h, w = x.shape[-2], x.shape[-1]
        square = self.conv(x)
        ver = self.ver_bn(self.ver(x[:, :, :, cw : w - cw]))
        hor = self.hor_bn(self.hor(x[:, :, ch : h - ch, :]))
        return square + ver + hor

    @torch.no_grad()
    def reparameterize(self) -> nn.Conv2d:
        """The single conv this block computes in eval mode (branch BNs folded, added into the centre cross)."""
        k = self.kernel_size[0]
        kernel = self.weight.detach().clone()
        bias = self.bias.detach().clone() if self.bias is not None else torch.zeros(self.out_channels, dtype=kernel.dtype, device=kernel.device)
        for conv, bn, place in ((self.ver, self.ver_bn, "ver"), (self.hor, self.hor_bn, "hor")):
            w, b = fold_bn(conv.weight, bn)
            if place == "ver":
                kernel[:, :, :, k // 2 : k // 2 + 1] += w
            else:
                kernel[:, :, k // 2 : k // 2 + 1, :] += w
            bias += b
        fused = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.groups, bias=True, padding_mode=self.padding_mode, device=kernel.device, dtype=kernel.dtype)
        assert fused.bias is not None  # made with a bias
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        return fused
