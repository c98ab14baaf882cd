"""Shared pieces for plugins that replace a convolution and keep its parameters under their names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plugsurgeon.sites.site import Site


class KeepsConvWeights(nn.Module):
    """Holds the replaced conv's ``weight`` and ``bias`` as its own, so ``layer1.0.conv2.weight``
    stays ``layer1.0.conv2.weight`` and pretrained checkpoints load into the edited model."""

    def __init__(self, source: nn.Conv2d) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        self.in_channels = source.in_channels
        self.out_channels = source.out_channels
        self.kernel_size = tuple(source.kernel_size)
        self.stride = tuple(source.stride)
        self.dilation = tuple(source.dilation)
        self.groups = source.groups
        self.padding = conv_padding(source)
        self.padding_mode = source.padding_mode
        self.weight = source.weight
        self.bias = source.bias

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph == pw == 0:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, (pw, pw, ph, ph), mode=mode)

    def conv(self, x_padded: torch.Tensor, stride=None) -> torch.Tensor:
        return F.conv2d(x_padded, self.weight, self.bias, stride if stride is not None else self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        # "same" (stride 1 only in torch): total padding d*(k-1), split evenly for odd kernels
        if any(conv.dilation[i] * (conv.kernel_size[i] - 1) % 2 for i in range(2)):
            raise ValueError("padding='same' with an even kernel pads asymmetrically; replace that conv by hand")
        return tuple(conv.dilation[i] * (conv.kernel_size[i] - 1) // 2 for i in range(2))
    return (int(padding[0]), int(padding[1]))


def replaced_conv(site: Site, module: nn.Module | None) -> dict:
    return {"source": module}
