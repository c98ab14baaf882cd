"""Spatial Transformer (STN).

Jaderberg, Simonyan, Zisserman, Kavukcuoglu. "Spatial Transformer Networks", NeurIPS 2015.
https://arxiv.org/abs/1506.02025

A localisation net regresses the 6 parameters theta of a 2D affine transform from the feature map;
the grid generator maps every output pixel's normalised coordinates (x, y in [-1, 1]) through theta
to a source location, and a bilinear sampler reads the input there, zero outside (Sec. 3.1-3.3,
Eq. 1 and 5). The same transform applies to every channel; the output keeps the input's size.

Localisation net (the paper fixes none; its image experiments use a few conv + max-pool layers and
fully connected layers): max pool 2, conv 3x3 (C -> 32) + ReLU, max pool 2, conv 3x3 (32 -> 32) +
ReLU, adaptive average pool to 4x4, FC (512 -> 64) + ReLU, FC (64 -> 6). Pooling first keeps it
cheap on large early maps (about 0.12 GFLOPs on ResNet-50's 64 x 112 x 112 stem output). The last FC starts with
zero weights and the identity transform as its bias, so the module starts as the identity.

Identity at init, exactly: the sampler is written out (gather of the four neighbours) instead of
``F.affine_grid`` + ``F.grid_sample``. It computes the same thing as those two with
``align_corners=False`` (the test compares them for random theta), but it maps the output pixel grid
through theta in pixel units, where the identity transform lands exactly on integer positions with
interpolation weights exactly 1 and 0. ``F.grid_sample`` goes through normalised coordinates and
misses integers by round-off (up to ~1e-4 on a 200x250 fp32 map, for either ``align_corners``), so
it is not an exact identity.

Placement: the paper puts transformers at the input or between conv layers; there is no "input"
site role, and the built-in recipe takes the first stage (the stem output).

Reference: no pip package has an STN layer (the paper has no official code). The sampler is checked
instead against torch's ``F.affine_grid`` + ``F.grid_sample`` (align_corners=False) for random theta
(tests/plugins/test_stn.py).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import ON_MAP, HiddenWidth, PluginArgs
from plugsurgeon.plugins.registry import register_plugin, site_channels


def affine_sample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of ``x`` (N,C,H,W) on the grid ``theta`` (N,2,3) maps the output pixels to.

    Same convention as ``F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False),
    align_corners=False, padding_mode="zeros")``; the identity theta returns ``x`` exactly.
    """
    n, channels, h, w = x.shape
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    theta = theta.to(work)
    # Output pixel centres relative to the map centre, in pixels (exact: integers minus a half-integer).
    cols = torch.arange(w, dtype=work, device=x.device) - (w - 1) / 2
    rows = (torch.arange(h, dtype=work, device=x.device) - (h - 1) / 2)[:, None]
    a, b, c = (theta[:, 0, k, None, None] for k in range(3))
    d, e, f = (theta[:, 1, k, None, None] for k in range(3))
    # Normalised coordinates scale x by 2/W and y by 2/H, so the off-diagonal terms pick up W/H, H/W.
    u = a * cols + (b * (w / h)) * rows + (c * (w / 2) + (w - 1) / 2)
    v = (d * (h / w)) * cols + e * rows + (f * (h / 2) + (h - 1) / 2)
    x0, y0 = torch.floor(u), torch.floor(v)
    wx1, wy1 = u - x0, v - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    flat = x.reshape(n, channels, h * w)
    out: torch.Tensor | None = None
    for dy, dx, weight in ((0, 0, wy0 * wx0), (0, 1, wy0 * wx1), (1, 0, wy1 * wx0), (1, 1, wy1 * wx1)):
        xs, ys = x0 + dx, y0 + dy
        inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
        index = ys.clamp(0, h - 1).long() * w + xs.clamp(0, w - 1).long()
        values = flat.gather(2, index.reshape(n, 1, h * w).expand(n, channels, h * w))
        term = values * (weight * inside).to(x.dtype).reshape(n, 1, h * w)
        out = term if out is None else out + term
    assert out is not None  # four corners were added
    return out.reshape(n, channels, h, w)


class STNArgs(PluginArgs):
    loc_channels: HiddenWidth = Field(32, description="channels of the localisation net's convs")
    loc_pool: Annotated[int, Field(ge=1, le=64), ON_MAP] = Field(4, description="side of the adaptive pool before its FC layers")
    loc_hidden: HiddenWidth = Field(64, description="units of the localisation net's hidden FC layer")


@register_plugin(
    "stn",
    roles=("stage", "backbone", "residual.output"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=True,
    paper="Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015, arXiv:1506.02025",
    year=2015,
    summary="localisation net -> 2x3 affine theta (identity at init) -> bilinear resampling of the map",
    args=STNArgs,
)
class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, loc_channels: int = 32, loc_pool: int = 4, loc_hidden: int = 64) -> None:
        super().__init__()
        if min(channels, loc_channels, loc_pool, loc_hidden) < 1:
            raise ValueError("channels, loc_channels, loc_pool and loc_hidden must be positive")
        self.localisation = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(channels, loc_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(loc_channels, loc_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(loc_pool),
            nn.Flatten(),
            nn.Linear(loc_channels * loc_pool * loc_pool, loc_hidden),
            nn.ReLU(inplace=True),
        )
        self.theta = nn.Linear(loc_hidden, 6)
        nn.init.zeros_(self.theta.weight)
        with torch.no_grad():
            self.theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The N x 2 x 3 affine transforms the localisation net predicts for ``x``."""
        return self.theta(self.localisation(x)).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return affine_sample(x, self.transform(x))
