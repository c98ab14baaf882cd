"""Adaptively Spatial Feature Fusion (ASFF).

Liu, Huang, Wang. "Learning Spatial Fusion for Single-Shot Object Detection", arXiv 2019.
https://arxiv.org/abs/1911.09516

One module per pyramid level l (Sec. 3.2). Every other level n is resized to level l's resolution
and channels:
  coarser level (upsampling): 1x1 conv to level l's channels, then nearest-neighbour interpolation;
  finer by 2x: a 3x3 conv with stride 2 (changes channels and resolution at once);
  finer by 4x: a stride-2 max pool (3x3, padding 1) before the stride-2 3x3 conv.
Per-pixel fusion weights: each resized level (and level l itself) goes through a 1x1 conv to 16
channels; the concatenation goes through a 1x1 conv to one logit per level, and a softmax over the
levels gives alpha + beta + gamma = 1 at every pixel (Eq. 1-2). The fused map is the weighted sum.

Defaults: 16 weight channels per level (``compress``, the authors' release). Convolutions are conv + BatchNorm +
LeakyReLU(0.1), the YOLOv3 convention the paper builds on; the logit conv is a plain conv with bias.

Deliberate differences from the paper:
- Any number of levels (the paper has three). A level 2^k times finer goes through k-1 stride-2 max
  pools before the stride-2 conv (k = 2 is the paper's 1/4 path); one 2^k times coarser is compressed
  by a 1x1 conv and upsampled. Ratios are read from the site's shapes at planning time; at run time
  every resized level is interpolated (nearest) to the target's exact size where odd sizes round
  differently, so inputs of other sizes work.
- Identity at init: the output is ``x + gamma * (fused - x)`` with a learnable scalar ``gamma`` that
  starts at 0 (``gamma_init``). With ``gamma = 1`` this is exactly the paper's ASFF output; starting
  at 0 leaves the host unchanged right after surgery. ``gamma_init=1.0`` gives the paper's form.
- The authors' release follows the fusion with a 3x3 "expand" conv back to the head's width; that
  conv belongs to their YOLOv3 head, not to the fusion described in the paper, and is not included.

As a neck.level plugin it takes the site's level first and the other levels in the order of
``Site.extra`` (its shapes in ``Site.extra_shapes``); every ASFF reads the original levels.

Reference: the authors' release (GOATmessi7/ASFF on GitHub; not on pip, and no pip package has an ASFF
layer). Checked instead by hand-computed fusions on TinyFPN and torchvision's FPN
(tests/plugins/test_asff.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import HiddenWidth, PluginArgs
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site

LeakyReLU = partial(nn.LeakyReLU, 0.1)  # YOLOv3's activation, which the paper builds on


def scale_step(target: Sequence[int], other: Sequence[int]) -> int:
    """log2 of how much finer ``other`` is than ``target`` (N,C,H,W shapes): +1 = twice finer, -2 = 4x coarser."""
    ratios = [o / t for o, t in zip(other[2:], target[2:], strict=True)]
    return round(math.log2(max(ratios, key=lambda r: abs(math.log2(r)))))


def _levels(site: Site, _module: nn.Module | None):
    if not site.extra_shapes:
        # A level found outside every traced graph (a head fx cannot trace reads it) has its other levels in
        # other graphs: no forward that an edit can change sees them together.
        raise SiteError(f"ASFF fuses pyramid levels: no forward that surgery can edit reads the other levels with "
                        f"'{site.path}' (the site has no extra inputs)",
                        hint="ASFF needs the levels in one traced graph; a single-input plugin (se, cbam, eca) takes this site")
    if any(len(shape) != 4 for shape in site.extra_shapes):
        raise ValueError(f"ASFF needs N,C,H,W levels, got {list(site.extra_shapes)}")
    others = tuple((int(shape[1]), scale_step(site.shape, shape)) for shape in site.extra_shapes)
    return {"channels": site.channels, "others": others}


class Resize(nn.Module):
    """Brings one level to the target level's channels and resolution (``step`` = log2 of how much finer it is)."""

    def __init__(self, in_channels: int, channels: int, step: int) -> None:
        super().__init__()
        self.step = step
        self.pools: nn.Module
        self.conv: nn.Module
        if step > 0:  # finer: (step - 1) max pools, then the stride-2 3x3 conv
            self.pools = nn.Sequential(*[nn.MaxPool2d(3, 2, 1) for _ in range(step - 1)])
            self.conv = ConvNormAct(in_channels, channels, 3, stride=2, act_layer=LeakyReLU)
        elif step < 0 or in_channels != channels:  # coarser (or same size, other width): 1x1 compress
            self.pools = nn.Identity()
            self.conv = ConvNormAct(in_channels, channels, 1, act_layer=LeakyReLU)
        else:
            self.pools = nn.Identity()
            self.conv = nn.Identity()

    def forward(self, level: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.conv(self.pools(level))
        if tuple(out.shape[-2:]) != tuple(size):  # upsampling, or odd sizes that rounded differently
            out = F.interpolate(out, size=size, mode="nearest")
        return out

    def extra_repr(self) -> str:
        return f"step={self.step}"


class ASFFArgs(PluginArgs):
    compress: HiddenWidth = Field(16, description="channels of each level's weight map before the per-level logits (the authors' 16)")
    gamma_init: float = Field(0.0, ge=0.0, le=1.0,
                              description="start of the learned mix x + gamma * (fused - x): 0 is the identity, 1 the paper's output")


@register_plugin(
    "asff",
    roles=("neck.level",),
    mode="after",
    infer=_levels,
    structural=("channels", "others"),
    identity_at_init=True,
    paper="Liu et al., Learning Spatial Fusion for Single-Shot Object Detection, arXiv:1911.09516",
    year=2019,
    summary="per-pixel softmax-weighted fusion of all pyramid levels, resized to this level",
    args=ASFFArgs,
    inputs="site+extra",
)
class ASFF(nn.Module):
    """ASFF for one level. ``others``: (channels, log2 finer-ness) of each other level, in forward order."""

    def __init__(self, channels: int, others: Sequence[Sequence[int]], compress: int = 16, gamma_init: float = 0.0) -> None:
        super().__init__()
        if not others:
            raise ValueError("ASFF needs at least one other level")
        if compress < 1:
            raise ValueError(f"compress must be positive, got {compress}")
        self.channels = channels
        self.others = tuple((int(c), int(s)) for c, s in others)
        self.resize = nn.ModuleList([Resize(c, channels, s) for c, s in self.others])
        levels = len(self.others) + 1
        self.weight_convs = nn.ModuleList([ConvNormAct(channels, compress, 1, act_layer=LeakyReLU) for _ in range(levels)])
        self.logits = nn.Conv2d(compress * levels, levels, 1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def resized(self, x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
        """This level followed by every other level, each at this level's channels and size."""
        if len(others) != len(self.resize):
            raise ValueError(f"ASFF was built for {len(self.resize)} other levels, got {len(others)}")
        size = (x.shape[-2], x.shape[-1])
        return [x, *(resize(level, size) for resize, level in zip(self.resize, others, strict=True))]

    def level_weights(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """N x L x H x W per-pixel weights, softmax over the L levels (dim 1)."""
        descriptors = torch.cat([conv(level) for conv, level in zip(self.weight_convs, levels, strict=True)], dim=1)
        return torch.softmax(self.logits(descriptors), dim=1)

    def fuse(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        """The paper's ASFF output for this level: sum over levels of weight * resized level."""
        levels = self.resized(x, *others)
        weights = self.level_weights(levels)
        fused = levels[0] * weights[:, 0:1]
        for index in range(1, len(levels)):
            fused = fused + levels[index] * weights[:, index : index + 1]
        return fused

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * (self.fuse(x, *others) - x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, others={self.others}"
