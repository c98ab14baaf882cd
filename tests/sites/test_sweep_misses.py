"""Site-finding misses found by the zoo sweep, each reproduced by a tiny net with the same structure
(or a real model at a small input where the structure is the model's own)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from tests.sites.shapes_nets import conv_bn_act

SHAPE = (1, 3, 64, 64)


def by_role(model, shape=SHAPE) -> dict[str, list]:
    found: dict[str, list] = {}
    for site in ps.find_sites(model, input_shape=shape):
        found.setdefault(site.role, []).append(site)
    return found


class ResidualBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class SameStrideFPN(nn.Module):
    """torchvision's FPN over a MobileNetV3 body: its last two returned maps have the same stride, so
    the top-down step ``F.interpolate(top, size=lateral.shape[-2:])`` keeps the size."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(3, c, stride=2), conv_bn_act(c, c, stride=2))
        self.block = ResidualBlock(c)
        self.deep = nn.Sequential(conv_bn_act(c, 2 * c), ResidualBlock(2 * c))  # same stride, more channels
        self.inner = nn.ModuleList([nn.Conv2d(c, 8, 1), nn.Conv2d(2 * c, 8, 1)])
        self.smooth = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])

    def forward(self, x):
        c4 = self.block(self.stem(x))
        c5 = self.deep(c4)
        top = self.inner[1](c5)
        lateral = self.inner[0](c4)
        merged = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return self.smooth[0](merged), self.smooth[1](top)


def test_a_same_size_fpn_merge_is_a_pyramid_merge_not_a_residual():
    found = by_role(SameStrideFPN().eval())
    assert [s.path for s in found["residual.branch"]] == ["block.body.2", "deep.1.body.2"]
    assert [s.path for s in found["neck.merge"]] == ["inner.0"]
    # Two levels of one size side by side: both are levels, each with the other as extra.
    assert sorted(s.path for s in found["neck.level"]) == ["smooth.0", "smooth.1"]
    assert all(len(s.extra) == 1 for s in found["neck.level"])
    assert [s.path for s in found["backbone"]] == ["deep.1:relu_1"]  # the second F.relu call of the traced graph
    assert "upsample" not in found  # nothing is enlarged


class PaddedBlock(nn.Module):
    """timm CPUBone's FusedMBConv: an even 2x2 kernel after an asymmetric ``ZeroPad2d((1, 0, 1, 0))``
    (or ``F.pad``) that grows the map by a pixel, then a shortcut add."""

    def __init__(self, c: int = 16, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.conv = nn.Conv2d(c, 2 * c, 2)
        self.act = nn.Hardswish()
        self.point = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        padded = F.pad(x, (1, 0, 1, 0)) if self.functional else self.pad(x)
        return x + self.point(self.act(self.conv(padded)))


def test_padding_is_no_upsample_and_keeps_the_residual_merge():
    net = nn.Sequential(conv_bn_act(3, 16, stride=2), PaddedBlock(), PaddedBlock(functional=True)).eval()
    found = by_role(net)
    assert [s.path for s in found["residual.branch"]] == ["1.point.1", "2.point.1"]
    assert "upsample" not in found


def test_timm_cpubone_nano_has_a_merge_per_residual_block():
    timm = pytest.importorskip("timm")
    if "cpubone_nano" not in timm.list_models():
        pytest.skip("this timm has no cpubone_nano")
    model = timm.create_model("cpubone_nano").eval()
    # Every add in the stages is a ResidualBlock's shortcut add (the stride-2 blocks have no shortcut).
    blocks = [name for name, m in model.named_modules() if type(m).__name__ == "ResidualBlock" and m.shortcut is not None]
    found = ps.find_sites(model, "residual.branch", input_shape=(1, 3, 128, 128))
    assert len(found) == len(blocks) == 9
    assert all(any(s.path.startswith(b + ".") for b in blocks) for s in found)


class _TopDown(nn.Module):
    def __init__(self, c_skip: int, c: int = 8) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(c_skip, c, 1)

    def forward(self, x, skip):
        return F.interpolate(x, scale_factor=2.0, mode="nearest") + self.skip_conv(skip)


class _SegBlock(nn.Module):
    """Conv-GN-ReLU, then upsampling to the finest size, as many times as needed."""

    def __init__(self, ups: int, c: int = 8) -> None:
        super().__init__()
        self.ups = ups
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(2, c), nn.ReLU())
                                    for _ in range(max(ups, 1)))

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < self.ups:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear")
        return x


class SegFPN(nn.Module):
    """smp's FPN: p5 = conv(c5), each pN = up(pN+1) + skip_conv(cN); every level then goes through its own
    segmentation block up to the finest size, and the blocks' outputs are stacked and summed."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = conv_bn_act(3, 8, stride=4)
        self.c4 = conv_bn_act(8, 16, stride=2)
        self.c5 = conv_bn_act(16, 32, stride=2)
        self.p5 = nn.Conv2d(32, 8, 1)
        self.p4 = _TopDown(16)
        self.p3 = _TopDown(8)
        self.seg = nn.ModuleList([_SegBlock(2), _SegBlock(1), _SegBlock(0)])
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        fused = torch.stack([block(p) for block, p in zip(self.seg, [p5, p4, p3], strict=True)]).sum(dim=0)
        return self.head(fused)


def test_fpn_levels_are_the_pyramid_outputs_not_the_per_level_head_blocks():
    found = by_role(SegFPN().eval())
    assert [s.path for s in found["neck.merge"]] == ["p4.skip_conv", "p3.skip_conv"]
    assert [s.path for s in found["neck.level"]] == ["p5", "p4:add", "p3:add_1"]
    assert [len(s.extra) for s in found["neck.level"]] == [2, 2, 2]
