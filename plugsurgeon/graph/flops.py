"""Total FLOPs of whatever runs inside a context, by torch's own formulas (``torch.utils.flop_counter.flop_registry``).

``FlopCounterMode`` also attributes every count to the modules on the call stack, through a
``ModuleTracker`` whose global hooks fire on every module call; surgery only ever reads the total, and
that attribution cost a quarter of tracing a ResNet-50 (issue 16). This mode keeps torch's counting
rules (the registry's formulas, and the decomposition of an op the registry lacks into ops it has) and
drops the attribution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["TotalFlops"]

# Metadata queries: answered by the tensor itself, never counted (as FlopCounterMode leaves them).
_QUERIES = frozenset(
    getattr(torch.ops.aten, name).default
    for name in ("sym_is_contiguous", "is_contiguous", "is_strides_like_format", "is_non_overlapping_and_dense", "size",
                 "sym_size", "stride", "sym_stride", "storage_offset", "sym_storage_offset", "numel", "sym_numel", "dim")
) | {torch.ops.aten.is_contiguous.memory_format, torch.ops.prim.layout.default}

# Ops found to have no decomposition: not asked again (entering the mode to ask costs as much as the op).
_INDIVISIBLE: set = set()


class TotalFlops(TorchDispatchMode):
    """``with TotalFlops() as counter: ...; counter.total``: the FLOPs ``FlopCounterMode`` would report
    as its total for the same code."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = kwargs or {}
        packet = getattr(func, "overloadpacket", None)  # None: a higher-order op (torch.cond), counted by no formula
        if func in _QUERIES or packet is None:
            return NotImplemented
        counted = flop_registry.get(packet)
        if counted is None and func is not torch.ops.prim.device.default and func not in _INDIVISIBLE:
            with self:  # an op without a formula counts as the ops it decomposes into
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            _INDIVISIBLE.add(func)  # whether an op decomposes is the op's, not its arguments'
        out = func(*args, **kwargs)
        if counted is not None:
            self.total += counted(*args, **kwargs, out_val=out)
        return out
