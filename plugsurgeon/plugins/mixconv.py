"""MixConv: a depthwise conv whose channel groups use different kernel sizes.

Tan, Le. "MixConv: Mixed Depthwise Convolutional Kernels", BMVC 2019. https://arxiv.org/abs/1907.09595

The channels are partitioned into g groups; group i gets a depthwise conv with kernel k_i; the
outputs are concatenated (Sec. 3, Fig. 2). Defaults: kernels (3, 5, 7), channels split equally with the
remainder going to the first group (``split="exponential"`` is the paper's other partition: 1/2,
1/4, ..., the last group taking the rest). The paper replaces the 3x3 depthwise convs of MobileNets.
Stride, dilation, padding mode, bias and the depth multiplier are the replaced conv's; each group is
padded so that its output has the replaced conv's size.

Replacing a depthwise kxk conv, each group's kernel starts as the replaced conv's kernel for those
channels, zero-padded (centred) to k_i: right after surgery the layer computes what the replaced conv
did, and it learns the wider kernels from there. (Groups with a kernel smaller than the replaced one
keep the default initialisation.)

Deliberate extension: a non-depthwise conv (ResNet-50 has no depthwise convs) becomes a grouped
mixed-kernel conv: input and output channels are split the same way and group i is a k_i x k_i conv
from its input channels to its output channels (the replaced conv's groups carry over, clamped). With
(3, 5, 7) and three equal groups it has about as many parameters as a dense 3x3 (83/81), but no
channel mixing across groups; it starts from a fresh initialisation. The built-in recipe uses it only
for ResNet-style stages (``layer*``) of models without depthwise convs.

The replaced conv's ``weight`` cannot be kept under its name (one tensor per kernel size), so a
vanilla checkpoint's key for it has no place in the edited model.
Not identity at init in general (only the depthwise case starts as the replaced conv).

Reference: timm's ``MixedConv2d`` (timm.layers, after the authors' TensorFlow MixNet code), the same
function depthwise and dense (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal, cast

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import conv_padding, replaced_conv
from plugsurgeon.plugins._kernels import clamp_groups, matching_padding, pair, split_channels
from plugsurgeon.plugins.args import KERNEL_ON_MAP, OddKernel, PluginArgs, tuple_length
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site


def _partition(total: int, parts: int, split: str) -> list[int]:
    if split == "equal":
        return split_channels(total, parts)
    if split == "exponential":
        sizes = [total >> (i + 1) for i in range(parts - 1)]
        sizes.append(total - sum(sizes))
        if min(sizes) < 1:
            raise ValueError(f"an exponential split of {total} channels into {parts} groups leaves a group empty")
        return sizes
    raise ValueError(f"split must be 'equal' or 'exponential', got {split!r}")


class MixConvArgs(PluginArgs):
    kernels: Annotated[tuple[OddKernel, ...], tuple_length(), KERNEL_ON_MAP] = Field((3, 5, 7), description="kernel of each channel group")
    split: Literal["equal", "exponential"] = Field("equal", description="channel partition: equal, or the paper's 1/2, 1/4, ...")

    site_bounds = {"kernels": "no more groups than the conv's input and output channels can fill"}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        super().check_site(site, replaced)
        cin, cout = getattr(replaced, "in_channels", site.in_channels), getattr(replaced, "out_channels", site.channels)
        try:
            for channels in (cin, cout):
                _partition(channels, len(self.kernels), self.split)
        except ValueError as error:
            self.refuse("kernels", self.kernels, f"{len(self.kernels)} groups, too many", site, str(error))


@register_plugin(
    "mixconv",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Tan & Le, MixConv: Mixed Depthwise Convolutional Kernels, BMVC 2019, arXiv:1907.09595",
    year=2019,
    summary="depthwise conv split into channel groups with kernels 3, 5, 7 (grouped mixed kernels for dense convs)",
    args=MixConvArgs,
    suggested_where={"kernel": 3},
)
class MixConv(nn.Module):
    def __init__(self, source: nn.Conv2d, kernels: tuple[int, ...] | list[int] = (3, 5, 7), split: str = "equal") -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        kernels = tuple(int(k) for k in kernels)
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be odd sizes, got {kernels}")
        kh, kw = source.kernel_size
        if kh != kw or kh % 2 == 0:
            raise ValueError(f"mixconv replaces square, odd kernels, got {tuple(source.kernel_size)}")
        cin, cout, groups = source.in_channels, source.out_channels, source.groups
        self.in_channels, self.out_channels, self.kernels = cin, cout, kernels
        self.depthwise = groups == cin and groups > 1
        self.in_splits = _partition(cin, len(kernels), split)
        if self.depthwise:
            multiplier = cout // cin
            self.out_splits = [multiplier * c for c in self.in_splits]
        else:
            self.out_splits = _partition(cout, len(kernels), split)
        padding, dilation = conv_padding(source), pair(source.dilation)
        device, dtype = source.weight.device, source.weight.dtype
        self.convs = nn.ModuleList()
        for k, ci, co in zip(kernels, self.in_splits, self.out_splits, strict=True):
            g = ci if self.depthwise else clamp_groups(groups, ci, co)
            self.convs.append(nn.Conv2d(ci, co, k, pair(source.stride), matching_padding(padding, dilation, kh, k, dilation), dilation,
                                        g, bias=source.bias is not None, padding_mode=source.padding_mode, device=device, dtype=dtype))
        if self.depthwise:
            self._start_from(source)

    @torch.no_grad()
    def _start_from(self, source: nn.Conv2d) -> None:
        """Each group's kernel = the replaced depthwise kernel of its channels, zero-padded to its size."""
        k = source.kernel_size[0]
        start = 0
        for conv, co in zip(cast(Iterable[nn.Conv2d], self.convs), self.out_splits, strict=True):
            size = conv.kernel_size[0]
            if size >= k:
                pad = (size - k) // 2
                conv.weight.zero_()
                conv.weight[:, :, pad : pad + k, pad : pad + k] = source.weight[start : start + co]
                if source.bias is not None and conv.bias is not None:  # the groups have biases when the source has
                    conv.bias.copy_(source.bias[start : start + co])
            start += co

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.in_splits, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts, strict=True)], dim=1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernels={self.kernels}, in_splits={self.in_splits}, "
                f"out_splits={self.out_splits}, depthwise={self.depthwise}")
