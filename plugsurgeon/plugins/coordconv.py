"""CoordConv: a convolution that also sees where it is.

Liu, Lehman, Molino, Such, Frank, Sergeev, Yosinski. "An intriguing failing of convolutional neural
networks and the CoordConv solution", NeurIPS 2018. https://arxiv.org/abs/1807.03247

Two coordinate channels are concatenated to the input before the conv (Sec. 4, Fig. 3): x (varying
along the width) and y (along the height), each spanning [-1, 1] over the input map; optionally a
third, the distance from the centre, r = sqrt(x^2 + y^2) / sqrt(2), in [0, 1].

Defaults: with_r False (the paper's base form). Stride, padding (and its mode), dilation and groups
are the replaced conv's; the coordinate channels are padded like the input.

Deliberate differences:
- The replaced conv keeps its ``weight`` and ``bias`` unchanged (same names and shapes, so
  pretrained checkpoints load); the kernel for the coordinate channels is a separate parameter,
  ``coord_weight`` (C_out, 2 or 3, k, k), starting at zero, so the block is the replaced conv at init.
  A conv over [input, coords] is the sum of a conv over the input and one over the coordinates, which
  is how it is computed; the coordinate conv runs once per call on a 1-image map and broadcasts.
- For a grouped conv every group sees the coordinate channels (concatenation is not defined there).
- Placement: the paper's ImageNet ResNet-50 adds one extra 1x1 CoordConv layer (8 channels, with the
  radius channel) in front of the network; the built-in recipe instead makes the network's first conv
  a CoordConv (with the radius channel), which adds no layer and keeps the model's function at init.

Reference: the authors' TensorFlow release (uber-research/CoordConv on GitHub; no pip package has a
PyTorch CoordConv). Checked instead: the block equals a conv over [input, coords] and the coordinate
channels' orientation (tests/plugins/test_coordconv.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import KeepsConvWeights, replaced_conv
from plugsurgeon.plugins.args import PluginArgs
from plugsurgeon.plugins.registry import register_plugin


class CoordConvArgs(PluginArgs):
    with_r: bool = Field(False, description="add the radius channel r = sqrt(x^2 + y^2) / sqrt(2)")


@register_plugin(
    "coordconv",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=True,
    paper="Liu et al., An intriguing failing of convolutional neural networks and the CoordConv solution, NeurIPS 2018, arXiv:1807.03247",
    year=2018,
    summary="conv over the input plus x/y (and optional radius) coordinate channels; zero weights on them at init",
    args=CoordConvArgs,
)
class CoordConv(KeepsConvWeights):
    def __init__(self, source: nn.Conv2d, with_r: bool = False) -> None:
        super().__init__(source)
        self.with_r = bool(with_r)
        channels = 3 if with_r else 2
        self.coord_weight = nn.Parameter(torch.zeros(self.out_channels, channels, *self.kernel_size,
                                                     device=self.weight.device, dtype=self.weight.dtype))

    def coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The coordinate channels for ``x``'s map: (1, 2 or 3, H, W); channel 0 is x, 1 is y."""
        h, w = x.shape[-2], x.shape[-1]
        ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        maps = [xx, yy]
        if self.with_r:
            maps.append(torch.sqrt(xx * xx + yy * yy) / math.sqrt(2.0))
        return torch.stack(maps)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(self.pad(x))
        coords = self.pad(self.coordinates(x))
        return out + F.conv2d(coords, self.coord_weight, None, self.stride, 0, self.dilation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, with_r={self.with_r}"
