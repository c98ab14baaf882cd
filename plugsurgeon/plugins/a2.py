"""Double attention block (A^2).

Chen, Kalantidis, Li, Yan, Feng. "A^2-Nets: Double Attention Networks", NeurIPS 2018. https://arxiv.org/abs/1810.11579

Three 1x1 convolutions read the input X (C channels, L = HW positions): A = phi(X) gives c_m
feature maps, B = theta(X) gives c_n attention maps, V = rho(X) gives c_n attention vectors.
Gather (second-order attention pooling): G = A softmax(B)^T, a (c_m x c_n) set of global
descriptors; column j sums A over the positions weighted by attention map j, normalised by a softmax
over the L positions. Distribute: Z_i = G softmax(v_i), where v_i (the c_n values at position i) is
normalised by a softmax over the c_n descriptors. A 1x1 conv reconstructs C channels from c_m and
the result is added to X.

Defaults: c_m = c_n = C/4 (``feature_reduction = attention_reduction = 4``). We could not check the
paper's exact c_m and c_n for its ResNet-50 models from the sources available offline; C/4 for both
is our default and each is a recipe argument.

Placement: the upper stages (res4, res5), as the catalog records from the paper's ablation; the
recipe ``a2`` puts one block after every other residual block of stages 4 and 5 (on ResNet-50:
layer3.0, 3.2, 3.4, 4.0 and 4.2, five blocks).

Deliberate difference: the reconstruction conv is zero-initialised (weight and bias) so the block
starts as the identity; that initialisation is our choice.

Reference: the paper's equations; no authors' release was found and no pip package (timm, torchvision,
smp, kornia) has an A^2 block. Checked instead against an explicit gather/distribute computation with the
paper's two softmax axes (tests/plugins/test_a2.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class A2Args(PluginArgs):
    feature_reduction: Reduction = Field(4, description="c_m = C / feature_reduction feature maps are gathered")
    attention_reduction: Reduction = Field(4, description="c_n = C / attention_reduction attention maps and vectors")
    min_hidden: HiddenWidth = Field(1, description="at least this many feature and attention maps")


@register_plugin(
    "a2",
    roles=("residual", "stage", "backbone", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=True,
    paper="Chen et al., A^2-Nets: Double Attention Networks, NeurIPS 2018, arXiv:1810.11579",
    year=2018,
    summary="gather global descriptors with softmax over positions, distribute them with softmax over descriptors; residual",
    args=A2Args,
)
class DoubleAttention(nn.Module):
    def __init__(self, channels: int, feature_reduction: int = 4, attention_reduction: int = 4, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or feature_reduction < 1 or attention_reduction < 1:
            raise ValueError(f"channels and reductions must be positive, got {channels}, {feature_reduction}, {attention_reduction}")
        self.c_m = max(min_hidden, channels // feature_reduction)
        self.c_n = max(min_hidden, channels // attention_reduction)
        self.features = nn.Conv2d(channels, self.c_m, 1)  # A = phi(X)
        self.gather_maps = nn.Conv2d(channels, self.c_n, 1)  # B = theta(X)
        self.distribute_maps = nn.Conv2d(channels, self.c_n, 1)  # V = rho(X)
        self.reconstruct = nn.Conv2d(self.c_m, channels, 1)
        assert self.reconstruct.bias is not None  # made with a bias
        nn.init.zeros_(self.reconstruct.weight)
        nn.init.zeros_(self.reconstruct.bias)

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """Gather: G = A softmax(B)^T, shape (N, c_m, c_n); the softmax runs over positions."""
        a = self.features(x).flatten(2)  # N, c_m, L
        b = self.gather_maps(x).flatten(2).softmax(dim=-1)  # N, c_n, L; each map sums to 1 over L
        return torch.bmm(a, b.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        v = self.distribute_maps(x).flatten(2).softmax(dim=1)  # N, c_n, L; each position sums to 1 over c_n
        z = torch.bmm(self.descriptors(x), v)  # N, c_m, L
        return x + self.reconstruct(z.reshape(n, self.c_m, h, w))
