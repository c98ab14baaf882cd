"""Squeeze-and-Excitation.

Hu, Shen, Albanie, Sun, Wu. "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507

Global average pooling, FC (C -> C/r) with bias, ReLU, FC (C/r -> C) with bias, sigmoid, channel-wise
rescaling; reduction r = 16. Placed at the end of the residual branch, before the add (paper Fig. 3).
Not identity at init: the sigmoid gate starts near 0.5, as in the paper.

Reference: torchvision's ``SqueezeExcitation`` (torchvision.ops) and timm's ``SEModule`` (timm.layers,
given C/16 hidden units), the same function (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class SEArgs(PluginArgs):
    reduction: Reduction = Field(16, description="r: the bottleneck has C / r hidden units")
    min_hidden: HiddenWidth = Field(1, description="at least this many hidden units")


@register_plugin(
    "se",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Hu et al., Squeeze-and-Excitation Networks, CVPR 2018, arXiv:1709.01507",
    year=2018,
    summary="channel attention: pooled descriptor -> bottleneck MLP -> sigmoid gate",
    args=SEArgs,
)
class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(self.relu(self.fc1(squeezed))))
        return x * scale[:, :, None, None]
