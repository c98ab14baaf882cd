"""Layout inference: which values are N,C,H,W. Residual merges, stages and the neck are only looked for
on N,C,H,W maps, so a value wrongly taken for something else hides every site behind it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.sites.graphview import NCHW, GraphView
from tests.sites.shapes_nets import (
    ChannelsFirstNormBlock,
    EcaBlock,
    LayerScaleBlock,
    PatternNet,
    ShuffleBlock,
    SplitBlock,
)

SHAPE = (2, 3, 32, 32)


def view_of(model: nn.Module, shape=SHAPE) -> GraphView:
    (part,) = ps.trace(model, shape).parts
    return GraphView(part, model)


def nodes(view: GraphView, op: str, target) -> list:
    return [n for n in view.nodes if n.op == op and n.target == target]


def test_channel_shuffle_keeps_nchw_through_the_5d_view():
    view = view_of(PatternNet(ShuffleBlock()))
    five_d, back = nodes(view, "call_method", "view")
    assert view.layout(five_d) == ("N", "C", "C", "H", "W")
    assert view.layout(nodes(view, "call_method", "transpose")[0]) == ("N", "C", "C", "H", "W")
    assert view.layout(back) == NCHW


def test_split_pieces_slices_and_concat_stay_nchw():
    view = view_of(PatternNet(SplitBlock()))
    import operator

    pieces = [n for n in nodes(view, "call_function", operator.getitem) if view.shape(n) is not None]
    assert len(pieces) == 3 and all(view.nchw(p) for p in pieces)  # two chunk pieces and the x[:, :c] slice
    assert all(view.nchw(n) for n in nodes(view, "call_function", torch.cat))


def test_broadcast_gate_does_not_decide_the_layout():
    view = view_of(PatternNet(EcaBlock()))
    import operator

    (gated,) = nodes(view, "call_function", operator.mul)
    (gate,) = [n for n in nodes(view, "call_method", "view") if view.shape(n) == (2, 16, 1, 1)]
    assert view.layout(gate) != NCHW  # (N,C,1,1) from a view of a 1-D conv's output: unknown...
    assert view.nchw(gated)  # ...and the gated branch is still N,C,H,W


def test_channels_last_inside_permutes_and_layer_scale():
    view = view_of(PatternNet(LayerScaleBlock()))
    to_last, to_first = [n for n in view.nodes if n.op == "call_method" and n.target == "permute"]
    assert view.layout(to_last) == ("N", "H", "W", "C")
    (norm,) = [n for n in view.nodes if isinstance(view.module(n), nn.LayerNorm)]
    assert view.layout(norm) == ("N", "H", "W", "C")  # nn.LayerNorm keeps its input's layout
    assert view.layout(to_first) == NCHW


def test_channels_first_layernorm_keeps_nchw():
    view = view_of(PatternNet(ChannelsFirstNormBlock()))
    (norm,) = [n for n in view.nodes if isinstance(view.module(n), nn.LayerNorm)]
    assert view.nchw(norm)


def test_functional_channels_first_norm_keeps_nchw():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.weight = nn.Parameter(torch.ones(8))

        def forward(self, x):
            x = self.conv(x)
            y = F.layer_norm(x.permute(0, 2, 3, 1), (8,), self.weight).permute(0, 3, 1, 2)
            return x + F.relu(y)

    view = view_of(Net())
    (add,) = [n for n in view.nodes if n.name == "add"]
    assert view.nchw(add)


def test_tokens_reshaped_back_to_a_map_are_nchw_again():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            x = self.conv(x)
            n, c, h, w = x.shape
            tokens = x.reshape(n, c, h * w).permute(0, 2, 1)  # N, H*W, C
            y = self.fc(tokens).reshape(n, h, w, c).permute(0, 3, 1, 2)
            return x + F.gelu(y)

    view = view_of(Net())
    (add,) = [n for n in view.nodes if n.name == "add"]
    assert view.nchw(add)
    flat = next(n for n in view.nodes if n.op == "call_method" and n.target == "reshape")
    assert view.layout(flat) == ("N", "C", "HW")


def test_a_reshape_that_folds_space_into_the_batch_is_not_nchw():
    class Windows(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, h // 2, w // 2)

    view = view_of(Windows())
    out = [n for n in view.nodes if n.op == "call_method" and n.target == "reshape"][-1]
    assert view.shape(out) == (8, 3, 16, 16) and not view.nchw(out)


@pytest.mark.parametrize(("block", "merges"), [
    (ShuffleBlock, 1), (EcaBlock, 1), (LayerScaleBlock, 1), (ChannelsFirstNormBlock, 1), (SplitBlock, 1),
])
def test_layout_preserving_blocks_keep_their_residual_merge(block, merges):
    sites = ps.find_sites(PatternNet(block(), block()), "residual.branch", input_shape=SHAPE)
    assert len(sites) == 2 * merges


class _WindowAttentionThenConvBlock(nn.Module):
    """MaxViT's layer in miniature: a residual conv block, then a grid-partitioned channels-last token
    mixer (reshape to windows, permute, swap axes, Linear, and the exact reverse back to N,C,H,W)."""

    def __init__(self, c: int = 8, p: int = 4) -> None:
        super().__init__()
        self.p = p
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
        self.norm = nn.LayerNorm(c)
        self.mix = nn.Linear(c, c)

    def forward(self, x):
        x = self.body(x) + x  # the residual merge that the fork's layout must not hide
        n, c, h, w = x.shape
        p = self.p
        t = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p, c)
        t = t.swapaxes(-2, -3)  # grid attention: tokens strided across the map
        t = t + F.gelu(self.mix(self.norm(t)))
        t = t.swapaxes(-2, -3)
        t = t.reshape(n, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
        return t


def test_a_window_partition_and_its_reverse_give_nchw_back():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.blocks = nn.Sequential(_WindowAttentionThenConvBlock(), _WindowAttentionThenConvBlock())

        def forward(self, x):
            return self.blocks(self.stem(x))

    view = view_of(Net())
    reshapes = [n for n in view.nodes if n.op == "call_method" and n.target == "reshape"]
    windows, back = reshapes[1], reshapes[3]
    assert view.shape(back) == (2, 8, 32, 32) and view.nchw(back)
    assert not view.nchw(windows)  # (N, windows, positions, C): no N,C,H,W map
    # The second block's conv merge reads the first block's departitioned output: both merges found.
    assert len(ps.find_sites(Net(), "residual.branch", input_shape=SHAPE)) == 2
