"""Non-local block (embedded Gaussian).

Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018. https://arxiv.org/abs/1711.07971

``z = x + BN(W_z y)`` with ``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)``: the generic
non-local operation with the embedded-Gaussian pairwise function. theta, phi and g are 1x1
convolutions to C/2 channels (the paper's bottleneck); the pairwise matrix is (HW x HW') over
positions and the softmax runs over the key positions j. W_z is a 1x1 conv back to C followed by
BatchNorm whose scale is initialised to zero, so the block starts as the identity. ``sub_sample``
(default True, the paper's subsampling trick) max-pools phi and g by 2, which shrinks the pairwise
matrix to (HW x HW/4).

Placement (ResNet-50): one block right before the last residual block of res4; the recipe
``nonlocal`` reproduces that. The paper's 5-block variant puts 2 in res3 and 3 in res4, every other
block.

Deliberate differences from the paper: the pooling uses ``ceil_mode=True`` so an odd map (7x7, 25x25)
keeps its last row and column, which floor pooling would drop; identical on even maps. The paper's
formula has no 1/sqrt(d) scaling of the energies; ``scale=True`` adds it.

``nonlocal`` is a Python keyword: this file is imported with importlib (the registry does that), the
class is reached as ``plugsurgeon.get_plugin("nonlocal").factory``, and surgery names the new
module ``nonlocal_`` on its owner (``layer3.4.nonlocal_``).

Reference: timm's ``NonLocalAttn`` (timm.layers) with ``use_scale=False``: ours with
``sub_sample=False, scale=False`` is the same function (tests/plugins/test_reference_equivalence.py); the
authors' release is the Caffe2 facebookresearch/video-nonlocal-net.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin, site_channels


class NonLocalArgs(PluginArgs):
    reduction: Reduction = Field(2, description="theta, phi and g have C / reduction channels (the paper's C/2)")
    sub_sample: bool = Field(True, description="max-pool phi and g by 2 (the paper's subsampling)")
    scale: bool = Field(False, description="divide the energies by sqrt(channels) (not in the paper)")
    min_hidden: HiddenWidth = Field(1, description="at least this many embedding channels")


@register_plugin(
    "nonlocal",
    roles=("residual", "stage", "backbone", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=True,
    paper="Wang et al., Non-local Neural Networks, CVPR 2018, arXiv:1711.07971",
    year=2018,
    summary="embedded-Gaussian self-attention over all positions, residual with a zero-initialised BN",
    args=NonLocalArgs,
)
class NonLocalBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 2, sub_sample: bool = True, scale: bool = False, min_hidden: int = 1) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        self.inner = max(min_hidden, channels // reduction)
        self.scale = scale
        self.theta = nn.Conv2d(channels, self.inner, 1)
        self.phi = nn.Conv2d(channels, self.inner, 1)
        self.g = nn.Conv2d(channels, self.inner, 1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True) if sub_sample else nn.Identity()
        self.out = nn.Conv2d(self.inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised pairwise matrix f: (N, HW, HW') over positions, each row summing to 1."""
        query = self.theta(x).flatten(2).transpose(1, 2)  # N, HW, C'
        key = self.pool(self.phi(x)).flatten(2)  # N, C', HW'
        energy = torch.bmm(query, key)  # N, HW, HW'
        if self.scale:
            energy = energy * self.inner**-0.5
        return energy.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        value = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # N, HW', C'
        y = torch.bmm(self.attention(x), value)  # N, HW, C'
        y = y.transpose(1, 2).reshape(n, self.inner, h, w)
        return x + self.bn(self.out(y))
