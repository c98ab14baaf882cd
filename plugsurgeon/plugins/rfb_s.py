"""Receptive Field Block, small variant (RFB-s), for shallow feature maps.

Liu, Huang, Wang. "Receptive Field Block Net for Accurate and Fast Object Detection", ECCV 2018.
https://arxiv.org/abs/1711.07767

RFB-s mimics the smaller receptive fields of shallow human retinotopic maps: four branches instead
of three, smaller kernels, and each nxn conv before the dilated conv replaced by a 1xn plus an nx1
conv (the paper's RFB-s figure):
  1x1 -> 3x3 dilation 1
  1x1 -> 3x1 -> 3x3 dilation 3
  1x1 -> 1x3 -> 3x3 dilation 3
  1x1 -> 1x3 -> 3x1 (the 3x3, factorised) -> 3x3 dilation 5
concatenated, a 1x1 conv back to C channels, ``relu(x + 0.1 * branches(x))``. Every conv is conv +
BatchNorm (+ ReLU, except after the dilated convs and the final 1x1). In RFB Net it sits on the
stride-8 map (conv4_3 of VGG-16), RFB (plugin ``rfb``) on the deeper ones.

Widths (the paper gives none; these follow the ratios of the authors' release): with i = C / 4
(at least 4), the first three branches are 1x1 C->i then i->i convs; the fourth is 1x1 C->i/2,
1x3 -> 3i/4, 3x1 -> i, 3x3 dilation 5; concat 4i -> 1x1 -> C.

Deliberate differences, as for ``rfb``: identity shortcut (the plugin keeps C channels and the map
size; the authors' release uses a 1x1 conv + BN shortcut); the final BatchNorm scale starts at 0
(``zero_init=True``) so the block starts as ``relu(x)``, which is exactly ``x`` after a ReLU (every
ResNet stage output) but not at sites with negative values: identity at init is NOT declared.

Reference: the authors' release (GOATmessi7/RFBNet on GitHub; not on pip). Checked instead: the four
branches' (non-square) receptive fields measured with an impulse and the widths (tests/plugins/test_rfb_s.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import ON_MAP, Dilation, PluginArgs, Reduction, tuple_length
from plugsurgeon.plugins.registry import register_plugin, site_channels
from plugsurgeon.plugins.rfb import ScaledResidual, _dilations


class RFBSmallArgs(PluginArgs):
    reduction: Reduction = Field(4, description="branch width i = C / reduction (at least 4)")
    scale: float = Field(0.1, ge=0.0, le=10.0, description="residual scaling of the branches: relu(x + scale * branches(x))")
    dilations: Annotated[tuple[Dilation, ...], tuple_length(4, 4), ON_MAP] = Field(
        (1, 3, 3, 5), description="dilation of each branch's last 3x3 conv (the eccentricities)")
    zero_init: bool = Field(True, description="start the final BatchNorm scale at 0 (the block starts as relu(x))")


@register_plugin(
    "rfb_s",
    roles=("stage", "backbone", "residual.output", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Liu et al., Receptive Field Block Net for Accurate and Fast Object Detection, ECCV 2018, arXiv:1711.07767",
    year=2018,
    summary="RFB for shallow maps: 4 branches with 1x3/3x1 convs, dilations 1/3/3/5, 0.1-scaled residual",
    args=RFBSmallArgs,
)
class RFBSmall(ScaledResidual):
    def __init__(self, channels: int, reduction: int = 4, scale: float = 0.1, dilations: Sequence[int] = (1, 3, 3, 5), zero_init: bool = True) -> None:
        if reduction < 1:
            raise ValueError(f"reduction must be positive, got {reduction}")
        d1, d2, d3, d4 = _dilations(dilations, 4)
        i = max(4, channels // reduction)
        half, three_quarters = max(1, i // 2), max(1, 3 * i // 4)
        branches = [
            nn.Sequential(ConvNormAct(channels, i, 1), ConvNormAct(i, i, 3, dilation=d1, act_layer=None)),
            nn.Sequential(ConvNormAct(channels, i, 1), ConvNormAct(i, i, (3, 1)), ConvNormAct(i, i, 3, dilation=d2, act_layer=None)),
            nn.Sequential(ConvNormAct(channels, i, 1), ConvNormAct(i, i, (1, 3)), ConvNormAct(i, i, 3, dilation=d3, act_layer=None)),
            nn.Sequential(ConvNormAct(channels, half, 1), ConvNormAct(half, three_quarters, (1, 3)), ConvNormAct(three_quarters, i, (3, 1)),
                          ConvNormAct(i, i, 3, dilation=d4, act_layer=None)),
        ]
        super().__init__(channels, branches, 4 * i, scale, zero_init)
