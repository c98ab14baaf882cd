"""Where the extractor, its stages and the pyramid's levels are when the model's shape is less plain: a second
extractor beside the first (YOLOv9-E), a head that makes tensors like its inputs (anchors), a head that returns
its logits at a level's size (a semantic-segmentation head)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from tests.sites.shapes_nets import conv_bn_act

SHAPE = (1, 3, 64, 64)
WIDTHS = (8, 16, 32)


class Pieces(nn.Module):
    """A 1x1 conv whose output is cut into one piece per level of the other extractor (YOLOv9's CBLinear)."""

    def __init__(self, cin: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.widths = list(widths)
        self.conv = nn.Conv2d(cin, sum(widths), 1)

    def forward(self, x):
        return self.conv(x).split(self.widths, dim=1)


class Fuse(nn.Module):
    """Pieces of the other extractor resized to this map's size and summed with it (YOLOv9's CBFuse)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, pieces, x):
        resized = [F.interpolate(p[self.index], size=x.shape[2:], mode="nearest") for p in pieces]
        return torch.sum(torch.stack([*resized, x]), dim=0)


class TwoExtractors(nn.Module):
    """An auxiliary extractor hands each of its levels, cut into pieces, to every shallower level of the main one."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.ModuleList([conv_bn_act(3, 8, stride=2), conv_bn_act(8, 16, stride=2), conv_bn_act(16, 32, stride=2)])
        self.pieces = nn.ModuleList([Pieces(w, WIDTHS[:k + 1]) for k, w in enumerate(WIDTHS)])
        self.main = nn.ModuleList([conv_bn_act(3, 8, stride=2), conv_bn_act(8, 16, stride=2), conv_bn_act(16, 32, stride=2)])
        self.fuse = nn.ModuleList([Fuse(j) for j in range(3)])
        self.fc = nn.Linear(32, 10)

    def forward(self, image):
        x, cut = image, []
        for layer, pieces in zip(self.aux, self.pieces, strict=True):
            x = layer(x)
            cut.append(pieces(x))
        x = image
        for j, (layer, fuse) in enumerate(zip(self.main, self.fuse, strict=True)):
            x = fuse(cut[j:], layer(x))
        return self.fc(x.mean((2, 3)))


def test_a_second_extractor_beside_the_first_leaves_the_stages_of_the_first():
    # Every path from the image also runs through the auxiliary extractor, so below the top no map is one that
    # every path passes through; the main extractor's own maps (each fusion's sum) still end its stages.
    stages = ps.find_sites(TwoExtractors(), "stage", input_shape=SHAPE)
    assert [(s.owner, s.total_stride, s.channels) for s in stages] == [("fuse.0", 2, 8), ("fuse.1", 4, 16), ("fuse.2", 8, 32)]
    assert [s.owner for s in ps.find_sites(TwoExtractors(), "backbone", input_shape=SHAPE)] == ["fuse.2"]


class AnchoredHead(nn.Module):
    """Per-level predictions, with per-position strides and a grid made like the maps (a detection head's anchors)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.pred = nn.ModuleList([nn.Conv2d(w, 6, 1) for w in widths])

    def forward(self, levels):
        out, strides, grids = [], [], []
        for level, pred in zip(levels, self.pred, strict=True):
            h, w = level.shape[2:]
            out.append(pred(level).flatten(2))
            strides.append(level.new_full((h * w, 1), 64 / w))
            grids.append(torch.arange(w).type_as(level).repeat(h))
        return torch.cat(out, 2), torch.cat(strides), torch.cat(grids)


class TinyPAN(nn.Module):
    """Top-down then bottom-up over two maps, read by an anchored head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_act(3, 8, stride=2)
        self.c3 = conv_bn_act(8, 16, stride=2)  # stride 4
        self.c4 = conv_bn_act(16, 32, stride=2)  # stride 8
        self.c5 = conv_bn_act(32, 32, stride=2)  # stride 16
        self.up = nn.Upsample(scale_factor=2.0)
        self.p4 = conv_bn_act(64, 32)
        self.down = conv_bn_act(32, 32, stride=2)
        self.p5 = conv_bn_act(64, 32)
        self.head = AnchoredHead((32, 32))

    def forward(self, x):
        c4 = self.c4(self.c3(self.stem(x)))
        c5 = self.c5(c4)
        p4 = self.p4(torch.cat([self.up(c5), c4], 1))
        p5 = self.p5(torch.cat([self.down(p4), c5], 1))
        return self.head([p4, p5])


def test_tensors_made_like_a_map_do_not_read_it():
    # The anchors' strides (new_full) and grid (type_as) take only a level's dtype and size: they pool nothing away,
    # so the extractor ends where the top-down path starts and the levels are the two maps the head reads.
    model = TinyPAN()
    assert [s.path for s in ps.find_sites(model, "backbone", input_shape=SHAPE)] == ["c5.2"]
    assert [s.path for s in ps.find_sites(model, "neck.level", input_shape=SHAPE)] == ["p4.2", "p5.2"]


class SemanticFPN(nn.Module):
    """A top-down pyramid whose finest level feeds a classifier that returns logits at that level's size."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Sequential(conv_bn_act(3, 8, stride=2), conv_bn_act(8, 16, stride=2))  # stride 4
        self.c3 = conv_bn_act(16, 32, stride=2)  # stride 8
        self.c4 = conv_bn_act(32, 32, stride=2)  # stride 16
        self.up = nn.Upsample(scale_factor=2.0)
        self.p3 = conv_bn_act(64, 32)
        self.p2 = conv_bn_act(48, 16)
        self.classifier = nn.Sequential(conv_bn_act(16, 16), nn.Conv2d(16, 5, 1))

    def forward(self, x):
        c2 = self.c2(x)
        c3 = self.c3(c2)
        p3 = self.p3(torch.cat([self.up(self.c4(c3)), c3], 1))
        p2 = self.p2(torch.cat([self.up(p3), c2], 1))
        return self.classifier(p2)


def test_the_logits_a_model_returns_are_no_level():
    levels = ps.find_sites(SemanticFPN(), "neck.level", input_shape=SHAPE)
    assert [(s.path, s.total_stride) for s in levels] == [("c4.2", 16), ("p3.2", 8), ("p2.2", 4)]


class TextHead(nn.Module):
    """Reads the levels and text features; branches on their batch (fx cannot follow), as YOLO-World's head."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.pred = nn.ModuleList([nn.Conv2d(w, 8, 1) for w in widths])

    def forward(self, levels, text):
        if text.shape[0] != levels[0].shape[0]:
            text = text.expand(levels[0].shape[0], -1)
        return [torch.einsum("nchw,nc->nhw", pred(level), text) for level, pred in zip(levels, self.pred, strict=True)]


class Concat(nn.Module):
    def forward(self, maps):
        return torch.cat(maps, 1)


class RowOfLayers(nn.Module):
    """A row of layers, merges included (Ultralytics' way), whose own forward branches on the batch too, so it is
    traced layer by layer: no graph holds what the head reads."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([conv_bn_act(3, 8, stride=2), conv_bn_act(8, 16, stride=2), conv_bn_act(16, 32, stride=2),
                                     nn.Upsample(scale_factor=2.0), Concat(), conv_bn_act(48, 16),
                                     conv_bn_act(16, 16, stride=2), Concat(), conv_bn_act(48, 32)])
        self.head = TextHead((16, 32))
        self.register_buffer("text", torch.randn(1, 8))

    def forward(self, x):
        text = self.text if self.text.shape[0] == x.shape[0] else self.text.expand(x.shape[0], -1)
        stem, c3, c4, up, cat3, p3, down, cat4, p4 = self.layers
        c3_out = c3(stem(x))
        c4_out = c4(c3_out)
        p3_out = p3(cat3([up(c4_out), c3_out]))
        p4_out = p4(cat4([down(p3_out), c4_out]))
        return self.head([p3_out, p4_out], text)


def test_levels_a_head_reads_outside_every_graph():
    model = RowOfLayers().eval()
    traced = ps.trace(model, SHAPE)
    assert "" not in [p.path for p in traced.parts] and "head" not in [p.path for p in traced.parts]
    levels = ps.find_sites(traced, "neck.level")
    assert [(s.path, s.total_stride, s.extra) for s in levels] == [("layers.5.2", 4, ()), ("layers.8.2", 8, ())]
    # An insertion there edits the layer that returns the level; the model still runs, at another batch too.
    se = ps.apply(model, ps.Recipe(name="se", steps=[ps.Step(plugin="se", at="neck.level")]), input_shape=SHAPE)
    assert sorted(e.module for e in se.report.edits) == ["layers.5.se", "layers.8.se"]
    assert [o.shape for o in se.model(torch.randn(2, 3, 64, 64))] == [(2, 16, 16), (2, 8, 8)]
    # ASFF reads the other levels, which no graph holds with this one: refused, with the reason.
    with pytest.raises(ps.SiteError, match="no forward that surgery can edit reads the other levels"):
        ps.apply(model, ps.Recipe(name="asff", steps=[ps.Step(plugin="asff", at="neck.level")]), input_shape=SHAPE, dry_run=True)
