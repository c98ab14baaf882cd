"""Global context (GC) block.

Cao, Xu, Lin, Wei, Hu. "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019. https://arxiv.org/abs/1904.11492

Context modelling: a 1x1 convolution W_k gives one logit per position, a softmax over all H*W
positions turns them into attention weights, and the weighted sum of the features is the global
context vector (C x 1 x 1). Transform: 1x1 conv C -> C/r, LayerNorm over [C/r, 1, 1], ReLU, 1x1
conv C/r -> C. Fusion: the transformed context is added to the feature at every position.

Defaults: r = 16; hidden size clamped to at least 8 (only small hosts, C < 128, are affected: a
LayerNorm over fewer units degenerates). W_k has no bias (the paper's formula has none; a bias
cancels in the softmax). The last conv is initialised to zero, as in the authors' code, so the
block is exactly the identity at init. Placement: after the last 1x1 conv of the residual branch,
before the add (the paper's "after 1x1"), in every block of stages c3-c5.

Reference: timm's ``GlobalContext`` (timm.layers) with ``fuse_add=True, fuse_scale=False`` and the
authors' r = 16, the same function (tests/plugins/test_reference_equivalence.py); the authors' code is
xvjiarui/GCNet.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class GCArgs(PluginArgs):
    reduction: Reduction = Field(16, description="r: the transform has C / r hidden channels")
    min_hidden: HiddenWidth = Field(8, description="at least this many hidden channels (a LayerNorm over fewer degenerates)")


@register_plugin(
    "gc",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=True,
    paper="Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, arXiv:1904.11492",
    year=2019,
    summary="softmax attention pooling over positions -> bottleneck transform with LayerNorm -> added to every position",
    args=GCArgs,
)
class GlobalContext(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(min_hidden, channels // reduction)
        self.key = nn.Conv2d(channels, 1, 1, bias=False)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            last := nn.Conv2d(hidden, channels, 1),
        )
        assert last.bias is not None  # made with a bias
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights over positions, N x 1 x (H*W); each row sums to 1."""
        n, _, h, w = x.shape
        return torch.softmax(self.key(x).reshape(n, 1, h * w), dim=-1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The attention-pooled global context, N x C x 1 x 1."""
        n, c, h, w = x.shape
        pooled = torch.bmm(x.reshape(n, c, h * w), self.attention(x).transpose(1, 2))  # N, C, 1
        return pooled.reshape(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(self.context(x))
