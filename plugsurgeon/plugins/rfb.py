"""Receptive Field Block (RFB).

Liu, Huang, Wang. "Receptive Field Block Net for Accurate and Fast Object Detection", ECCV 2018.
https://arxiv.org/abs/1711.07767

Inception-style branches, each a 1x1 bottleneck, then a kxk conv (the "size" of the receptive field,
k = 1, 3, 5 with the 5x5 built as two stacked 3x3s), then a 3x3 conv dilated by 1, 3 and 5 (the
"eccentricity"); the branches are concatenated, a 1x1 conv restores the channel count, and the
result joins a shortcut as in Inception-ResNet: ``relu(x + scale * branches(x))`` (the paper's RFB
figure), with scale 0.1 as in the authors' release (Inception-ResNet's residual scaling). Every conv is conv + BatchNorm (+ ReLU, except after the dilated convs and the
final 1x1). RFB-s, the variant for shallow maps, is the plugin ``rfb_s`` (rfb_s.py).

Widths (the paper gives none; these follow the ratios of the authors' release): with i = C / 8
(at least 2), branch 1: 1x1 C->2i, 3x3 dilation 1; branch 2: 1x1 C->i, 3x3 i->2i, 3x3 dilation 3;
branch 3: 1x1 C->i, 3x3 i->3i/2, 3x3 3i/2->2i, 3x3 dilation 5; concat 6i -> 1x1 -> C.

Deliberate differences from the paper:
- As an "after" plugin it keeps C channels and the map size, so the shortcut is the identity (the
  authors' release uses a 1x1 conv + BN shortcut, needed only when channels or stride change).
- The final 1x1 conv's BatchNorm scale starts at 0 (``zero_init=True``), so the block starts as
  ``relu(x)``. Where the input is already non-negative (after a ReLU: every ResNet stage output,
  which is where the built-in recipe puts it) that is exactly ``x``, and the model is unchanged
  after surgery; at sites with negative values (an FPN level, a linear bottleneck) it is not.
  The plugin therefore does NOT declare identity at init. ``zero_init=False`` gives the paper's
  initialisation.

Reference: the authors' release (GOATmessi7/RFBNet on GitHub; not on pip, and no pip package has an
RFB). Checked instead: each branch's receptive field measured with an impulse, widths, the scaled residual
(tests/plugins/test_rfb.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, cast

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import ON_MAP, Dilation, PluginArgs, Reduction, tuple_length
from plugsurgeon.plugins.registry import register_plugin, site_channels


class ScaledResidual(nn.Module):
    """Base of RFB and RFB-s: ``relu(x + scale * project(cat(branches(x))))``."""

    def __init__(self, channels: int, branches: list[nn.Sequential], concat: int, scale: float, zero_init: bool) -> None:
        super().__init__()
        self.channels, self.scale = channels, float(scale)
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(concat, channels, 1, act_layer=None)
        if zero_init:
            nn.init.zeros_(cast(nn.BatchNorm2d, self.project[1]).weight)
        self.relu = nn.ReLU()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The branch term before scaling: 1x1 projection of the concatenated branches."""
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.scale * self.residual(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale}"


def _dilations(dilations: Sequence[int], count: int) -> tuple[int, ...]:
    dilations = tuple(int(d) for d in dilations)
    if len(dilations) != count or min(dilations) < 1:
        raise ValueError(f"dilations must be {count} positive integers, got {dilations}")
    return dilations


class RFBArgs(PluginArgs):
    reduction: Reduction = Field(8, description="branch width i = C / reduction (at least 2)")
    scale: float = Field(0.1, ge=0.0, le=10.0, description="residual scaling of the branches: relu(x + scale * branches(x))")
    dilations: Annotated[tuple[Dilation, ...], tuple_length(3, 3), ON_MAP] = Field(
        (1, 3, 5), description="dilation of each branch's last 3x3 conv (the eccentricities)")
    zero_init: bool = Field(True, description="start the final BatchNorm scale at 0 (the block starts as relu(x))")


@register_plugin(
    "rfb",
    roles=("stage", "backbone", "residual.output", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Liu et al., Receptive Field Block Net for Accurate and Fast Object Detection, ECCV 2018, arXiv:1711.07767",
    year=2018,
    summary="inception branches (1x1, 3x3, 5x5 as 2x3x3) + 3x3 convs dilated 1/3/5, concat, 1x1, 0.1-scaled residual",
    args=RFBArgs,
)
class RFB(ScaledResidual):
    def __init__(self, channels: int, reduction: int = 8, scale: float = 0.1, dilations: Sequence[int] = (1, 3, 5), zero_init: bool = True) -> None:
        if reduction < 1:
            raise ValueError(f"reduction must be positive, got {reduction}")
        d1, d2, d3 = _dilations(dilations, 3)
        i = max(2, channels // reduction)
        mid = max(1, 3 * i // 2)
        branches = [
            nn.Sequential(ConvNormAct(channels, 2 * i, 1), ConvNormAct(2 * i, 2 * i, 3, dilation=d1, act_layer=None)),
            nn.Sequential(ConvNormAct(channels, i, 1), ConvNormAct(i, 2 * i, 3), ConvNormAct(2 * i, 2 * i, 3, dilation=d2, act_layer=None)),
            nn.Sequential(ConvNormAct(channels, i, 1), ConvNormAct(i, mid, 3), ConvNormAct(mid, 2 * i, 3), ConvNormAct(2 * i, 2 * i, 3, dilation=d3, act_layer=None)),
        ]
        super().__init__(channels, branches, 6 * i, scale, zero_init)
