"""Running a module on fake tensors: output shapes and FLOPs (torch's own counter) without compute."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from plugsurgeon.graph.flops import TotalFlops
from plugsurgeon.graph.guards import hooks_suspended, training_flags_kept


def run_fake(module: nn.Module, shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32) -> tuple[Any, int]:
    """Call ``module`` on fake inputs of ``shapes`` in eval mode; returns (output, FLOPs).

    Eval mode keeps BatchNorm from writing fake statistics into real buffers. It is an inference run,
    so no autograd graph is recorded (that was a fifth of its cost); the train-mode check
    (``check.carries_metadata``) runs with gradients.
    """

    with training_flags_kept(module, False), hooks_suspended(module), torch.no_grad(), \
            own_fake_mode(module) or FakeTensorMode(allow_non_fake_inputs=True):
        inputs = [torch.empty(shape, dtype=dtype) for shape in shapes]
        with TotalFlops() as counter:
            output = module(*inputs)
    return output, counter.total


def own_fake_mode(module: nn.Module) -> FakeTensorMode | None:
    """The fake tensor mode a module built on fake tensors belongs to, if it has one.

    Running the module in that mode costs a third of running it in a new one: a new mode treats every
    parameter as another mode's tensor and bypasses its dispatch cache on each op that reads one."""
    modes = {id(t.fake_mode): t.fake_mode for t in (*module.parameters(), *module.buffers()) if isinstance(t, FakeTensor)}
    return next(iter(modes.values())) if len(modes) == 1 else None


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
