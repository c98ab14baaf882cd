"""Python conditions on sizes the architecture fixes (channels, ranks) are taken at the traced shape and
guarded; conditions on sizes that follow the input (batch, height, width) or on values still stop fx."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.graph.shape_conditions import with_conditions
from plugsurgeon.graph.trace import trace_module


class ChannelBranches(nn.Module):
    """Branches on its inputs' channels and rank, as smp's Linknet decoder block does (``skip.shape[1] != 0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, skip):
        x = self.conv(x)
        if skip.shape[1] != 0:
            x = x + skip
        if x.dim() == 4 and skip.size(1) > 2:
            x = x * 2
        else:
            x = x - 1
        return x


class ExtentBranch(nn.Module):
    """Branches on the input's width, which the traced shape only stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = self.conv(x)
        if x.size(-1) > 8:
            return x * 2
        return x


class ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            return x * 2
        return x


def _example(skip_channels: int = 3, width: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 3, 12, width), torch.randn(1, skip_channels, 12, width)


def test_a_channel_condition_takes_the_traced_branch_and_guards_it():
    model = ChannelBranches().eval()
    x, skip = _example()
    gm, tracer = trace_module(model, example=((x, skip), {}))
    # The branches taken with a 3-channel skip: the skip added, the sum doubled.
    with torch.no_grad():
        torch.testing.assert_close(gm(x, skip), (model.conv(x) + skip) * 2)
    assert sum(n.target is torch._assert for n in gm.graph.nodes) == 3
    # Other sizes and batches take the same branches; where a condition comes out differently, the
    # traced forward refuses, naming it, instead of computing the branch it does not have.
    with torch.no_grad():
        wide = (torch.randn(2, 3, 20, 40), torch.randn(2, 3, 20, 40))
        torch.testing.assert_close(gm(*wide), model(*wide))
    with pytest.raises(AssertionError, match=r"`skip.shape\[1\] != 0` is True"):
        gm(*_example(skip_channels=0))
    with pytest.raises(AssertionError, match=r"`skip.size\(1\) > 2` is True"):
        gm(*_example(skip_channels=1))
    # Traced again without inputs, as an owner is for editing, it takes the same branches: the
    # decisions travel with the call's concrete args.
    again, _ = trace_module(model, with_conditions(None, tracer.conditions), shallow=True)
    assert again.code == gm.code
    # Without them (and without inputs) the branch is unknown: fx's refusal.
    with pytest.raises(Exception, match="control flow"):
        trace_module(model, shallow=True)


def test_the_model_traces_whole_and_its_edit_keeps_the_branch():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = ChannelCheckingBlock()

        def forward(self, x):
            return self.block(self.stem(x))

    model = Net().eval()
    traced = ps.trace(model, (1, 3, 16, 16))
    assert traced.whole and not traced.untraced
    x = torch.randn(2, 3, 24, 24)  # another batch and size than traced: the condition holds there too
    result = ps.apply(model, "se", input_shape=(1, 3, 16, 16), traced=traced)
    assert [e.module for e in result.report.edits] == ["block.se"]  # in the forward that branches
    edited = result.model.eval()
    block = edited.block
    with torch.no_grad():
        stem = edited.stem(x)
        torch.testing.assert_close(edited(x), (block.se(block.bn(block.conv(stem))) + stem).relu())  # the branch taken


class ChannelCheckingBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if x.size(1) == y.size(1):
            y = y + x
        return y.relu()


@pytest.mark.parametrize("model", [ExtentBranch, ValueBranch])
def test_conditions_on_the_input_size_or_on_values_still_stop_the_trace(model):
    with pytest.raises(ps.TraceError, match=f"{model.__name__}: symbolically traced variables cannot be used as inputs to control flow"):
        ps.trace(model(), (1, 3, 16, 16))
    with pytest.raises(Exception, match="control flow"):
        trace_module(model(), example=((torch.randn(1, 3, 16, 16),), {}))


def test_alike_owners_that_decided_a_condition_differently_do_not_share_a_trace():
    from plugsurgeon.graph.owner_traces import OwnerTraces

    class SkipBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, skip):
            x = self.conv(x)
            if skip.shape[1] != 0:  # Linknet's decoder gets an empty skip from some encoders
                x = x + skip
            return x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = SkipBlock(), SkipBlock()

        def forward(self, x):
            return self.b(self.a(x, x[:, :0]), x)

    traced = ps.trace(Net(), (1, 3, 8, 8))
    part = traced.parts[0]
    concrete = {path: part.call_record(path).concrete_args for path in ("a", "b")}
    owners = OwnerTraces()
    graphs = {path: owners.trace(getattr(traced.model, path), concrete[path], frozenset()) for path in ("a", "b")}
    assert sum(n.target is operator.add for n in graphs["a"].graph.nodes) == 0
    assert sum(n.target is operator.add for n in graphs["b"].graph.nodes) == 1
