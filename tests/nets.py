"""Tiny hand-made networks whose sites are known by construction; they keep the suite fast."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + skip)


class TinyResNet(nn.Module):
    """stem (stride 2) -> maxpool -> stage 2 (2 blocks, 16ch) -> stage 3 (2 blocks, 32ch, strided) -> pool -> fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BranchyNet(nn.Module):
    """Inception-like: parallel branches concatenated, no residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.b1 = nn.Conv2d(8, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1))
        self.b5 = nn.Conv2d(8, 8, 5, padding=2)
        self.down = nn.AvgPool2d(2)
        self.out = nn.Conv2d(24, 16, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x)], dim=1)
        return self.out(self.down(x))


class TinyFPN(nn.Module):
    """A residual backbone (C3..C5) and a top-down feature pyramid; returns the levels P3..P5."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c3 = BasicBlock(16, 16, 2)
        self.c4 = BasicBlock(16, 32, 2)
        self.c5 = BasicBlock(32, 64, 2)
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (16, 32, 64)])
        self.smooth = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(3)])

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        top = self.lateral[2](c5)
        p5 = self.smooth[2](top)
        m4 = self.lateral[1](c4) + F.interpolate(top, size=c4.shape[-2:], mode="nearest")
        p4 = self.smooth[1](m4)
        m3 = self.lateral[0](c3) + F.interpolate(m4, size=c3.shape[-2:], mode="nearest")
        p3 = self.smooth[0](m3)
        return OrderedDict(p3=p3, p4=p4, p5=p5)


class UntraceableNet(nn.Module):
    """The root's forward branches on data, so fx cannot trace it whole; its backbone traces."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyResNet()
        self.backbone.head = nn.Identity()

    def forward(self, x):
        features = self.backbone(x)
        if features.sum() > 0:  # data-dependent: fx gives up here
            return features * 2
        return features


class TrainOnlyFailure(nn.Module):
    """Runs in eval mode only: an edit or an original that breaks in train mode."""

    def forward(self, x):
        if self.training:
            raise RuntimeError("simulated train-mode failure")
        return x


class ToFloat64(nn.Module):
    """Keeps the shape, changes the dtype."""

    def forward(self, x):
        return x.double()


class SharedConvNet(nn.Module):
    """One conv called twice, each time followed by a different BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.bn_b = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters: a fresh BN is nearly an identity and hides bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


class SharedActBlock(nn.Module):
    """A conv block whose activation is one instance shared by every block (Ultralytics' Conv.default_act)."""

    default_act = nn.SiLU()

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = self.default_act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SplitBottleneck(nn.Module):
    """forward(x, shortcut=None) with the default relied on (timm's DLA), residual inside."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cv1 = SharedActBlock(channels)
        self.cv2 = SharedActBlock(channels)

    def forward(self, x, shortcut=None):
        if shortcut is None:
            shortcut = x
        return shortcut + self.cv2(self.cv1(x))


class ForeignPatternsNet(nn.Module):
    """The patterns of networks written elsewhere: a root forward taking *args/**kwargs, list(x.chunk())
    (C2f), a module called without its default argument, shared activation instances, and a head that
    branches on shapes in Python (Ultralytics' Detect in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SharedActBlock(8)
        self.stem.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.blocks = nn.ModuleList([SplitBottleneck(4), SplitBottleneck(4)])
        self.head = ShapeCheckingHead(8)

    def forward(self, x, *args, **kwargs):
        y = list(self.stem(x).chunk(2, 1))
        y.extend(block(y[-1]) for block in self.blocks)
        return self.head(torch.cat([y[0], y[-1]], 1))


class ShapeCheckingHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU())
        self.shape = None

    def forward(self, x):
        x = self.proj(x)
        if self.shape != x.shape:  # Python control flow on a shape: fx cannot follow it
            self.shape = x.shape
        return x.mean((2, 3))


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn(cin + cskip, cout)

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(torch.cat([x, skip], 1))


class TinyUNet(nn.Module):
    """A U-Net: the decoder builds each level from the one before and gets the skips as arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.ModuleList([conv_bn(3, 8), conv_bn(8, 16, stride=2), conv_bn(16, 32, stride=2)])
        self.up = nn.ModuleList([UpBlock(32, 16, 16), UpBlock(16, 8, 8)])
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skips = []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
        x = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        return self.head(x)


def chatty_tiny_resnet() -> nn.Module:
    """A factory that prints while it builds, as Ultralytics' does (its layer table): the CLI's
    `--json` output must stay JSON."""
    import os
    import sys

    print("building a TinyResNet")
    sys.stdout.flush()
    os.write(1, b"from the descriptor\n")
    return TinyResNet()
