"""Shared pieces of the context plugins (ASPP, SPP/SPPF, PPM): conv + BatchNorm + ReLU, and the site inference."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """A bias-free conv ("same" padding for odd kernels), BatchNorm and ReLU; conv and BN fold for deploy."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
