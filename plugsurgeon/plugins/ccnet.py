"""Criss-cross attention (recurrent).

Huang, Wang, Huang, Huang, Wei, Liu. "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
https://arxiv.org/abs/1811.11721

Criss-cross attention: 1x1 convolutions give a query and a key with C/8 channels and a value with
C channels. Each position u attends to the H + W - 1 positions of its criss-cross path (its row and
its column, the position itself counted once); the energies are normalised by one softmax over that
whole path, and the output is ``x + gamma * sum_path A V`` with a learnable scalar gamma that starts
at 0, as in the authors' code (the paper's equation writes the plain sum), so the module is the
identity at init. Recurrent criss-cross attention applies the same module R = 2 times with shared
weights, which gives every position a path to every other one.

Placement: on the backbone's last feature map (the paper's segmentation head sits on the dilated
ResNet-101's output); the recipe ``ccnet`` does that.

Deliberate difference from the paper: the paper's RCCA head wraps the attention in a 3x3 conv that
reduces the map to 512 channels, a 3x3 conv after it, and a concatenation with the input; as a
drop-in plugin that keeps the host's shape this module is the recurrent attention itself on the
C-channel map.

Reference: the authors' release (speedinghzl/CCNet on GitHub); its pip-distributed form,
mmcv.ops.CrissCrossAttention, needs mmcv's compiled ops and is not installed. Checked instead against a
brute-force masked HW x HW attention (tests/plugins/test_ccnet.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import MAX_BRANCHES, HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class CCNetArgs(PluginArgs):
    reduction: Reduction = Field(8, description="query and key have C / reduction channels")
    recurrence: int = Field(2, ge=1, le=MAX_BRANCHES, description="R: how many times the shared attention runs")
    min_hidden: HiddenWidth = Field(1, description="at least this many query and key channels")


@register_plugin(
    "ccnet",
    roles=("backbone", "stage", "residual", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=True,
    paper="Huang et al., CCNet: Criss-Cross Attention for Semantic Segmentation, ICCV 2019, arXiv:1811.11721",
    year=2019,
    summary="attention along each position's row and column (one softmax over H+W-1), applied R=2 times, gamma from 0",
    args=CCNetArgs,
)
class CrissCrossAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8, recurrence: int = 2, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or reduction < 1 or recurrence < 1:
            raise ValueError(f"channels, reduction and recurrence must be positive, got {channels}, {reduction}, {recurrence}")
        inner = max(min_hidden, channels // reduction)
        self.recurrence = recurrence
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights over each position's column (N, H, W, H) and row (N, H, W, W), jointly softmax-normalised.

        ``column[n, i, j, k]`` weighs position (k, j); ``row[n, i, j, k]`` weighs (i, k). The centre
        (i, j) belongs to both; it is kept in the row and masked out of the column, so it counts once.
        """
        h, w = x.shape[-2:]
        q, k = self.query(x), self.key(x)
        column = torch.einsum("ncij,nckj->nijk", q, k)
        row = torch.einsum("ncij,ncik->nijk", q, k)
        centre = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # (i, 1, k): k == i
        column = column.masked_fill(centre, float("-inf"))
        weights = torch.cat([column, row], dim=-1).softmax(dim=-1)
        return weights.split([h, w], dim=-1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass: ``x + gamma * aggregated values``."""
        column, row = self.attention(x)
        v = self.value(x)
        out = torch.einsum("nijk,nckj->ncij", column, v) + torch.einsum("nijk,ncik->ncij", row, v)
        return x + self.gamma * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.step(x)
        return x
