"""BlazeBlock and double BlazeBlock: the building blocks of BlazeFace's feature extractor.

Bazarevsky, Kartynnik, Vakunov, Raveendran, Grundmann. "BlazeFace: Sub-millisecond Neural Face
Detection on Mobile GPUs", CVPR Workshop on Computer Vision for AR/VR 2019. https://arxiv.org/abs/1907.05047

A depthwise conv costs s^2 c k^2 multiply-adds against s^2 c d for the 1x1 conv after it, so a
larger depthwise kernel is cheap: BlazeFace uses 5x5 depthwise kernels and needs fewer blocks for
the same receptive field. Single BlazeBlock: 5x5 depthwise conv -> 1x1 projection -> BN,
added to the input, ReLU after the add. Double BlazeBlock: the same to a narrow bottleneck, ReLU,
a second 5x5 depthwise conv -> 1x1 expansion back to the block's width -> BN, added to the input,
ReLU after the add (project - depthwise - expand, the reverse of MobileNetV2's expand - depthwise -
project, with the residual at the wide resolution). On a stride-2 block the residual is a 2x2 max
pool; more output than input channels are zero channels appended to the residual.

Defaults, from the paper's table of the feature extractor's layers: 5x5 depthwise kernels; the double
block's bottleneck is a quarter of its output (48 -> 24 -> 96 on the stride-2 one, 96 -> 24 -> 96
after it: ``expansion=4``). The new convs have no bias (BN follows; a depthwise bias before the 1x1
conv only shifts what the BN subtracts).

The plugin ``blaze`` replaces one conv by a single block, or by a double one with ``double=True``
(the replaced conv's input and output channels and stride 1 or 2 are the block's; its dilation and
padding mode carry over to the depthwise convs). It takes a conv whose output is
ceil(H / stride) ("same" padding: 2 * padding = dilation * (kernel - 1), e.g. a 3x3 with padding 1),
because the residual must have the conv's size at every input size: the depthwise conv is padded
symmetrically (2 * dilation for 5x5) and the max pool rounds up (``ceil_mode``), so an odd map
keeps its last row. It refuses a conv with fewer output than input channels (zero padding cannot
drop channels), or a stride other than 1 and 2, as a SiteError (``on_unfit: skip`` leaves those).

Deliberate differences:
- Padding. The ports of the released TFLite model (hollance/BlazeFace-PyTorch, zmurez/MediaPipePyTorch)
  pad a stride-2 block asymmetrically, (0, 2, 0, 2) before a 3x3 and (1, 2, 1, 2) before a 5x5 depthwise
  conv, to reproduce TensorFlow's "SAME" padding on even maps (MediaPipe's released face model uses 3x3
  kernels, not the paper's 5x5). (0, 2, 0, 2) before a 5x5 stride-2 conv would give H / 2 - 1 rows on an even
  map. Here the padding is symmetric, as the replaced PyTorch conv's, so the block samples the same
  grid as the conv it replaces, the output size is ceil(H / stride) for even and odd maps, and the
  block runs traced at any input size (TF "SAME" depends on the input's parity).
- The seed document's version (tkat0/PyTorch_BlazeFace's) adds a BN after each depthwise conv and biases
  before every BN, and crashes on odd maps (a floor max pool against a conv that rounds up) and on
  fewer output channels (a negative channel pad is skipped, then the add fails); none of that here.
- ``relu=False`` leaves the activation after the add to the host's own layers.
The replaced conv's ``weight`` has no place in the block, so a vanilla checkpoint's key for it is
reported as renamed. Not identity at init: a fresh depthwise-separable path plus a residual cannot
compute the replaced dense conv.

Reference: the paper; no pip-installable implementation exists (MediaPipe ships TFLite models, not a
PyTorch module, and the PyTorch ports above are GitHub-only). Checked instead by
hand-computed cases in tests/plugins/test_blaze.py (fixed weights, the residual's pool and channel
padding, parameter counts from the paper's table).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.plugins._conv import conv_padding, replaced_conv
from plugsurgeon.plugins._kernels import pair
from plugsurgeon.plugins.args import KERNEL_ON_MAP, MAX_WIDTH, BnEps, BnMomentum, OddKernel, PluginArgs
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site


def unfit_reason(source: nn.Module | None, what: str = "the conv") -> str | None:
    """Why a BlazeBlock cannot stand in for ``source`` (called ``what`` in the sentence), or None if it can."""
    if not isinstance(source, nn.Conv2d):
        return f"{what} is a {type(source).__name__}; a BlazeBlock replaces an nn.Conv2d"
    cin, cout = source.in_channels, source.out_channels
    if cout < cin:
        return (
            f"{what} maps {cin} to {cout} channels; a BlazeBlock's residual appends zero channels "
            "and cannot drop any, so it needs at least as many output as input channels"
        )
    stride = tuple(source.stride)
    if stride not in ((1, 1), (2, 2)):
        return f"{what} has stride {stride}; a BlazeBlock has stride 1 or 2 (its residual is the input or a 2x2 max pool)"
    try:
        padding = conv_padding(source)
    except ValueError as error:
        return f"{what}: {error}"
    kernel, dilation = tuple(source.kernel_size), tuple(source.dilation)
    if any(2 * p != d * (k - 1) for p, d, k in zip(padding, dilation, kernel, strict=True)):
        return (
            f"the output of {what} is not ceil(H / stride) (kernel {kernel}, padding {padding}, dilation {dilation}); "
            "a BlazeBlock's residual has that size, so it replaces only 'same'-padded convs (2 * padding = dilation * (kernel - 1))"
        )
    return None


def blaze_site(site: Site, module: nn.Module | None) -> dict:
    """``replaced_conv``, then the BlazeBlock's own structural conditions, as a SiteError naming the site."""
    kwargs = replaced_conv(site, module)  # refuses conv subclasses with a forward of their own first
    reason = unfit_reason(module, f"'{site.path}'")
    if reason is not None:
        raise SiteError(
            reason,
            hint="narrow the step with `where` (e.g. `kernel: 3`), or let it skip such convs with `on_unfit: skip`",
        )
    return kwargs


class BlazeArgs(PluginArgs):
    double: bool = Field(
        False, description="double BlazeBlock (project to a bottleneck, second depthwise conv, expand)"
    )
    kernel_size: Annotated[OddKernel, KERNEL_ON_MAP] = Field(
        5, description="kernel of the depthwise conv(s) (the paper's 5x5)"
    )
    expansion: int = Field(
        4,
        ge=1,
        le=MAX_WIDTH,
        description="double blocks: the bottleneck has C_out / expansion channels (at least 1); the paper's 96 -> 24 -> 96 is 4",
    )
    relu: bool = Field(
        True, description="ReLU after the residual add (the paper's); False leaves it to the host's layers"
    )
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1


class _Blaze(nn.Module):
    """The parts both blocks share: the first depthwise conv and the residual join."""

    def __init__(self, source: nn.Conv2d, kernel_size: int, relu: bool) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        reason = unfit_reason(source)
        if reason is not None:
            raise ValueError(reason)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.stride = int(source.stride[0])
        self.relu = bool(relu)
        self._factory: dict[str, Any] = dict(device=source.weight.device, dtype=source.weight.dtype)
        self._dilation = pair(source.dilation)
        self._padding_mode = source.padding_mode
        self.depthwise = self._depthwise(self.in_channels, kernel_size, self.stride)

    def _depthwise(self, channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
        # Symmetric "same" padding: with the replaced conv's dilation the output is ceil(H / stride).
        padding = pair([d * (kernel_size - 1) // 2 for d in self._dilation])
        return nn.Conv2d(
            channels,
            channels,
            kernel_size,
            stride,
            padding,
            self._dilation,
            groups=channels,
            bias=False,
            padding_mode=self._padding_mode,
            **self._factory,
        )

    def _join(self, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.stride == 2:
            # ceil_mode: an odd map's last row forms a window of its own, as the strided conv's last output does.
            shortcut = F.max_pool2d(shortcut, 2, 2, ceil_mode=True)
        if self.out_channels > self.in_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))
        out = branch + shortcut
        return F.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, relu={self.relu}"


class BlazeBlock(_Blaze):
    """Single BlazeBlock: depthwise kxk, 1x1 projection, BN; residual; ReLU."""

    def __init__(
        self,
        source: nn.Conv2d,
        kernel_size: int = 5,
        relu: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__(source, kernel_size, relu)
        self.project = nn.Conv2d(self.in_channels, self.out_channels, 1, bias=False, **self._factory)
        self.project_bn = nn.BatchNorm2d(self.out_channels, eps=bn_eps, momentum=bn_momentum, **self._factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._join(self.project_bn(self.project(self.depthwise(x))), x)


class DoubleBlazeBlock(_Blaze):
    """Double BlazeBlock: depthwise kxk, 1x1 projection to the bottleneck, BN, ReLU, depthwise kxk, 1x1 expansion, BN; residual; ReLU."""

    def __init__(
        self,
        source: nn.Conv2d,
        kernel_size: int = 5,
        relu: bool = True,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        expansion: int = 4,
    ) -> None:
        super().__init__(source, kernel_size, relu)
        if expansion < 1:
            raise ValueError(f"expansion must be positive, got {expansion}")
        self.bottleneck = max(1, self.out_channels // expansion)
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, **self._factory)
        self.project = nn.Conv2d(self.in_channels, self.bottleneck, 1, bias=False, **self._factory)
        self.project_bn = nn.BatchNorm2d(self.bottleneck, **bn)
        self.depthwise2 = self._depthwise(self.bottleneck, kernel_size, 1)
        self.expand = nn.Conv2d(self.bottleneck, self.out_channels, 1, bias=False, **self._factory)
        self.expand_bn = nn.BatchNorm2d(self.out_channels, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.project_bn(self.project(self.depthwise(x))))
        return self._join(self.expand_bn(self.expand(self.depthwise2(h))), x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bottleneck={self.bottleneck}"


@register_plugin(
    "blaze",
    roles=("conv",),
    mode="replace",
    infer=blaze_site,
    structural=("source",),
    identity_at_init=False,
    paper="Bazarevsky et al., BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs, CVPR Workshops 2019, arXiv:1907.05047",
    year=2019,
    summary="BlazeBlock: 5x5 depthwise conv, 1x1 projection + BN (double: to C/4, ReLU, 5x5 depthwise, 1x1 expand + BN), "
    "residual (2x2 max pool, zero channels), ReLU",
    classes=(BlazeBlock, DoubleBlazeBlock),
    args=BlazeArgs,
    suggested_where={"kernel": 3, "depthwise": False},
)
def blaze(
    source: nn.Conv2d,
    double: bool = False,
    kernel_size: int = 5,
    expansion: int = 4,
    relu: bool = True,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
) -> BlazeBlock | DoubleBlazeBlock:
    """A single BlazeBlock, or a double one with ``double=True``, in place of the conv ``source``."""
    common: dict[str, Any] = dict(kernel_size=kernel_size, relu=relu, bn_eps=bn_eps, bn_momentum=bn_momentum)
    if double:
        return DoubleBlazeBlock(source, expansion=expansion, **common)
    if expansion != 4:
        # Not silently ignored: a recipe that sets it means a double block.
        raise ValueError(
            f"expansion ({expansion}) sizes a double block's bottleneck; set double: true to use it"
        )
    return BlazeBlock(source, **common)
