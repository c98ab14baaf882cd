"""Semantic Embedding Branch (SEB) of ExFuse.

Zhang, Zhang, Peng, Xue, Sun. "ExFuse: Enhancing Feature Fusion for Semantic Segmentation", ECCV 2018.
https://arxiv.org/abs/1804.03821

SEB brings semantic information into a low-level feature before it is fused with the decoder path:
the higher-level feature goes through a 3x3 conv, is upsampled (bilinear) to the low-level feature's
size, and is MULTIPLIED element-wise into the low-level feature.

Placement: a top-down merge of a feature pyramid (role neck.merge). The site is the merge's lateral
(low-level) input; the extra input is the top-down (higher-level) feature before upsampling. The
plugin's output replaces the lateral input, so the merge becomes ``lateral * SEB(high) + up(high)``.

Deliberate differences from the paper:
- ExFuse multiplies the low-level feature by the embeddings of *all* higher levels; a neck.merge
  site offers the one level directly above (which in an FPN already carries all levels above it), so
  one 3x3 conv and one product per merge.
- Identity at init: the multiplier is written ``1 + up(conv(high))`` with the 3x3 conv starting at
  weight 0 and bias 0. That is the paper's ``up(conv(high))`` with the conv bias shifted by 1
  (interpolation preserves constants), so it learns the same functions, and at init the multiplier
  is exactly 1 (interpolating zeros gives exact zeros, where interpolating a bias of 1 is only 1 to
  within round-off): the model is unchanged right after surgery. The conv's weight gets gradient
  from the first step.

Reference: the paper only (ExFuse has no official release, and no pip package has an SEB). Checked
instead by hand-computed bilinear values and the exact identity at init (tests/plugins/test_seb.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins.args import PluginArgs
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site


def _channels(site: Site, _module: nn.Module | None):
    if len(site.extra_shapes) != 1 or len(site.extra_shapes[0]) != 4:
        raise ValueError(f"SEB reads one higher-level N,C,H,W feature, the site offers {list(site.extra_shapes)}")
    return {"channels": site.channels, "high_channels": int(site.extra_shapes[0][1])}


class SEBArgs(PluginArgs):
    mode: Literal["bilinear", "nearest"] = Field("bilinear", description="interpolation that upsamples the embedding")


@register_plugin(
    "seb",
    roles=("neck.merge",),
    mode="after",
    infer=_channels,
    structural=("channels", "high_channels"),
    identity_at_init=True,
    paper="Zhang et al., ExFuse: Enhancing Feature Fusion for Semantic Segmentation, ECCV 2018, arXiv:1804.03821",
    year=2018,
    summary="higher level -> 3x3 conv -> bilinear upsample, multiplied into the lower level (multiplier starts at exactly 1)",
    args=SEBArgs,
    inputs="site+extra",
)
class SemanticEmbeddingBranch(nn.Module):
    def __init__(self, channels: int, high_channels: int, mode: str = "bilinear") -> None:
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv2d(high_channels, channels, 3, padding=1)
        assert self.conv.bias is not None  # made with a bias
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def embedding(self, high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The multiplier: 1 + the 3x3 conv of the higher level, upsampled to ``size``."""
        out = self.conv(high)
        if self.mode == "bilinear":
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        else:
            out = F.interpolate(out, size=size, mode="nearest")
        return 1.0 + out

    def forward(self, x: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return x * self.embedding(high, (x.shape[-2], x.shape[-1]))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
