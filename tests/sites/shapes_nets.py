"""Tiny networks, each built around one layout or residual pattern found in real model zoos.

Every class says which real family it stands for and how many residual merges it has by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShuffleBlock(nn.Module):
    """ShuffleNet-style channel shuffle (5-D view, transpose, view back) inside a residual body: 1 merge."""

    def __init__(self, c: int = 16, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.conv1 = conv_bn_act(c, c, 1)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.conv1(x)
        y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        return x + self.conv2(y)


class EcaBlock(nn.Module):
    """ECA gate: a (N,C,1,1) broadcast operand multiplies the branch before the shortcut add: 1 merge."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.gate = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.body(x)
        g = self.gate(y.mean((2, 3)).view(x.shape[0], 1, -1)).sigmoid().view(x.shape[0], -1, 1, 1)
        return F.relu(x + y * g.expand_as(y))


class LayerScaleBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channels-last MLP between permutes, layer scale: 1 merge.

    The channels-last add inside (a GRN-style ``t + f(t)`` in N,H,W,C) is no N,C,H,W merge.
    """

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 1e-6))

    def forward(self, x):
        t = self.norm(self.dw(x).permute(0, 2, 3, 1))
        t = self.fc1(t)
        t = t + F.gelu(t)  # channels-last: not a site
        t = self.fc2(t).permute(0, 3, 1, 2)
        return x + t * self.gamma.view(1, -1, 1, 1)


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm (torchvision's and timm's LayerNorm2d): normalises C of an N,C,H,W map."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ChannelsFirstNormBlock(nn.Module):
    """A block normalised by a channels-first LayerNorm2d: 1 merge."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.norm = LayerNorm2d(c)
        self.conv = conv_bn_act(c, c)

    def forward(self, x):
        return x + self.conv(self.norm(x))


class SplitBlock(nn.Module):
    """CSP / C2f: split along channels, a residual bottleneck on one piece (1 merge), slices and a concat."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.cv1 = conv_bn_act(c, c, 1)
        self.m1, self.m2 = conv_bn_act(c // 2, c // 2), conv_bn_act(c // 2, c // 2)
        self.cv2 = conv_bn_act(c + c // 2, c, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        b2 = b + self.m2(self.m1(b))
        y = torch.cat([a, b, b2], 1)
        return self.cv2(y[:, : y.shape[1]])


class Res2Block(nn.Module):
    """Res2Net: hierarchical adds between split pieces (not merges) inside one residual block: 1 merge."""

    def __init__(self, c: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.width = c // scale
        self.conv1 = conv_bn_act(c, c, 1)
        self.convs = nn.ModuleList([conv_bn_act(self.width, self.width) for _ in range(scale - 1)])
        self.conv3 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        pieces = torch.split(self.conv1(x), self.width, 1)
        out, sp = [], None
        for i, conv in enumerate(self.convs):
            sp = pieces[i] if i == 0 else sp + pieces[i]
            sp = conv(sp)
            out.append(sp)
        out.append(pieces[-1])
        return F.relu(self.conv3(torch.cat(out, 1)) + x)


class DfcGateBlock(nn.Module):
    """GhostNetV2: a gate computed at half resolution, upsampled, multiplies the branch: 1 merge."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.body = conv_bn_act(c, c)
        self.short = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.out = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        gate = self.short(F.avg_pool2d(x, 2, 2))
        y = self.body(x) * F.interpolate(gate.sigmoid(), size=x.shape[-2:], mode="nearest")
        return x + self.out(y)


class RepBlock(nn.Module):
    """RepVGG: 3x3-BN + 1x1-BN (+ BN(x) when ``identity``): 1 merge with the identity branch, 0 without."""

    def __init__(self, c: int = 16, identity: bool = True) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c) if identity else None

    def forward(self, x):
        y = self.dense(x) + self.one(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return F.relu(y)


class ParallelBodies(nn.Module):
    """Inception-style sum of two nonlinear branches of one input: no shortcut, 0 merges."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.a, self.b = conv_bn_act(c, c), conv_bn_act(c, c, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class TwoResolutionFusion(nn.Module):
    """HRNet: two branches of two residual blocks each, then fuse adds across resolutions:
    4 merges (the blocks), the 2 fuse adds are not merges."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.to_low = conv_bn_act(c, 2 * c, 3, 2)
        self.high = nn.ModuleList([BasicBlock(c) for _ in range(2)])
        self.low = nn.ModuleList([BasicBlock(2 * c) for _ in range(2)])
        self.low_to_high = nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.Upsample(scale_factor=2))
        self.high_to_low = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c))

    def forward(self, x):
        hi, lo = x, self.to_low(x)
        for block in self.high:
            hi = block(hi)
        for block in self.low:
            lo = block(lo)
        return F.relu(hi + self.low_to_high(lo)), F.relu(self.high_to_low(hi) + lo)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


class PatternNet(nn.Module):
    """A stem, then the given blocks, then a classifier."""

    def __init__(self, *blocks: nn.Module, c: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, c, 3, 2)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(x.mean((2, 3)))


class FusionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 8, 3, 2)
        self.fusion = TwoResolutionFusion(8)

    def forward(self, x):
        return self.fusion(self.stem(x))
