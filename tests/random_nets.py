"""Random CNNs for property tests: residual blocks with and without projections, plain conv layers,
pooling and concatenating branches, with random channels, kernels, strides and groups.

A network is built from a seed alone, so a failing case is reproduced from its seed.
"""

from __future__ import annotations

import random

import torch
from torch import nn


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU()] if act else []))


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int) -> None:
        super().__init__()
        mid_groups = groups if cout % groups == 0 else 1
        self.body = nn.Sequential(conv_bn_act(cin, cout, k, stride), conv_bn_act(cout, cout, k, 1, mid_groups, act=False))
        self.shortcut = conv_bn_act(cin, cout, 1, stride, act=False) if (stride != 1 or cin != cout) else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class Branches(nn.Module):
    """Two convolutions side by side, concatenated (an Inception-style merge, not a residual)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.left = conv_bn_act(cin, cout // 2, 1)
        self.right = conv_bn_act(cin, cout - cout // 2, 3)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], 1)


class RandomNet(nn.Module):
    def __init__(self, layers: list[nn.Module], channels: int, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def random_net(seed: int, size: int = 32) -> RandomNet:
    rng = random.Random(seed)
    channels = rng.choice([4, 8, 12])
    layers: list[nn.Module] = [conv_bn_act(3, channels, rng.choice([3, 5]), rng.choice([1, 2]))]
    spatial = size // (layers[0][0].stride[0])
    for _ in range(rng.randint(2, 6)):
        kind = rng.choice(["residual", "residual", "conv", "pool", "branches"])
        stride = 2 if spatial >= 8 and rng.random() < 0.3 else 1
        cout = rng.choice([channels, channels, 2 * channels]) if channels < 32 else channels
        if kind == "residual":
            layers.append(Residual(channels, cout, rng.choice([1, 3, 5]), stride, rng.choice([1, 1, 2])))
        elif kind == "conv":
            groups = channels if (rng.random() < 0.3 and cout == channels) else 1
            layers.append(conv_bn_act(channels, cout, rng.choice([1, 3]), stride, groups))
        elif kind == "pool":
            cout, stride = channels, 2 if spatial >= 8 else 1
            layers.append(rng.choice([nn.MaxPool2d, nn.AvgPool2d])(kernel_size=2 if stride == 2 else 1, stride=stride))
        else:
            layers.append(Branches(channels, cout))
            stride = 1
        channels, spatial = cout, spatial // stride
    return RandomNet(layers, channels)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    from tests.nets import randomize_batchnorm

    return randomize_batchnorm(model, seed)
