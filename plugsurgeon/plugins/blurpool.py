"""Anti-aliased downsampling: BlurPool, MaxBlurPool, and the blur after a strided conv's activation.

Zhang. "Making Convolutional Networks Shift-Invariant Again", ICML 2019. https://arxiv.org/abs/1904.11486

Downsampling = evaluate densely, low-pass filter with a binomial kernel, then subsample (Sec. 3.2):
  MaxPool(k, s)                  -> Max(k, stride 1), then BlurPool(s)                  (plugin blurpool / maxblurpool)
  Conv(s) -> Norm -> ReLU        -> Conv(stride 1) -> Norm -> ReLU, then BlurPool(s)   (plugin blur, at downsample.unit)
  strided shortcut Conv1x1(s)    -> BlurPool(s), then Conv1x1(stride 1)               (plugin blurpool)
  AvgPool(k = s)                 -> BlurPool(s)                                       (plugin blurpool)
The blur of a strided conv comes after its nonlinearity, as the paper and its reference release
(``antialiased-cnns``) put it: the ``downsample.unit`` site is the end of the conv's unit (its norm and
activation), surgery runs the conv itself at stride 1 (the same weight tensor, the same name) and the
blur takes over the stride there. A conv with no activation after it is linear, so the blur follows the
conv (and its norm). The shortcut blurs first: blur and a 1x1 conv commute, and subsampling first is
cheaper (the release does the same).

Options, each a typed recipe argument: ``filter_size`` (1..7, the release's default 4), ``pad_mode``
(reflect, as the release and timm; zeros, as kornia's BlurPool2D; replicate) and, for max pools,
``max_window`` (0: the pool's own window at stride 1, the paper's rule; k: a k x k window without padding,
the release's ResNets and VGG use 2). ``from_antialiased_cnns`` maps the release's checkpoints onto the
names of a torchvision model edited the same way. The filter is a non-persistent buffer: checkpoints
stay clean and loads need no new keys. Not identity at init: it low-passes by design.

Reference: the authors' release ``antialiased-cnns`` (pip; its BlurPool, and whole ResNet-18/50 and
MobileNetV2: with the same weights the recipe configured like it computes the same function,
tests/plugins/test_blurpool.py); kornia's ``BlurPool2D``/``MaxBlurPool2D`` with ``pad_mode="zeros"``, and
timm's ``BlurPool2d`` for odd filters (even ones: timm pads differently), in
tests/plugins/test_reference_equivalence.py.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.plugins._conv import KeepsConvWeights
from plugsurgeon.plugins.args import MAX_KERNEL, PluginArgs
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site

PAPER = "Zhang, Making Convolutional Networks Shift-Invariant Again, ICML 2019, arXiv:1904.11486"
PadMode = Literal["reflect", "replicate", "zeros"]


def binomial_filter(size: int) -> torch.Tensor:
    if not 1 <= size <= 7:
        raise ValueError(f"filter_size must be between 1 and 7, got {size}")
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).to(torch.float32)


class BlurPool2d(nn.Module):
    """Depthwise binomial low-pass filter, then subsampling by ``stride``.

    The border is padded (size - 1) // 2 before and the rest after, as antialiased-cnns and kornia do;
    ``pad_mode`` says with what: reflected values (antialiased-cnns, timm), the edge value, or zeros
    (kornia). Only the border rows and columns depend on it.
    """

    filter: torch.Tensor  # the binomial filter, one per channel: a non-persistent buffer

    def __init__(self, channels: int, stride: int = 2, filter_size: int = 4, pad_mode: PadMode = "reflect") -> None:
        super().__init__()
        if pad_mode not in ("reflect", "replicate", "zeros"):
            raise ValueError(f"pad_mode must be reflect, replicate or zeros, not {pad_mode!r}")
        self.channels, self.stride, self.filter_size, self.pad_mode = channels, stride, filter_size, pad_mode
        before = (filter_size - 1) // 2
        self.padding = (before, filter_size - 1 - before, before, filter_size - 1 - before)
        kernel = binomial_filter(filter_size)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filter", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        x = F.pad(x, self.padding, mode="constant" if self.pad_mode == "zeros" else self.pad_mode)
        return F.conv2d(x, self.filter.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, stride={self.stride}, filter_size={self.filter_size}, pad_mode={self.pad_mode!r}"


def _scalar(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


class MaxBlurPool2d(nn.Module):
    """A max pool evaluated densely (stride 1), then blurred and subsampled by the pool's stride.

    ``max_window`` 0 keeps the pool's kernel, padding and dilation (the paper's Max(k, 1)); k > 0 takes
    a k x k window without padding instead (antialiased-cnns' ResNets: MaxPool2d(2, stride=1)).
    """

    def __init__(self, source: nn.MaxPool2d, channels: int, filter_size: int = 4, pad_mode: PadMode = "reflect",
                 max_window: int = 0) -> None:
        super().__init__()
        if not isinstance(source, nn.MaxPool2d):
            raise TypeError(f"maxblurpool replaces nn.MaxPool2d, not {type(source).__name__}")
        # ceil_mode is dropped: at stride 1 floor and ceil give the same size.
        if max_window:
            self.max = nn.MaxPool2d(max_window, stride=1)
        else:
            self.max = nn.MaxPool2d(source.kernel_size, stride=1, padding=source.padding, dilation=source.dilation)
        self.blur = BlurPool2d(channels, stride=_scalar(source.stride), filter_size=filter_size, pad_mode=pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.max(x))


class BlurThenConv2d(KeepsConvWeights):
    """A strided projection shortcut: blur and subsample first, then the conv at stride 1."""

    def __init__(self, source: nn.Conv2d, filter_size: int = 4, pad_mode: PadMode = "reflect") -> None:
        super().__init__(source)
        if self.stride[0] != self.stride[1]:
            raise SiteError(f"blurpool needs equal strides, got {self.stride}", hint="`on_unfit: skip` on the step leaves such convs alone")
        self.blur = BlurPool2d(self.in_channels, stride=self.stride[0], filter_size=filter_size, pad_mode=pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(self.blur(x)), stride=1)


class BlurArgs(PluginArgs):
    filter_size: int = Field(4, ge=1, le=7, description="taps of the binomial low-pass filter per axis (1 = plain subsampling; "
                                                        "antialiased-cnns' default and released weights: 4)")
    pad_mode: PadMode = Field("reflect", description="what the blur pads the border with: reflect (antialiased-cnns, timm), "
                                                     "replicate, or zeros (kornia's BlurPool2D); only border pixels differ")


class PoolArgs(BlurArgs):
    max_window: int = Field(0, ge=0, le=MAX_KERNEL,
                            description="window of the max pool at stride 1: 0 keeps the replaced pool's kernel, padding and "
                                        "dilation (the paper's Max(k, 1)); k > 0 is a k x k window without padding "
                                        "(antialiased-cnns' ResNets and VGG: 2)")


def _pool(source: nn.Module, channels: int, filter_size: int, pad_mode: PadMode, max_window: int, plugin: str) -> nn.Module:
    if isinstance(source, nn.MaxPool2d):
        return MaxBlurPool2d(source, channels, filter_size, pad_mode, max_window)
    if isinstance(source, nn.AvgPool2d) and plugin == "blurpool":
        if source.padding not in (0, (0, 0)) or _scalar(source.kernel_size) != _scalar(source.stride):
            # A site, not an argument, is wrong: SiteError lets `on_unfit: skip` leave the pool alone.
            raise SiteError(f"blurpool replaces an AvgPool2d only when kernel == stride and padding is 0, not {source}",
                            hint="`on_unfit: skip` on the step leaves such pools alone")
        return BlurPool2d(channels, stride=_scalar(source.stride), filter_size=filter_size, pad_mode=pad_mode)
    # downsample.pool finds strided pools by shape, average pools included; the others are an unfit
    # site (skippable with `on_unfit: skip`), not a bad argument.
    takes = "MaxPool2d or AvgPool2d" if plugin == "blurpool" else "max pools"
    raise SiteError(f"{plugin} replaces {takes}, not {type(source).__name__}",
                    hint="`on_unfit: skip` on the step leaves other pools alone"
                         + ("; the blurpool plugin replaces average pools too" if plugin == "maxblurpool" else ""))


def _replaced(site: Site, module: nn.Module | None) -> dict:
    return {"site_role": site.role, "source": module, "channels": site.channels}


@register_plugin(
    "blurpool",
    roles=("downsample.pool", "downsample.shortcut"),
    mode="replace",
    infer=_replaced,
    structural=("site_role", "source", "channels"),
    identity_at_init=False,
    paper=PAPER,
    year=2019,
    summary="anti-aliased pools and shortcuts: max pool -> dense max + blur, avg pool -> blur, strided shortcut -> blur + conv",
    args=PoolArgs,
    classes=(BlurPool2d, MaxBlurPool2d, BlurThenConv2d),
)
def blurpool(site_role: str, source: nn.Module, channels: int, filter_size: int = 4, pad_mode: PadMode = "reflect",
             max_window: int = 0) -> nn.Module:
    """What anti-aliasing a layer means depends on the layer (strided main-path convs: the `blur` plugin)."""
    if site_role == "downsample.shortcut":
        if not isinstance(source, nn.Conv2d):
            raise SiteError(f"blurpool replaces a strided shortcut Conv2d, not {type(source).__name__}",
                            hint="`on_unfit: skip` on the step leaves such layers alone")
        return BlurThenConv2d(source, filter_size, pad_mode)
    return _pool(source, channels, filter_size, pad_mode, max_window, "blurpool")


@register_plugin(
    "maxblurpool",
    roles=("downsample.pool",),
    mode="replace",
    infer=lambda site, module: {"source": module, "channels": site.channels},
    structural=("source", "channels"),
    identity_at_init=False,
    paper=PAPER,
    year=2019,
    summary="max pool -> max at stride 1, then binomial blur and subsample",
    args=PoolArgs,
    classes=(MaxBlurPool2d,),
)
def maxblurpool(source: nn.Module, channels: int, filter_size: int = 4, pad_mode: PadMode = "reflect", max_window: int = 0) -> nn.Module:
    return _pool(source, channels, filter_size, pad_mode, max_window, "maxblurpool")


def _unit(site: Site, _module: nn.Module | None) -> dict:
    dense, out = site.destride_shape[2:], site.shape[2:]
    if dense and any((d - 1) // site.stride + 1 != o for d, o in zip(dense, out, strict=True)):
        raise SiteError(f"the conv's stride is not {site.stride} along both axes (its dense map {tuple(dense)} becomes "
                        f"{tuple(out)}), and BlurPool subsamples both alike", hint="`on_unfit: skip` on the step leaves such convs alone")
    return {"channels": site.channels, "stride": site.stride}


@register_plugin(
    "blur",
    roles=("downsample.unit",),
    mode="after",
    infer=_unit,
    structural=("channels", "stride"),
    identity_at_init=False,
    paper=PAPER,
    year=2019,
    summary="a strided conv runs at stride 1, and the blur subsamples after its norm and activation (the paper's placement)",
    args=BlurArgs,
    classes=(BlurPool2d,),
)
def blur(channels: int, stride: int, filter_size: int = 4, pad_mode: PadMode = "reflect") -> nn.Module:
    return BlurPool2d(channels, stride=stride, filter_size=filter_size, pad_mode=pad_mode)


def from_antialiased_cnns(state_dict: dict[str, torch.Tensor], filter_size: int | None = None) -> dict[str, torch.Tensor]:
    """A state dict of the reference release (``antialiased_cnns``, pip) under the names of the
    torchvision model that the ``antialias`` recipe, configured like the release, edits.

    The release builds torchvision's networks with BlurPool layers put into ``nn.Sequential``s: a
    Bottleneck's ``conv3 = Sequential(BlurPool, conv1x1)`` (a BasicBlock's ``conv2``), the shortcut
    ``downsample = Sequential(BlurPool, conv1x1, BN)``, the stem's ``maxpool = Sequential(MaxPool2d(2, 1),
    BlurPool)``, MobileNetV2's ``conv = Sequential(..., BlurPool, conv1x1, BN)``, VGG's ``features``. So:
    each BlurPool's ``filt`` buffer is dropped (ours is not saved; it is checked to be the binomial filter,
    of ``filter_size`` when given, the recipe's setting), and the other children of its Sequential move
    down by one index per BlurPool before them; a Sequential left with one child holding state was
    torchvision's layer itself (``layer2.0.conv3.1.weight`` -> ``layer2.0.conv3.weight``). Named
    children (DenseNet's ``features.pool0``, ``transition1.pool``) need no renaming.
    """
    blurs: dict[str, set[int]] = {}
    for key, value in state_dict.items():
        if not key.endswith(".filt"):
            continue
        size = value.shape[-1]
        if filter_size is not None and size != filter_size:
            raise ValueError(f"'{key}' is a {size}x{size} filter; the recipe's filter_size is {filter_size}")
        if not torch.allclose(value.float(), binomial_filter(size).expand_as(value), atol=1e-7):
            raise ValueError(f"'{key}' is not the normalised binomial filter of size {size}: BlurPool2d would compute another function")
        parent, _, name = key[: -len(".filt")].rpartition(".")
        if name.isdigit():
            blurs.setdefault(parent, set()).add(int(name))
    holding: dict[str, set[int]] = {parent: set() for parent in blurs}  # children with state, besides the blurs
    for key in state_dict:
        for parent, indices in blurs.items():
            head = key[len(parent) + 1 :].split(".", 1)[0] if key.startswith(parent + ".") else ""
            if head.isdigit() and int(head) not in indices:
                holding[parent].add(int(head))
    mapped = {}
    for key, value in state_dict.items():
        if key.endswith(".filt"):
            continue
        parts = key.split(".")
        renamed = []
        for i, part in enumerate(parts):
            parent = ".".join(parts[:i])
            if parent in blurs and part.isdigit():
                if len(holding[parent]) == 1:
                    continue  # the Sequential was the layer itself
                part = str(int(part) - sum(1 for b in blurs[parent] if b < int(part)))
            renamed.append(part)
        mapped[".".join(renamed)] = value
    return mapped
