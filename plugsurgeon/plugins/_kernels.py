"""Small shape helpers shared by the plugins that replace a convolution with a different one."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


def pair(values: Sequence[int]) -> tuple[int, int]:
    """A conv's two-element ``kernel_size``, ``stride``, ``dilation`` or ``padding`` (which torch types as
    ``tuple[int, ...]``) as the pair it is."""
    first, second = values
    return (int(first), int(second))


def clamp_groups(wanted: int, *channels: int) -> int:
    """The largest group count <= ``wanted`` that divides every one of ``channels``.

    Papers fix groups for wide layers (SKNet's 32); small nets (16 channels, a 3-channel stem)
    cannot split that many ways, so the count shrinks to the nearest that fits.
    """
    if wanted < 1:
        raise ValueError(f"groups must be positive, got {wanted}")
    common = math.gcd(*channels) if channels else wanted
    return max(g for g in range(1, min(wanted, common) + 1) if common % g == 0)


def square_odd_kernel(source: nn.Conv2d, plugin: str, smallest: int = 1) -> int:
    """The side of a square, odd kernel of at least ``smallest``, or a ValueError that says how to select one."""
    kh, kw = source.kernel_size
    if kh != kw or kh % 2 == 0 or kh < smallest:
        raise ValueError(
            f"{plugin} needs a square, odd kernel of size {smallest} or more, got {tuple(source.kernel_size)}; "
            f"select convs with `where: {{kernel: 3}}`"
        )
    return kh


def matching_padding(padding: tuple[int, int], dilation: tuple[int, int], kernel: int,
                     new_kernel: int, new_dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding that gives a (new_kernel, new_dilation) conv the output size of the (kernel, dilation) one.

    Both kernels odd: the receptive field grows by new_d * (new_k - 1) - d * (k - 1), half each side.
    """
    out = []
    for p, d, nd in zip(padding, dilation, new_dilation, strict=True):
        grow = nd * (new_kernel - 1) - d * (kernel - 1)
        if grow % 2 or p + grow // 2 < 0:
            raise ValueError(f"a {new_kernel}x{new_kernel} kernel (dilation {nd}) cannot match a {kernel}x{kernel} conv "
                             f"with padding {p} and dilation {d}")
        out.append(p + grow // 2)
    return pair(out)


def split_channels(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal chunks, the remainder going to the first chunk."""
    if parts < 1 or total < parts:
        raise ValueError(f"cannot split {total} channels into {parts} non-empty groups")
    base = total // parts
    return [base + total - base * parts] + [base] * (parts - 1)
