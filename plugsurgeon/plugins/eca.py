"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu. "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020. https://arxiv.org/abs/1910.03151

Global average pooling gives one value per channel; a 1-D convolution (no bias, zero padding,
``k`` taps) slides along that channel vector, so each channel's weight comes from its ``k``
neighbours without any dimensionality reduction; sigmoid; channel-wise rescaling.

Defaults: the kernel size adapts to the channel count, ``k = |log2(C)/gamma + b/gamma|_odd`` with
gamma = 2, b = 1 (Eq. 12), where ``|t|_odd`` is the nearest odd number; a tie (t even, e.g. C = 2048
gives t = 6) goes up, as in the authors' code (floor, then +1 if even). On ResNet-50's bottleneck
outputs that is k = 5, 5, 5, 7 for C = 256, 512, 1024, 2048. ``kernel_size`` overrides it.
Placed like SE, at the end of the residual branch before the add, in every bottleneck.

Parameters: the paper quotes 80 extra parameters for ECA-Net50; that number comes from the kernel
sizes its released training command uses (``--ksize 3557``: k = 3, 5, 5, 7 per stage, so
3*3 + 4*5 + 6*5 + 3*7 = 80). Eq. 12 applied to the bottleneck outputs gives 5, 5, 5, 7 and 86
parameters; recipe steps with ``kernel_size`` per stage reproduce the 80 exactly.
Not identity at init: the sigmoid gate starts near 0.5, as in the paper.

Reference: timm's ``EcaModule`` (timm.layers), the same function and kernel size for every C >= 8
(tests/plugins/test_reference_equivalence.py); the authors' code is BangguWu/ECANet.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import ODD, PluginArgs, kernel_range
from plugsurgeon.plugins.registry import register_plugin, site_channels
from plugsurgeon.sites.site import Site


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """Eq. 12: the odd kernel size nearest to log2(C)/gamma + b/gamma (ties go up, as the authors' code)."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


class ECAArgs(PluginArgs):
    kernel_size: Annotated[int, kernel_range(1023), ODD] | None = Field(None, description="taps of the 1-D conv across channels; None: Eq. 12 from C, gamma, b")
    gamma: float = Field(2.0, ge=0.5, le=16.0, description="gamma of Eq. 12 (the paper's 2)")
    b: float = Field(1.0, ge=-16.0, le=16.0, description="b of Eq. 12 (the paper's 1)")

    site_bounds = {"kernel_size": "at most 2 x the site's channels - 1, as is the kernel Eq. 12 gives from gamma and b"}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        # Beyond 2C - 1 taps every output channel already sees every input channel; more only read padding.
        bound = 2 * site.channels - 1
        if self.kernel_size is not None:
            if self.kernel_size > bound:
                self.refuse("kernel_size", self.kernel_size, f"more than {bound}", site,
                            f"the site has {site.channels} channels, and a 1-D kernel over them wider than 2C - 1 reads only padding")
            return
        k = eca_kernel_size(site.channels, self.gamma, self.b)
        if k > max(bound, 1):
            self.refuse("gamma", self.gamma, f"with b = {self.b}, a kernel of {k} taps, more than {bound}", site,
                        f"Eq. 12 on the site's {site.channels} channels gives {k}; a kernel wider than 2C - 1 reads only padding")


@register_plugin(
    "eca",
    roles=("residual", "stage", "backbone", "conv", "neck.level"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Wang et al., ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks, CVPR 2020, arXiv:1910.03151",
    year=2020,
    summary="channel attention: pooled descriptor -> 1-D conv across channels (adaptive k, no reduction) -> sigmoid gate",
    args=ECAArgs,
)
class ECA(nn.Module):
    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {k}")
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # N, C
        # The channel vector is the 1-D signal: N, 1 (one "channel" for the conv), C (its length).
        mixed = self.conv(pooled.unsqueeze(1)).squeeze(1)
        return x * torch.sigmoid(mixed)[:, :, None, None]
