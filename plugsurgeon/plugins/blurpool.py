"""Anti-aliased downsampling: BlurPool and MaxBlurPool.

Zhang. "Making Convolutional Networks Shift-Invariant Again", ICML 2019. https://arxiv.org/abs/1904.11486

Downsampling = evaluate densely, low-pass filter with a binomial kernel, then subsample (Sec. 3.2):
  MaxPool(k, s)            -> Max(k, stride 1) then BlurPool(s)
  Conv(s) (+ activation)   -> Conv(stride 1) then BlurPool(s)   (the paper blurs after the
                               activation; blurring before the following BN/ReLU is the common
                               variant, and keeps the conv a drop-in replacement)
  strided shortcut Conv(s) -> BlurPool(s) then Conv(stride 1)
  AvgPool(k, s)            -> BlurPool(s)
The filter is a non-persistent buffer: checkpoints stay clean and loads need no new keys. Reflect
padding, filter size 4 by default (2..7). Not identity at init: it low-passes by design.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.plugins._args import PluginArgs
from plugsurgeon.plugins._conv import KeepsConvWeights
from plugsurgeon.plugins.registry import register_plugin


def binomial_filter(size: int) -> torch.Tensor:
    if not 1 <= size <= 7:
        raise ValueError(f"filter_size must be between 1 and 7, got {size}")
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).to(torch.float32)


class BlurPool2d(nn.Module):
    """Depthwise binomial low-pass filter, then subsampling by ``stride``."""

    def __init__(self, channels: int, stride: int = 2, filter_size: int = 4, pad_mode: str = "reflect") -> None:
        super().__init__()
        self.channels, self.stride, self.filter_size, self.pad_mode = channels, stride, filter_size, pad_mode
        before = (filter_size - 1) // 2
        self.padding = (before, filter_size - 1 - before, before, filter_size - 1 - before)
        kernel = binomial_filter(filter_size)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filter", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        x = F.pad(x, self.padding, mode=self.pad_mode)
        return F.conv2d(x, self.filter.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, filter_size={self.filter_size}, pad_mode={self.pad_mode!r}"


def _scalar(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class MaxBlurPool2d(nn.Module):
    def __init__(self, source: nn.MaxPool2d, channels: int, filter_size: int = 4) -> None:
        super().__init__()
        if not isinstance(source, nn.MaxPool2d):
            raise TypeError(f"maxblurpool replaces nn.MaxPool2d, not {type(source).__name__}")
        self.max = nn.MaxPool2d(source.kernel_size, stride=1, padding=source.padding, dilation=source.dilation, ceil_mode=source.ceil_mode)
        self.blur = BlurPool2d(channels, stride=_scalar(source.stride), filter_size=filter_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.max(x))


class BlurConv2d(KeepsConvWeights):
    """A strided conv evaluated at stride 1, then blurred and subsampled."""

    def __init__(self, source: nn.Conv2d, filter_size: int = 4) -> None:
        super().__init__(source)
        if self.stride[0] != self.stride[1]:
            raise ValueError(f"blurpool needs equal strides, got {self.stride}")
        self.blur = BlurPool2d(self.out_channels, stride=self.stride[0], filter_size=filter_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.conv(self.pad(x), stride=1))


class BlurThenConv2d(KeepsConvWeights):
    """A strided projection shortcut: blur and subsample first, then the conv at stride 1."""

    def __init__(self, source: nn.Conv2d, filter_size: int = 4) -> None:
        super().__init__(source)
        if self.stride[0] != self.stride[1]:
            raise ValueError(f"blurpool needs equal strides, got {self.stride}")
        self.blur = BlurPool2d(self.in_channels, stride=self.stride[0], filter_size=filter_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(self.blur(x)), stride=1)


def _blur_for(site, module):
    return {"site_role": site.role, "source": module, "channels": site.channels}


class BlurArgs(PluginArgs):
    filter_size: int = Field(4, ge=1, le=7, description="taps of the binomial low-pass filter (1 = plain subsampling)")


@register_plugin(
    "blurpool",
    roles=("downsample.conv", "downsample.shortcut", "downsample.pool"),
    mode="replace",
    infer=_blur_for,
    structural=("site_role", "source", "channels"),
    identity_at_init=False,
    paper="Zhang, Making Convolutional Networks Shift-Invariant Again, ICML 2019, arXiv:1904.11486",
    year=2019,
    summary="anti-aliased downsampling: strided conv -> conv + blur, shortcut -> blur + conv, pool -> blurred pool",
    args=BlurArgs,
    classes=(BlurPool2d, MaxBlurPool2d, BlurConv2d, BlurThenConv2d),
)
def blurpool(site_role: str, source: nn.Module, channels: int, filter_size: int = 4) -> nn.Module:
    """What anti-aliasing means depends on the layer that downsamples."""
    if isinstance(source, nn.Conv2d):
        return BlurThenConv2d(source, filter_size) if site_role == "downsample.shortcut" else BlurConv2d(source, filter_size)
    if isinstance(source, nn.MaxPool2d):
        return MaxBlurPool2d(source, channels, filter_size)
    if isinstance(source, nn.AvgPool2d):
        if source.padding not in (0, (0, 0)) or _scalar(source.kernel_size) != _scalar(source.stride):
            # A site, not an argument, is wrong: SiteError lets `on_unfit: skip` leave the pool alone.
            raise SiteError(f"blurpool replaces an AvgPool2d only when kernel == stride and padding is 0, not {source}",
                            hint="`on_unfit: skip` on the step leaves such pools alone")
        return BlurPool2d(channels, stride=_scalar(source.stride), filter_size=filter_size)
    raise SiteError(f"blurpool replaces strided Conv2d, MaxPool2d or AvgPool2d layers, not {type(source).__name__}",
                    hint="`on_unfit: skip` on the step leaves such layers alone")


@register_plugin(
    "maxblurpool",
    roles=("downsample.pool",),
    mode="replace",
    infer=lambda site, module: {"source": module, "channels": site.channels},
    structural=("source", "channels"),
    identity_at_init=False,
    paper="Zhang, Making Convolutional Networks Shift-Invariant Again, ICML 2019, arXiv:1904.11486",
    year=2019,
    summary="max pool -> max at stride 1, then binomial blur and subsample",
    args=BlurArgs,
    classes=(MaxBlurPool2d,),
)
def maxblurpool(source: nn.Module, channels: int, filter_size: int = 4) -> nn.Module:
    # downsample.pool finds strided pools by shape, average pools included; those are an unfit site
    # (skippable with `on_unfit: skip`), not a bad argument.
    if not isinstance(source, nn.MaxPool2d):
        raise SiteError(f"maxblurpool replaces max pools, not {type(source).__name__}",
                        hint="the blurpool plugin replaces average pools too; `on_unfit: skip` on the step leaves other pools alone")
    return MaxBlurPool2d(source, channels, filter_size)
