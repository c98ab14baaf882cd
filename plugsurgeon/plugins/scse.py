"""Concurrent spatial and channel squeeze & excitation (scSE).

Roy, Navab, Wachinger. "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional
Networks", MICCAI 2018. https://arxiv.org/abs/1803.02579

cSE: global average pooling, FC (C -> C/2), ReLU, FC (C/2 -> C), sigmoid, channel-wise
rescaling. The paper fixes the hidden size at C/2 (W1 in R^{C x C/2}), so the reduction here
defaults to 2, not SE's 16. sSE: a 1x1 convolution from C channels to one map, sigmoid,
position-wise rescaling. scSE: the two recalibrated maps are added element-wise,
x * s_c + x * s_s. The journal extension of the paper (Roy et al., IEEE TMI 2019) compares other
aggregations and favours max-out, max(x * s_c, x * s_s); ``fusion="max"`` selects it and
``fusion="mul"`` the element-wise product. FC and conv layers carry biases, as in the authors' code.
The paper places scSE after the encoder/decoder blocks of F-CNNs; on ResNets the recipe uses the SE
slot, on the residual branch before the add. Not identity at init: both gates start near 0.5.

Reference: segmentation_models_pytorch's ``SCSEModule`` with ``reduction=2``, the same function for
``fusion="add"`` (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels

FUSIONS = ("add", "max", "mul")


class SCSEArgs(PluginArgs):
    reduction: Reduction = Field(2, description="the cSE hidden layer has C / reduction units (the paper's C/2)")
    min_hidden: HiddenWidth = Field(1, description="at least this many hidden units")
    fusion: Literal["add", "max", "mul"] = Field("add", description="how the two recalibrated maps combine (add: the paper; max: the journal's max-out)")


@register_plugin(
    "scse",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Roy et al., Concurrent Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks, MICCAI 2018, arXiv:1803.02579",
    year=2018,
    summary="channel SE (C -> C/2 -> C) and spatial SE (1x1 conv to one map) gates in parallel, outputs added",
    args=SCSEArgs,
)
class SCSE(nn.Module):
    def __init__(self, channels: int, reduction: int = 2, min_hidden: int = 1, fusion: str = "add") -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{fusion}'")
        hidden = max(min_hidden, channels // reduction)
        self.fusion = fusion
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
        spatial_gate = torch.sigmoid(self.spatial(x))  # N, 1, H, W
        by_channel, by_position = x * channel_gate, x * spatial_gate
        if self.fusion == "add":
            return by_channel + by_position
        if self.fusion == "max":
            return torch.maximum(by_channel, by_position)
        return by_channel * by_position
