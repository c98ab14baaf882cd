"""BlazeBlock and double BlazeBlock: hand-computed outputs with fixed weights (all-ones and one-hot
depthwise kernels, identity projections, BN at its fresh statistics), the stride-2 residual (2x2 max
pool rounding up, zero channels appended), the paper's bottleneck widths and parameter counts, the
replaced conv's output size on odd and even maps, and the convs a block cannot stand in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.blaze import BlazeBlock, DoubleBlazeBlock
from tests.nets import TinyResNet

# An eps far below float32's resolution at 1: a fresh BN (mean 0, var 1) divides by sqrt(1 + eps) == 1
# exactly, so the hand-computed integers below are compared exactly.
TINY_EPS = 1e-12


def _fixed(block: nn.Module, depthwise: torch.Tensor, **pointwise: torch.Tensor) -> nn.Module:
    """Every depthwise conv gets ``depthwise`` (k x k, the same for every channel); 1x1 convs get the given (out, in) matrices."""
    with torch.no_grad():
        for module in block.modules():
            # The depthwise convs (groups == channels) are the only ones that are not 1x1.
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
                module.weight.copy_(depthwise.expand_as(module.weight))
        for name, matrix in pointwise.items():
            getattr(block, name).weight.copy_(matrix[:, :, None, None])
    return block.eval()


def _ones_counts(size: int, k: int = 5) -> torch.Tensor:
    """How many of a k-window's taps (zero padding k // 2) fall inside a map of ``size``, per position: by hand, not by conv."""
    half = k // 2
    return torch.tensor(
        [min(i + half, size - 1) - max(i - half, 0) + 1 for i in range(size)], dtype=torch.float32
    )


def test_counts_helper_by_hand():
    # 4 positions, window 5 (reach 2): rows 0..2, 0..3, 0..3, 1..3.
    assert _ones_counts(4).tolist() == [3, 4, 4, 3]


def test_single_block_is_box_sum_plus_input_then_relu():
    block = _fixed(
        BlazeBlock(nn.Conv2d(2, 2, 3, padding=1), bn_eps=TINY_EPS), torch.ones(5, 5), project=torch.eye(2)
    )
    x = torch.stack([torch.ones(4, 4), -torch.ones(4, 4)])[None]
    counts = torch.outer(_ones_counts(4), _ones_counts(4))  # [[9, 12, 12, 9], [12, 16, 16, 12], ...]
    with torch.no_grad():
        out = block(x)
    # Channel 0: the 5x5 box sum of ones, plus the input (1).
    assert out[0, 0].tolist() == [[10, 13, 13, 10], [13, 17, 17, 13], [13, 17, 17, 13], [10, 13, 13, 10]]
    torch.testing.assert_close(out[0, 0], counts + 1)
    # Channel 1: -counts - 1 < 0 everywhere; the ReLU comes after the add (a ReLU on the branch alone would leave -1).
    assert torch.equal(out[0, 1], torch.zeros(4, 4))


@pytest.mark.parametrize(
    ("size", "main", "pooled"),
    [
        # 5x5 (odd): the conv samples rows/cols 0, 2, 4; the ceil-mode pool's windows are {0,1}, {2,3}, {4}.
        (5, [[0, 2, 4], [10, 12, 14], [20, 22, 24]], [[6, 8, 9], [16, 18, 19], [21, 23, 24]]),
        # 4x4 (even): samples 0, 2; windows {0,1}, {2,3}.
        (4, [[0, 2], [8, 10]], [[5, 7], [13, 15]]),
    ],
)
def test_stride_two_residual_is_max_pool_and_zero_channels(size, main, pooled):
    # One-hot centre tap: the depthwise conv at stride 2 samples x at (2i, 2j). The 1x1 conv makes two channels, 1x and 2x that.
    centre = torch.zeros(5, 5)
    centre[2, 2] = 1.0
    source = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    block = _fixed(BlazeBlock(source, bn_eps=TINY_EPS), centre, project=torch.tensor([[1.0], [2.0]]))
    x = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)  # x[r, c] = size * r + c
    with torch.no_grad():
        out = block(x)
    assert out.shape == source(x).shape
    main, pooled = torch.tensor(main, dtype=torch.float32), torch.tensor(pooled, dtype=torch.float32)
    # Channel 0: the sampled input plus the max over each 2x2 window (its bottom-right value: x grows right and down).
    assert torch.equal(out[0, 0], main + pooled)
    # Channel 1 is new: its residual is a zero channel, so only the branch (2x the sample) shows.
    assert torch.equal(out[0, 1], 2 * main)


def test_double_block_runs_two_box_sums_with_a_relu_between():
    block = DoubleBlazeBlock(nn.Conv2d(1, 1, 3, padding=1), bn_eps=TINY_EPS)
    assert block.bottleneck == 1  # max(1, 1 // 4)
    x = torch.ones(1, 1, 4, 4)
    # First box sum: outer(a, a) with a = [3, 4, 4, 3]. The second box sum of an outer product is the outer
    # product of window sums of a: rows 0..2 -> 11, rows 0..3 -> 14, 14, rows 1..3 -> 11.
    second = torch.outer(torch.tensor([11.0, 14, 14, 11]), torch.tensor([11.0, 14, 14, 11]))
    with torch.no_grad():
        out = _fixed(block, torch.ones(5, 5), project=torch.ones(1, 1), expand=torch.ones(1, 1))(x)
        assert out[0, 0].tolist()[0] == [122, 155, 155, 122]
        torch.testing.assert_close(out[0, 0], second + 1)
        # A negative projection: the ReLU after it zeroes the bottleneck, the second half adds nothing, out = relu(x) = x.
        # (Without that ReLU the second half would be -second and the output 0.)
        out = _fixed(block, torch.ones(5, 5), project=-torch.ones(1, 1), expand=torch.ones(1, 1))(x)
        assert torch.equal(out, x)


def test_relu_false_leaves_the_sum_signed():
    block = _fixed(
        BlazeBlock(nn.Conv2d(1, 1, 3, padding=1), relu=False, bn_eps=TINY_EPS),
        torch.ones(5, 5),
        project=torch.ones(1, 1),
    )
    with torch.no_grad():
        out = block(-torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out[0, 0], -torch.outer(_ones_counts(4), _ones_counts(4)) - 1)


def test_paper_widths_and_parameter_counts():
    # The paper's table: single stride-2 block 24 -> 48 (5x5x24x1, 1x1x24x48); double stride-2 block
    # 48 -> 96 through 24 (5x5x48x1, 1x1x48x24, 5x5x24x1, 1x1x24x96); BN: weight and bias per channel.
    single = BlazeBlock(nn.Conv2d(24, 48, 3, stride=2, padding=1))
    assert sum(p.numel() for p in single.parameters()) == 24 * 25 + 24 * 48 + 2 * 48 == 1848
    double = DoubleBlazeBlock(nn.Conv2d(48, 96, 3, stride=2, padding=1))
    assert double.project.out_channels == 24 and double.expand.in_channels == 24
    assert (
        sum(p.numel() for p in double.parameters())
        == 48 * 25 + 48 * 24 + 2 * 24 + 24 * 25 + 24 * 96 + 2 * 96
        == 5496
    )
    # Every new conv is bias-free: BN follows each 1x1 conv, and a depthwise bias only shifts what BN subtracts.
    assert all(m.bias is None for m in double.modules() if isinstance(m, nn.Conv2d))


CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=5, padding=2, stride=2),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding="same"),
]


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("cls", [BlazeBlock, DoubleBlazeBlock])
def test_output_has_the_replaced_convs_shape_on_odd_and_even_maps(cls, conv, size):
    source = nn.Conv2d(8, 16, **conv)
    x = torch.randn(2, 8, size, size)
    assert cls(source)(x).shape == source(x).shape


def test_why_the_padding_is_symmetric():
    """The TFLite ports pad (0, 2, 0, 2) before a stride-2 3x3 and (1, 2, 1, 2) before a 5x5: for a 5x5,
    the former loses a row on an even map. Symmetric padding 2 gives ceil(H / 2) on even and odd maps."""
    w = torch.ones(1, 1, 5, 5)
    for size, half in ((8, 4), (7, 4)):
        x = torch.ones(1, 1, size, size)
        assert F.conv2d(x, w, stride=2, padding=2).shape[-1] == half
    assert F.conv2d(F.pad(torch.ones(1, 1, 8, 8), (0, 2, 0, 2)), w, stride=2).shape[-1] == 3
    assert F.conv2d(F.pad(torch.ones(1, 1, 8, 8), (1, 2, 1, 2)), w, stride=2).shape[-1] == 4


@pytest.mark.parametrize(
    ("conv", "error", "words"),
    [
        (nn.Conv2d(16, 8, 3, padding=1), ValueError, "cannot drop any"),
        (nn.Conv2d(8, 8, 3, stride=3, padding=1), ValueError, "stride 1 or 2"),
        (nn.Conv2d(8, 8, 3, stride=(2, 1), padding=1), ValueError, "stride 1 or 2"),
        (nn.Conv2d(8, 8, 3), ValueError, "'same'-padded"),
        (nn.Conv2d(8, 8, 4, stride=2, padding=1), ValueError, "'same'-padded"),
        (nn.Conv1d(8, 8, 3, padding=1), TypeError, "Conv1d"),
    ],
)
def test_refuses_convs_it_cannot_stand_in_for(conv, error, words):
    for cls in (BlazeBlock, DoubleBlazeBlock):
        with pytest.raises(error, match=words):
            cls(conv)


class _Host(nn.Module):
    """grow (3 -> 8, fits), shrink (8 -> 4), valid (4 -> 4, no padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.grow = nn.Conv2d(3, 8, 3, padding=1)
        self.shrink = nn.Conv2d(8, 4, 3, padding=1)
        self.valid = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.valid(torch.relu(self.shrink(torch.relu(self.grow(x)))))


def test_unfit_convs_are_site_errors_that_a_step_can_skip():
    recipe = {"name": "b", "steps": [{"plugin": "blaze", "at": "conv"}]}
    with pytest.raises(ps.SiteError, match="'shrink' maps 8 to 4 channels") as refused:
        ps.apply(_Host(), ps.Recipe(**recipe), input_shape=(1, 3, 12, 12))
    assert "on_unfit: skip" in refused.value.hint
    recipe["steps"][0]["on_unfit"] = "skip"
    result = ps.apply(_Host(), ps.Recipe(**recipe), input_shape=(1, 3, 12, 12))
    assert [e.site for e in result.report.edits] == ["grow"]
    skipped = [note.split("'")[1] for note in result.report.notes if " skipped '" in note]
    assert skipped == ["shrink", "valid"]
    assert isinstance(result.model.grow, BlazeBlock) and type(result.model.shrink) is nn.Conv2d


def test_recipe_on_resnet50_singles_then_doubles_with_hand_counted_parameters():
    result = ps.apply(ps.load_model("resnet50"), "blaze", input_shape=(1, 3, 64, 64), dry_run=True)
    kinds = {edit.site.path: type(edit.module) for edit in result.plan.edits}
    # Single blocks on stage 2 (layer1, stride 4); double blocks from the stride-2 conv into stage 3 on.
    assert [p for p, k in kinds.items() if k is BlazeBlock] == [f"layer1.{i}.conv2" for i in range(3)]
    doubles = [p for p, k in kinds.items() if k is DoubleBlazeBlock]
    assert doubles[0] == "layer2.0.conv2" and len(doubles) == 4 + 6 + 3 and len(kinds) == 16

    def single(c):  # C -> C: depthwise 5x5, 1x1, BN
        return c * 25 + c * c + 2 * c

    def double(c):  # C -> C/4 -> C
        m = c // 4
        return c * 25 + c * m + 2 * m + m * 25 + m * c + 2 * c

    # The 16 replaced 3x3 convs (bias-free, C -> C).
    removed = 3 * 64 * 64 * 9 + 4 * 128 * 128 * 9 + 6 * 256 * 256 * 9 + 3 * 512 * 512 * 9
    added = 3 * single(64) + 4 * double(128) + 6 * double(256) + 3 * double(512)
    report = result.report
    assert report.params_before == 25_557_032  # torchvision's ResNet-50
    assert report.params_after == 25_557_032 - removed + added == 15_000_808


def test_double_blocks_in_a_host_train_trace_and_follow_its_dtype():
    """The registry matrix builds the default (single) block; this is its check for ``double: true``."""
    recipe = ps.Recipe(
        name="b", steps=[{"plugin": "blaze", "at": "conv", "where": {"kernel": 3}, "args": {"double": True}}]
    )
    result = ps.apply(TinyResNet().double(), recipe, input_shape=(2, 3, 32, 32))
    blocks = [result.model.get_submodule(e.module) for e in result.report.edits]
    assert blocks and all(isinstance(b, DoubleBlazeBlock) for b in blocks)
    assert all(t.dtype == torch.float64 for b in blocks for t in b.parameters())
    model = result.model.train()
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).square().mean().backward()
    assert all(p.grad is not None for b in blocks for p in b.parameters())
    ps.trace(model.eval(), (2, 3, 32, 32))


def test_expansion_without_double_is_refused_not_ignored():
    recipe = ps.Recipe(
        name="b", steps=[{"plugin": "blaze", "at": "conv", "where": {"kernel": 3}, "args": {"expansion": 8}}]
    )
    with pytest.raises(ps.RecipeError, match="set double: true"):
        ps.apply(TinyResNet(), recipe, input_shape=(1, 3, 32, 32))
