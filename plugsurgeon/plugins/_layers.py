"""Building blocks shared by the plugins: one conv + norm + activation.

``ConvNormAct`` is the one conv-norm-activation block of the catalog (ASPP, SPP/SPPF, PPM, BAM, ASFF,
RFB, RFB-s and SSH build theirs with it). It is an ``nn.Sequential`` of the conv (child ``0``), the
norm (``1``, if any) and the activation (next index, if any), so its state-dict keys are those of the
plain ``nn.Sequential(conv, bn, act)`` the plugins were first written with (``project.0.weight``,
``project.1.running_mean``), checkpoints saved before keep loading, the tracer follows it as it follows
any ``nn.Sequential``, and deploy folds its norm into its conv. A plugin that keeps its layers in one flat
``nn.Sequential`` (BAM's spatial branch) splices them in with ``*ConvNormAct(...)``.

The norm and the activation are arguments (``norm_layer``, ``act_layer``), not strings: any callable
building a module, ``functools.partial`` for their options.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

#: The default activation of ``ConvNormAct``: an in-place ReLU, as the papers' conv-BN-ReLU.
ReLU = partial(nn.ReLU, inplace=True)


class ConvNormAct(nn.Sequential):
    """A 2-D conv with "same" padding, then a norm layer, then an activation; either may be left out.

    Args:
        in_channels: Channels in.
        out_channels: Channels out (and the norm's features).
        kernel_size: The conv's kernel, one size or (height, width).
        stride: The conv's stride.
        dilation: The conv's dilation.
        groups: The conv's groups.
        padding: The conv's padding; None pads ``dilation * (k - 1) // 2`` per side, which keeps the
            map size for odd kernels at stride 1.
        bias: Whether the conv has a bias; None gives it one only when no norm follows (a norm's
            shift makes a bias redundant).
        norm_layer: Builds the norm from the channel count, e.g. ``nn.BatchNorm2d`` (the default) or
            ``partial(nn.GroupNorm, 8)``; None for no norm. It must accept ``device`` and ``dtype``.
        act_layer: Builds the activation without arguments, e.g. ``partial(nn.LeakyReLU, 0.1)``; None
            for no activation. The default is an in-place ReLU.
        device: Where the conv's and the norm's tensors are created.
        dtype: Their floating point type.

    Examples:
        >>> block = ConvNormAct(64, 16, 3, dilation=2)
        >>> [name for name, _ in block.named_children()]
        ['0', '1', '2']
        >>> block(torch.zeros(1, 64, 8, 8)).shape
        torch.Size([1, 16, 8, 8])
        >>> ConvNormAct(8, 8, 1, norm_layer=None, act_layer=None)[0].bias is not None
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool | None = None,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] | None = ReLU,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if padding is None:
            padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=norm_layer is None if bias is None else bias, device=device, dtype=dtype),
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels, device=device, dtype=dtype))
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)
