"""Which same-shape adds are residual merges (docs/roles.md, "residual"): one tiny net per rule, then real
families counted independently with forward hooks on their block modules (class names are fine in a test:
they are the ground truth the locators must reach without them)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.nets import TinyFPN
from tests.sites.shapes_nets import (
    DfcGateBlock,
    FusionNet,
    ParallelBodies,
    PatternNet,
    RepBlock,
    Res2Block,
    SplitBlock,
)

SHAPE = (1, 3, 32, 32)


def merges(model: nn.Module, shape=SHAPE) -> list[str]:
    return [s.path for s in ps.find_sites(model, "residual.branch", input_shape=shape)]


@pytest.mark.parametrize(("blocks", "expected"), [
    ((Res2Block(),), 1),  # hierarchical adds join different split pieces: only the block's shortcut
    ((DfcGateBlock(),), 1),  # an upsampled gate multiplies the body: still a residual block
    ((RepBlock(identity=True),), 1),  # 3x3 + 1x1 + BN(x): one merge, around the identity branch
    ((RepBlock(identity=False),), 0),  # 3x3 + 1x1 only: a multi-branch conv, no shortcut
    ((ParallelBodies(),), 0),  # two nonlinear branches of one input: no shortcut
    ((SplitBlock(), SplitBlock()), 2),  # the bottleneck on a chunk piece, once per block
])
def test_residual_rule(blocks, expected):
    assert len(merges(PatternNet(*blocks))) == expected


def test_the_branch_is_the_body_and_the_sum_of_branches_is_one_merge():
    (site,) = ps.find_sites(PatternNet(RepBlock()), "residual", input_shape=SHAPE)[:1]
    assert site.path.endswith(":add")  # the 3x3 + 1x1 sum, before the identity BN is added
    (res2,) = merges(PatternNet(Res2Block()))
    assert res2 == "blocks.0.conv3.1"  # the body's last BN, not one of the hierarchical sums


def test_multi_resolution_fusion_adds_are_not_merges():
    # Two residual blocks on each branch; the two cross-resolution fuse adds are not residual.
    assert len(merges(FusionNet())) == 4


def test_pyramid_merges_are_not_residual():
    assert merges(TinyFPN(), (1, 3, 64, 64)) == ["c3.bn2", "c4.bn2", "c5.bn2"]


def test_x_plus_x_is_not_a_merge():
    class Double(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return y + y

    assert merges(Double()) == []


# -- real families ------------------------------------------------------------------------------------
def block_calls(model: nn.Module, x: torch.Tensor, names: tuple[str, ...], where=lambda m: True) -> int:
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in model.modules()
             if type(m).__name__ in names and where(m)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return len(calls)


TIMM = [
    # (model, block classes, predicate): one merge per call of such a block
    ("ecaresnet26t", ("Bottleneck",), None),  # ECA gate (N,C,1,1) on the branch
    ("cs3darknet_s", ("DarkBlock",), None),  # CSP: blocks on a split piece
    ("convnext_atto_rms", ("ConvNeXtBlock",), None),  # channels-first RmsNorm2d, layer scale
    ("convnext_atto_ols", ("ConvNeXtBlock",), None),  # overlapping stem
    ("convnextv2_atto", ("ConvNeXtBlock",), None),  # GRN adds inside (channels-last): not merges
    ("inception_next_atto", ("MetaNeXtBlock",), None),  # split + cat token mixer
    ("ghostnetv2_100", ("GhostBottleneck",), None),  # DFC attention upsamples a gate inside the block
    ("res2net50_26w_4s", ("Bottle2neck",), None),  # hierarchical adds between split pieces: not merges
    ("hrnet_w18_small", ("BasicBlock", "Bottleneck"), None),  # fuse adds across resolutions: not merges
    ("repvgg_a0", ("RepVggBlock",), lambda m: m.identity is not None),  # 3x3 + 1x1 + BN(x): with identity only
    ("dpn68", ("DualPathBlock",), None),  # shortcut = a channel slice of the concatenated dual path
]


@pytest.mark.parametrize(("name", "blocks", "where"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_residual_merges_match_block_calls(name, blocks, where):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    expected = block_calls(model, x, blocks, where or (lambda m: True))
    assert expected > 0
    assert len(merges(model, (1, 3, 64, 64))) == expected


def test_torchvision_convnext_counts_every_block():
    model = ps.load_model("convnext_tiny")
    expected = block_calls(model, torch.randn(1, 3, 64, 64), ("CNBlock",))
    assert expected == 18
    # The channels-first LayerNorm2d before each downsampling keeps N,C,H,W, so stage 1 counts too.
    assert len(merges(model, (1, 3, 64, 64))) == expected
