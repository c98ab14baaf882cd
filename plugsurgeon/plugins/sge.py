"""Spatial Group-wise Enhance.

Li, Hu, Yang. "Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional
Networks", 2019. https://arxiv.org/abs/1905.09646

The channels are split into G groups. In each group, the global (spatially averaged) feature g is
compared with the local feature at every position by a dot product over the group's channels,
c_i = g . x_i; the importance map c is normalised over space (zero mean, unit standard
deviation), scaled and shifted by a learnable weight and bias per group, a_i = gamma * c_i + beta,
and gates the group's features, x_i * sigmoid(a_i).

Defaults: G = 64 groups, weight gamma initialised to 0 and bias beta to 1, as in the paper. Only
2 * G parameters per module (2048 for the 16 bottlenecks of ResNet-50). When the channel count is
not divisible by G (small maps, C < 64), G is clamped to the largest divisor of C not above it
(C = 16 gives 16 groups of one channel). Deliberate difference: the standard deviation is computed
as sqrt(var + eps) rather than the paper's (sigma + eps), so a group whose importance map is
constant (e.g. all-zero features after a ReLU) gets a finite gradient instead of a NaN; the two
differ only when the variance is near eps. Placed like SE, on the residual branch before the add,
in every bottleneck. Not identity at init: the gate starts at sigmoid(1), as in the paper.

Reference: the authors' release (implus/PytorchInsight on GitHub; not on pip, and no pip package has
SGE). Checked instead by per-group importance maps computed by hand (tests/plugins/test_sge.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import MAX_WIDTH, PluginArgs
from plugsurgeon.plugins.registry import register_plugin, site_channels


def group_count(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` that is at most ``groups``."""
    return max(g for g in range(1, min(channels, groups) + 1) if channels % g == 0)


class SGEArgs(PluginArgs):
    groups: int = Field(64, ge=1, le=MAX_WIDTH, description="G: channel groups (clamped to a divisor of C)")
    eps: float = Field(1e-5, gt=0.0, le=1.0, description="added to the variance when normalising the importance map")


@register_plugin(
    "sge",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Li et al., Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks, arXiv:1905.09646",
    year=2019,
    summary="per-group spatial attention: similarity of each position to the group's pooled feature, normalised, sigmoid gate",
    args=SGEArgs,
)
class SpatialGroupEnhance(nn.Module):
    def __init__(self, channels: int, groups: int = 64, eps: float = 1e-5) -> None:
        super().__init__()
        if channels < 1 or groups < 1:
            raise ValueError(f"channels and groups must be positive, got {channels} and {groups}")
        self.groups = group_count(channels, groups)
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))

    def importance(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised importance map c-hat, shape N, G, H, W."""
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, c // self.groups, h, w)
        pooled = grouped.mean(dim=(3, 4), keepdim=True)
        similarity = (grouped * pooled).sum(dim=2)  # N, G, H, W
        centred = similarity - similarity.mean(dim=(2, 3), keepdim=True)
        std = (centred.square().mean(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        return centred / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        gate = torch.sigmoid(self.importance(x) * self.weight + self.bias)  # N, G, H, W
        grouped = x.reshape(n, self.groups, c // self.groups, h, w)
        return (grouped * gate.unsqueeze(2)).reshape(n, c, h, w)
