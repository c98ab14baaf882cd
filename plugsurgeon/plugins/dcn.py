"""Deformable convolution, v1 and v2 (modulated).

v1: Dai, Qi, Xiong, Li, Zhang, Hu, Wei. "Deformable Convolutional Networks", ICCV 2017.
    https://arxiv.org/abs/1703.06211
v2: Zhu, Hu, Lin, Dai. "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019.
    https://arxiv.org/abs/1811.11168

Each kernel tap k samples the input at p + p_k + dp_k (bilinear), v2 also scales it by a modulation
m_k; the offsets dp (2 per tap and deformable group) and, for v2, the modulation logits (1 per tap and
group) are predicted from the same input by a conv with the replaced conv's kernel size, stride,
padding and dilation (v1 Sec. 2.1, v2 Sec. 3.1), initialised to zero. The sampling and the weighted
sum run in torchvision's ``torchvision.ops.deform_conv2d`` kernel.

Defaults: deformable groups 1. The replaced conv keeps its ``weight`` and ``bias`` under their names
(pretrained checkpoints load) and its stride, padding, dilation and groups; the input is padded once
with the conv's own padding mode, then sampled (zeros beyond that, as in the papers).

Deliberate difference (v2): the modulation is ``mask_scale * sigmoid(logits)`` with mask_scale = 2, so
zero-initialised logits give a modulation of exactly 1 and the block computes the replaced conv at
init (identity at init); the paper's ``sigmoid(logits)`` (range (0, 1), 0.5 at init) is
``mask_scale=1``, which is then not identity at init. The range becomes (0, 2).

Plan-time checks run plugins on fake tensors: torchvision registers a fake (meta) kernel for
``torchvision::deform_conv2d``, so no fake implementation is needed here. FLOP counting has no
formula for it, so this file registers one (the conv's multiply-adds; sampling not counted).

Reference: ``torchvision.ops.DeformConv2d`` fed by an offset conv in the layout of mmcv's
(Modulated)DeformConv2dPack (mmcv itself needs compiled ops and is not installed): the same function for
v1, v2 with ``mask_scale`` 2 and 1, stride, groups and deformable groups
(tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.utils import flop_counter
from torchvision.ops import deform_conv2d

from plugsurgeon.plugins._conv import KeepsConvWeights, replaced_conv
from plugsurgeon.plugins.args import MAX_WIDTH, PluginArgs
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site


class DeformConv(KeepsConvWeights):
    """A conv whose taps sample at learned offsets (and, if ``modulated``, with learned weights)."""

    def __init__(self, source: nn.Conv2d, modulated: bool, deformable_groups: int = 1, mask_scale: float = 2.0) -> None:
        super().__init__(source)
        if deformable_groups < 1 or self.in_channels % deformable_groups:
            raise ValueError(f"deformable_groups must divide the {self.in_channels} input channels, got {deformable_groups}")
        self.modulated, self.deformable_groups, self.mask_scale = modulated, deformable_groups, float(mask_scale)
        taps = deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        self._taps = taps
        # Runs on the padded input, like the sampling: padding 0 here gives the replaced conv's output size.
        self.offset = nn.Conv2d(self.in_channels, (3 if modulated else 2) * taps, self.kernel_size, self.stride, 0,
                                self.dilation, bias=True, device=self.weight.device, dtype=self.weight.dtype)
        assert self.offset.bias is not None  # made with a bias
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        out = self.offset(x)
        mask = None
        if self.modulated:
            out, logits = torch.split(out, [2 * self._taps, self._taps], dim=1)
            mask = self.mask_scale * torch.sigmoid(logits)
        return deform_conv2d(x, out, self.weight, self.bias, self.stride, 0, self.dilation, mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, modulated={self.modulated}, deformable_groups={self.deformable_groups}"


class DCNv1Args(PluginArgs):
    deformable_groups: int = Field(1, ge=1, le=MAX_WIDTH, description="groups of input channels with their own offsets (a divisor of C_in)")

    site_bounds = {"deformable_groups": "a divisor of the replaced conv's input channels"}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        super().check_site(site, replaced)
        channels = getattr(replaced, "in_channels", site.in_channels)
        if channels % self.deformable_groups:
            self.refuse("deformable_groups", self.deformable_groups, f"not a divisor of the conv's {channels} input channels",
                        site, "each deformable group samples an equal share of the input channels")


class DCNv2Args(DCNv1Args):
    mask_scale: float = Field(2.0, gt=0.0, le=16.0,
                              description="modulation = mask_scale * sigmoid(logits): 2 is 1 at init (identity), 1 is the paper's")


_COMMON: dict[str, Any] = dict(roles=("conv",), mode="replace", infer=replaced_conv, structural=("source",), identity_at_init=True,
               classes=(DeformConv,), suggested_where={"kernel": 3})


@register_plugin(
    "dcnv1",
    paper="Dai et al., Deformable Convolutional Networks, ICCV 2017, arXiv:1703.06211",
    year=2017,
    summary="deformable conv: every tap samples at a learned offset (zero-initialised), bilinear",
    args=DCNv1Args,
    **_COMMON,
)
def dcnv1(source: nn.Conv2d, deformable_groups: int = 1) -> DeformConv:
    return DeformConv(source, modulated=False, deformable_groups=deformable_groups)


@register_plugin(
    "dcnv2",
    paper="Zhu et al., Deformable ConvNets v2: More Deformable, Better Results, CVPR 2019, arXiv:1811.11168",
    year=2019,
    summary="modulated deformable conv: learned offsets and per-tap modulation (1 at init), bilinear",
    args=DCNv2Args,
    **_COMMON,
)
def dcnv2(source: nn.Conv2d, deformable_groups: int = 1, mask_scale: float = 2.0) -> DeformConv:
    return DeformConv(source, modulated=True, deformable_groups=deformable_groups, mask_scale=mask_scale)


def _register_flops() -> None:
    op = torch.ops.torchvision.deform_conv2d
    if op.default in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _deform_conv_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        # Multiply-adds of the conv itself, as for aten.convolution: 2 * N * C_out * H_out * W_out * C_in/g * kh * kw.
        n, c_out, h, w = out_shape
        return 2 * n * c_out * h * w * weight_shape[1] * weight_shape[2] * weight_shape[3]


_register_flops()
