"""Bottleneck Attention Module.

Park, Woo, Lee, Kweon. "BAM: Bottleneck Attention Module", BMVC 2018. https://arxiv.org/abs/1807.06514

Two parallel branches. Channel: global average pooling, an MLP with one hidden layer of
C/r units (FC, ReLU, FC, with biases), BatchNorm: M_c = BN(MLP(AvgPool(F))). Spatial: 1x1
conv C -> C/r, two 3x3 convs with dilation d, 1x1 conv C/r -> 1, BatchNorm: M_s = BN(f(F)).
The branches are broadcast to C x H x W, added, and squashed: M = sigmoid(M_c + M_s); the output is
F + F * M = F * (1 + M), a residual attention.

Defaults: r = 16, d = 4, two dilated convs, as in the paper. The paper's equations leave the
activations inside the spatial branch implicit; here each intermediate conv is followed by
BatchNorm and ReLU, as in the authors' code, and the final BatchNorm of each branch is the
paper's. Deliberate difference from the authors' code: it combines the branches as
``1 + sigmoid(M_c * M_s)``; the paper's ablation chooses element-wise summation, which
this module follows. Because the channel branch ends in BatchNorm over a batch of pooled vectors,
training needs a batch of at least 2 (as for any BatchNorm1d); evaluation works with any batch.
Placement: one module at the end of each stage where the network downsamples next (on ResNet-50,
after layer1, layer2 and layer3). Not identity at init: the gate starts at 1 + sigmoid(.) ~ 1.5.

Reference: the authors' code (Jongchan/attention-module on GitHub; not on pip; timm's BottleneckAttn is
BoTNet's self-attention, another module). Checked instead by the hand-built residual gate and BAM-ResNet50's
parameter count (tests/plugins/test_bam.py).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import MAX_BRANCHES, ON_MAP, Dilation, HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class BAMArgs(PluginArgs):
    reduction: Reduction = Field(16, description="r: both branches narrow to C / r")
    dilation: Annotated[Dilation, ON_MAP] = Field(4, description="d: dilation of the spatial branch's 3x3 convs")
    num_dilated: int = Field(2, ge=0, le=MAX_BRANCHES, description="number of dilated 3x3 convs in the spatial branch")
    min_hidden: HiddenWidth = Field(1, description="at least this many hidden units and channels")


@register_plugin(
    "bam",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Park et al., BAM: Bottleneck Attention Module, BMVC 2018, arXiv:1807.06514",
    year=2018,
    summary="channel MLP and dilated-conv spatial branches summed, x * (1 + sigmoid(Mc + Ms)), at stage ends",
    args=BAMArgs,
)
class BAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, num_dilated: int = 2, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or dilation < 1 or num_dilated < 0:
            raise ValueError(f"invalid BAM arguments: channels {channels}, reduction {reduction}, dilation {dilation}, num_dilated {num_dilated}")
        hidden = max(min_hidden, channels // reduction)
        self.channel = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.BatchNorm1d(channels),
        )
        # One flat Sequential (spatial.0 conv, spatial.1 BN, spatial.2 ReLU, spatial.3 conv, ...): the
        # blocks' layers are spliced in, so the state-dict keys stay those of saved BAMs.
        layers = [*ConvNormAct(channels, hidden, 1)]
        for _ in range(num_dilated):
            layers += [*ConvNormAct(hidden, hidden, 3, dilation=dilation)]
        layers += [*ConvNormAct(hidden, 1, 1, act_layer=None)]
        self.spatial = nn.Sequential(*layers)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M(F) = sigmoid(M_c + M_s), broadcast to N x C x H x W."""
        channel = self.channel(x.mean(dim=(2, 3)))[:, :, None, None]  # N, C, 1, 1
        spatial = self.spatial(x)  # N, 1, H, W
        return torch.sigmoid(channel + spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.attention(x))
