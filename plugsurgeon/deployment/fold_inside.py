"""BatchNorms inside a layer the trace keeps as one call: folded when the layer's own run proves conv -> BN.

fx cannot follow some small layers (Hugging Face's MobileNet conv layers pad their input by ``int()`` of its
size), so the model's graph holds each as one call and the conv and BatchNorm inside are in no graph. Their
structure is still there to see: the layer, run alone on the input the trace recorded for it
(``graph.probe.record_dataflow``), shows which submodule produced the tensor the BatchNorm reads and which ops
read that tensor. A pair folds under the conditions the graph-based fold asks for, read from that run: the
BatchNorm reads a conv's output as its one argument, nothing else reads that output, nothing returns it, and
the conv and the BatchNorm run once there and nowhere else. Names alone never decide; deploy then verifies the
whole model's function. The run is at the traced input's shape, as the trace is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.utils._pytree import tree_map

from plugsurgeon.errors import first_line
from plugsurgeon.graph.probe import Dataflow, record_dataflow
from plugsurgeon.graph.trace import Traced


@dataclass
class Inside:
    """The leaf of the trace a BatchNorm lies in, and why fx kept it whole. Its inputs come from the node that
    calls it in a traced part, or, for a submodule no traced part calls, from the forward that recorded them;
    a fold there is outside what deploy's verification compares, so it is checked on the module alone."""

    path: str
    module: nn.Module
    why: str
    node: fx.Node | None = None
    recorded: tuple[tuple, dict] | None = None

    @property
    def outside_parts(self) -> bool:
        return self.node is None

    def example(self) -> tuple[tuple, dict]:
        """Random inputs of the shapes the trace saw for this module."""
        if self.node is None:
            args, kwargs = cast(tuple[tuple, dict], self.recorded)
            return tree_map(_random_like, args), tree_map(_random_like, kwargs)
        return tuple(fx.node.map_arg(self.node.args, _from_meta)), dict(fx.node.map_arg(self.node.kwargs, _from_meta))


def _random_like(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return torch.randn(value.shape).to(value.dtype) if value.is_floating_point() else torch.zeros_like(value)


def _from_meta(node: fx.Node) -> Any:
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata):
        raise LookupError(f"the trace recorded no single tensor for its input '{node.name}'")
    return _random_like(torch.empty(tuple(meta.shape), dtype=meta.dtype))


def leaves_holding(traced: Traced, norms: list[str], module_of) -> dict[str, Inside]:
    """For each BatchNorm path, the innermost module that contains it and that a traced graph calls as one node,
    or that was left untraced with its inputs recorded."""
    untraced = dict(traced.untraced)

    def why(path: str) -> str:
        reason = untraced.get(path)
        return f"torch.fx cannot trace its forward: {reason.split(': ', 1)[-1]}" if reason else "the trace keeps it as one call"

    leaves: dict[str, Inside] = {}
    for part in traced.parts:
        for node in part.gm.graph.nodes:
            if node.op == "call_module":
                path = part.absolute(cast(str, node.target))
                leaves.setdefault(path, Inside(path, module_of(part, node), why(path), node=node))
    for path, recorded in traced.untraced_inputs.items():
        if path not in leaves and not any(part.path == "" or path.startswith(part.path + ".") for part in traced.parts):
            leaves[path] = Inside(path, traced.model.get_submodule(path), why(path), recorded=recorded)
    found = {}
    for norm in norms:
        holders = [path for path in leaves if norm.startswith(path + ".")]
        if holders:
            found[norm] = leaves[max(holders, key=len)]
    return found


def recorded_run(inside: Inside) -> Dataflow | str:
    """The leaf's run on tensors shaped as the trace recorded its inputs, or why it could not be run."""
    try:
        args, kwargs = inside.example()
        return record_dataflow(inside.module, args, kwargs)
    except Exception as error:  # noqa: BLE001 - the layer's own forward may raise anything
        return f"running it alone failed: {first_line(error, 200) or type(error).__name__}"


def pair_inside(inside: Inside, flow: Dataflow, norm_path: str) -> tuple[str | None, str]:
    """(path of the conv the BatchNorm folds into, "") where the run proves it, else (None, why not)."""
    prefix = inside.path + "."
    local = norm_path[len(prefix):]
    calls = flow.calls.get(local, [])
    if len(calls) != 1:
        return None, f"BatchNorm runs {len(calls)} times in its forward"
    call = calls[0]
    if call.positional != 1 or call.keywords or len(call.inputs) != 1:
        return None, "BatchNorm is called with extra arguments"
    tensor = call.inputs[0]
    producers = [c for path, cs in flow.calls.items() for c in cs if c.outputs == (tensor,)]
    layers = [c for c in producers if isinstance(inside.module.get_submodule(c.path), nn.modules.conv._ConvNd)]
    if not layers:
        made_by = max((c.path for c in producers), key=len, default=None)
        source = f"'{prefix}{made_by}' ({type(inside.module.get_submodule(made_by)).__name__})" if made_by else "computed in its own forward"
        return None, f"its input is {source}, not a conv"
    layer = layers[0]
    if len(flow.calls[layer.path]) != 1:
        return None, f"conv '{prefix}{layer.path}' runs {len(flow.calls[layer.path])} times in its forward; folding would change every call"
    others = [where for where in flow.readers.get(tensor, []) if local not in where]
    if others or tensor in flow.outputs:
        what = f"'{prefix}{others[0][-1]}'" if others and others[0][-1] else "its own forward"
        return None, f"conv output has another user ({what}), which needs the unnormalised values"
    return prefix + layer.path, ""
