"""A forward run to learn structures, not values: the heavy ops answer zeros of the right shape.

A model fx cannot trace whole (a detector whose transform resizes the image and whose heads select
boxes) is traced in parts, and each part needs the inputs it is called with: one real forward
records them. Nearly all of that forward's time goes into convolutions, matrix products and region
pooling at full resolution, whose output shapes depend on their inputs' shapes alone. Under
``structure_only`` those ops run on the meta device (shapes, no compute) and return zeros of that
shape; everything else -- the resizing, anchor generation, box selection, NMS -- runs for real on
what it gets, so the values that decide a structure (image sizes, box counts) still come from
running code. The recorded structures are the same as a real run's wherever counts do not hinge on
the features' values; ``shapes.record_module_inputs`` says what it does where they might.

``record_dataflow`` runs one module so, recording which of its submodules ran on which tensors: the
structure of a layer whose forward fx cannot follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from plugsurgeon.graph.guards import attributes_preserved, hooks_suspended, training_flags_kept

_aten = torch.ops.aten
# The ops that hold a CNN's or a transformer's FLOPs; their outputs' shapes come from their inputs'.
_HEAVY = frozenset({
    _aten.convolution.default,
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
})
# torchvision's region pooling (an R-CNN head pools a thousand boxes from every level): its output's
# shape comes from the box count, which the real box selection before it decided. Named, so that
# nothing here imports torchvision.
_HEAVY_NAMED = frozenset({"torchvision.roi_align.default", "torchvision.ps_roi_align.default",
                          "torchvision.roi_pool.default", "torchvision.ps_roi_pool.default"})


class structure_only(TorchDispatchMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within it, convolutions, matrix products and region pooling return zeros of the shape they
    would compute."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _HEAVY and str(func) not in _HEAVY_NAMED:
            return func(*args, **kwargs)
        device = next(v.device for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor))
        on_meta = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, (args, kwargs))
        shaped = func(*on_meta[0], **on_meta[1])
        return tree_map(lambda v: torch.zeros(v.shape, dtype=v.dtype, device=device) if isinstance(v, torch.Tensor) else v, shaped)


@dataclass
class ModuleCall:
    """One call of a submodule during ``record_dataflow``: the tensors it was given and returned, by identity."""

    path: str
    inputs: tuple[int, ...]  # ids of the positional arguments that are tensors, in order
    positional: int  # how many positional arguments
    keywords: tuple[str, ...]
    outputs: tuple[int, ...] = ()


@dataclass
class Dataflow:
    """One run of a module at the level of torch functions: a graph fx could not build, recorded instead.

    ``readers`` holds, for every tensor an op read, the module calls each reading op ran inside (paths
    relative to the module, innermost last): a tensor read only inside one module call has no other user
    in that run. ``tensors`` keeps every recorded tensor alive, so that no id is reused while it is read.
    """

    calls: dict[str, list[ModuleCall]] = field(default_factory=dict)
    readers: dict[int, list[tuple[str, ...]]] = field(default_factory=dict)
    outputs: tuple[int, ...] = ()
    tensors: list[torch.Tensor] = field(default_factory=list, repr=False)


class _Reads(TorchFunctionMode):
    def __init__(self, flow: Dataflow, stack: list[str]) -> None:
        super().__init__()
        self.flow, self.stack = flow, stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        where = tuple(self.stack)
        for value in tree_leaves((args, kwargs)):
            if isinstance(value, torch.Tensor):
                self.flow.readers.setdefault(id(value), []).append(where)
                self.flow.tensors.append(value)
        return func(*args, **kwargs)


def record_dataflow(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Dataflow:
    """Run ``module(*args, **kwargs)`` once, in eval mode and without gradients, and record which of its
    submodules ran on which tensors and which ops read each tensor.

    A layer fx cannot trace (one that pads by ``int()`` of its input's size) still has a structure: the
    run shows it, at the input's shape. Convolutions and matrix products answer zeros of their shape
    (``structure_only``). The module is left as it was: flags, attributes, the caller's hooks. Whatever
    the module raises is raised.
    """
    flow, stack = Dataflow(), [""]

    def keep(values: Any) -> tuple[int, ...]:
        tensors = [v for v in tree_leaves(values) if isinstance(v, torch.Tensor)]
        flow.tensors.extend(tensors)
        return tuple(id(t) for t in tensors)

    def enter(path: str):
        def hook(_module: nn.Module | None, call_args, call_kwargs):
            tensors = tuple(id(a) for a in call_args if isinstance(a, torch.Tensor))
            keep(call_args)
            flow.calls.setdefault(path, []).append(ModuleCall(path, tensors, len(call_args), tuple(call_kwargs)))
            stack.append(path)
        return hook

    def leave(path: str):
        def hook(_module: nn.Module | None, _args, output):
            stack.pop()
            flow.calls[path][-1].outputs = keep(output)
        return hook

    with hooks_suspended(module), training_flags_kept(module, False), attributes_preserved(module):
        for path, sub in module.named_modules():
            if path:
                sub.register_forward_pre_hook(enter(path), with_kwargs=True)
                sub.register_forward_hook(leave(path))
        with torch.no_grad(), structure_only(), _Reads(flow, stack):
            output = module(*args, **kwargs)
    flow.outputs = keep(output)
    return flow
