"""OwnerTraces shares a shallow trace only between owners whose traces cannot differ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugsurgeon.graph.owner_traces as owner_traces
from plugsurgeon.graph.owner_traces import OwnerTraces
from plugsurgeon.graph.trace import trace_module


class Scaled(nn.Module):
    """Branches on a plain attribute and reads a child's attribute: both shape the trace."""

    def __init__(self, channels: int, doubled: bool) -> None:
        super().__init__()
        self.doubled = doubled
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.doubled:
            y = y * 2
        return y.reshape(y.shape[0], self.conv.out_channels, -1).sum(-1)


class Holder(nn.Module):
    def __init__(self, thing: object) -> None:
        super().__init__()
        self.thing = thing  # not a plain value: no key can say two of these trace alike
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def traced_alone(monkeypatch):
    """Counts the traces OwnerTraces really makes."""
    calls = []

    def counting(module, *args, **kwargs):
        calls.append(module)
        return trace_module(module, *args, **kwargs)

    monkeypatch.setattr(owner_traces, "trace_module", counting)
    return calls


def code_alone(module: nn.Module) -> str:
    return trace_module(module, None, shallow=True)[0].code


@pytest.mark.parametrize("second", [Scaled(8, doubled=False), Scaled(16, doubled=True), Scaled(8, doubled=True)],
                         ids=["plain attribute differs", "child attribute differs", "alike"])
def test_a_trace_is_shared_only_between_owners_that_trace_alike(second, traced_alone):
    first = Scaled(8, doubled=True)
    traces = OwnerTraces()
    traces.trace(first, None, frozenset())
    gm = traces.trace(second, None, frozenset())
    alike = second.doubled and second.conv.out_channels == 8
    assert len(traced_alone) == (1 if alike else 2)
    assert gm.code == code_alone(second)  # what tracing it alone gives, shared or not
    assert gm.conv is second.conv  # the graph module holds the second owner's own children


def test_owners_holding_arbitrary_objects_are_traced_each(traced_alone):
    traces = OwnerTraces()
    for owner in (Holder(object()), Holder(object())):
        traces.trace(owner, None, frozenset())
    assert len(traced_alone) == 2


def test_a_shared_trace_is_a_copy_the_caller_may_edit(traced_alone):
    traces = OwnerTraces()
    first = traces.trace(Scaled(8, doubled=True), None, frozenset())
    conv = next(n for n in first.graph.nodes if n.op == "call_module")
    with first.graph.inserting_after(conv):  # as build_owner splices a plugin in
        first.graph.call_function(torch.relu, (conv,))
    second = traces.trace(Scaled(8, doubled=True), None, frozenset())
    assert len(traced_alone) == 1
    assert "relu" not in second.code and second.code == code_alone(Scaled(8, doubled=True))
