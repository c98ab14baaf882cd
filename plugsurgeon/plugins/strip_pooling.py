"""Strip Pooling Module (SPM).

Hou, Zhang, Cheng, Feng. "Strip Pooling: Rethinking Spatial Pooling for Scene Parsing", CVPR 2020.
https://arxiv.org/abs/2003.13328

Two long, narrow pooling windows: average pooling over each row (an H x 1 strip
per channel) and over each column (a 1 x W strip). Each strip goes through a 1-D convolution of
size 3 along its length (3x1 on the H x 1 strip, 1x3 on the 1 x W strip) with BatchNorm; the two
are expanded back to H x W and added, y = y_h + y_w; a 1x1 convolution f fuses them and the result
gates the input, z = x * sigmoid(f(y)).

Defaults: channels are reduced first, as the authors' code does: its SPM sits inside the bottleneck
after the 3x3 conv, where the width is already C/4 (``planes``), and its mixed pooling module opens
with a 1x1 conv + BN + ReLU to C/4. The site here is the end of the residual branch (C channels), so
the module opens with a 1x1 conv (no bias) + BN + ReLU from C to C/4 (``reduction=4``, at least 8
channels), the authors' inner width. Then, as the authors' SPBlock: strip convs without bias, each
followed by BatchNorm, a ReLU on the sum, and a 1x1 fusion conv with bias, back to C channels.
Deliberate difference: the gate multiplies the C-channel branch output rather than the C/4-channel
3x3 output, and the reduction and the C-wide fusion conv cost about twice the authors' parameters
per module (14 (C/4)^2 against 7 (C/4)^2).
Placement (authors' code): the last block of stages 1-3 and every block of stage 4 (on ResNet-50,
layer1.2, layer2.3, layer3.5, layer4.0-2). Not identity at init: the sigmoid gate starts near 0.5.

Reference: the authors' code (Andrew-Qibin/SPNet on GitHub; not on pip). timm's ``StripAttn`` is a
different, minimal module (depthwise strip convs, no BN, no fusion conv), so no pip package has the SPM.
Checked instead: which pool feeds which strip conv, the reduction first (tests/plugins/test_strip_pooling.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class StripPoolingArgs(PluginArgs):
    reduction: Reduction = Field(4, description="the strips run on C / reduction channels (the authors' inner width)")
    min_hidden: HiddenWidth = Field(8, description="at least this many inner channels")


@register_plugin(
    "strip_pooling",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Hou et al., Strip Pooling: Rethinking Spatial Pooling for Scene Parsing, CVPR 2020, arXiv:2003.13328",
    year=2020,
    summary="1x1 reduce, H x 1 and 1 x W average pooling, 3x1 / 1x3 convs, expanded and added, 1x1 conv, sigmoid gate",
    args=StripPoolingArgs,
)
class StripPooling(nn.Module):
    def __init__(self, channels: int, reduction: int = 4, min_hidden: int = 8) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(min_hidden, channels // reduction)
        self.reduce = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.conv_h = nn.Conv2d(hidden, hidden, (3, 1), padding=(1, 0), bias=False)
        self.bn_h = nn.BatchNorm2d(hidden)
        self.conv_w = nn.Conv2d(hidden, hidden, (1, 3), padding=(0, 1), bias=False)
        self.bn_w = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fuse = nn.Conv2d(hidden, channels, 1)

    def strips(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolved strips: N x hidden x H x 1 (rows pooled over W) and N x hidden x 1 x W."""
        x = self.reduce(x)
        rows = self.bn_h(self.conv_h(x.mean(dim=3, keepdim=True)))
        cols = self.bn_w(self.conv_w(x.mean(dim=2, keepdim=True)))
        return rows, cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.strips(x)
        mixed = self.relu(rows + cols)  # broadcasting expands both to H x W
        return x * torch.sigmoid(self.fuse(mixed))
