"""Shallow traces of the owners one apply edits, shared by owners that trace alike.

A ResNet-50 with CBAM rebuilds 16 bottlenecks, and the blocks after the first of a stage are the same
code over the same configuration: tracing each one again was a fifth of ``ps.apply``. An owner reuses an
earlier owner's graph only when nothing its trace could depend on differs: its class and forward, the
call's concrete arguments, the children traced through, and the configuration of the whole subtree
(every module's class, plain attributes, and parameter, buffer and child names). Anything the key
cannot compare (an attribute that is an arbitrary object, a tensor held outside the state, a forward
set on the instance) makes the owner trace on its own, as does a graph that reads attributes fx made
on the traced module itself.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from plugsurgeon.graph.shape_conditions import conditions_of
from plugsurgeon.graph.trace import trace_module

__all__ = ["OwnerTraces"]

# Plain values whose repr is their value: two equal reprs are two equal configurations.
_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format)
# Module bookkeeping that a forward's trace does not read (hooks are suspended while tracing).
_BOOKKEEPING = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training",
                          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                          "_load_state_dict_post_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
                          "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                          "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook", "_compiled_call_impl"})


class OwnerTraces:
    """``trace(owner, concrete_args, trace_through)``: ``trace_module(owner, shallow=True, ...)``'s graph
    module, from an earlier owner's trace where the two cannot differ."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, fx.Graph] = {}

    def trace(self, owner: nn.Module, concrete_args: dict[str, Any] | None, trace_through: frozenset[str]) -> fx.GraphModule:
        key = _key(owner, concrete_args, trace_through)
        known = self._graphs.get(key) if key is not None else None
        if known is not None:
            return fx.GraphModule(owner, _copied(known), type(owner).__name__)
        gm, _tracer = trace_module(owner, concrete_args, shallow=True, trace_through=trace_through)
        if key is not None and _reads_only_owner(gm.graph, owner):
            self._graphs[key] = _copied(gm.graph)
        return gm


def _copied(graph: fx.Graph) -> fx.Graph:
    """New nodes (the caller splices into them), each with its own metadata, and the same input and output codegen."""
    return copy.deepcopy(graph)


def _reads_only_owner(graph: fx.Graph, owner: nn.Module) -> bool:
    """Whether every attribute the graph reads is the owner's own (not a constant fx lifted onto it)."""
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            try:
                owner.get_submodule(str(node.target)) if node.op == "call_module" else _attribute(owner, str(node.target))
            except AttributeError:
                return False
    return True


def _attribute(module: nn.Module, path: str) -> Any:
    *parents, name = path.split(".")
    for part in parents:
        module = getattr(module, part)
    return getattr(module, name)


def _key(owner: nn.Module, concrete_args: dict[str, Any] | None, trace_through: frozenset[str]) -> tuple | None:
    try:
        # With the shape conditions the model's trace decided in that call (graph.shape_conditions).
        concrete = repr((sorted((concrete_args or {}).items()), sorted(conditions_of(concrete_args).items())))
        return (type(owner), concrete, tuple(sorted(trace_through)), _configuration(owner))
    except _Unkeyable:
        return None


class _Unkeyable(Exception):
    pass


def _configuration(module: nn.Module) -> tuple:
    """Everything of ``module``'s subtree a trace can read, as comparable values; _Unkeyable if some part cannot be."""
    plain = []
    for name, value in sorted(module.__dict__.items()):
        if name in _BOOKKEEPING:
            continue
        if name == "forward" or not _is_plain(value):
            raise _Unkeyable(name)
        plain.append((name, repr(value)))
    children = tuple((name, None if child is None else _configuration(child)) for name, child in module._modules.items())
    # Shapes too: a shape condition (``if self.weight.shape[0] > 1``) is decided at them.
    tensors = tuple((name, None if t is None else (tuple(t.shape), t.dtype))
                    for table in (module._parameters, module._buffers) for name, t in table.items())
    return (type(module), tuple(plain), tensors, children)


def _is_plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)
