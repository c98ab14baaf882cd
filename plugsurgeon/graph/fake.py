"""Running a module on fake tensors: output shapes and FLOPs (torch's own counter) without compute."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from plugsurgeon.graph.guards import hooks_suspended, training_flags_kept


def run_fake(module: nn.Module, shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32) -> tuple[Any, int]:
    """Call ``module`` on fake inputs of ``shapes`` in eval mode; returns (output, FLOPs).

    Eval mode keeps BatchNorm from writing fake statistics into real buffers.
    """

    with training_flags_kept(module, False), hooks_suspended(module), FakeTensorMode(allow_non_fake_inputs=True):
        inputs = [torch.empty(shape, dtype=dtype) for shape in shapes]
        with FlopCounterMode(display=False) as counter:
            output = module(*inputs)
    return output, counter.get_total_flops()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
