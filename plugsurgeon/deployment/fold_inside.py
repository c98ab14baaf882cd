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

from plugsurgeon.errors import first_line
from plugsurgeon.graph.probe import Dataflow, record_dataflow
from plugsurgeon.graph.trace import Traced, TracedPart


@dataclass
class Inside:
    """The leaf of the trace a BatchNorm lies in: the (part, node) that calls it, and why fx kept it whole."""

    path: str
    module: nn.Module
    part: TracedPart
    node: fx.Node
    why: str


def leaves_holding(traced: Traced, norms: list[str], module_of) -> dict[str, Inside]:
    """For each BatchNorm path, the innermost module called as one node of a traced graph that contains it."""
    untraced = dict(traced.untraced)
    leaves: dict[str, Inside] = {}
    for part in traced.parts:
        for node in part.gm.graph.nodes:
            if node.op == "call_module":
                path = part.absolute(cast(str, node.target))
                reason = untraced.get(path)
                why = f"torch.fx cannot trace its forward: {reason.split(': ', 1)[-1]}" if reason else "the trace keeps it as one call"
                leaves.setdefault(path, Inside(path, module_of(part, node), part, node, why))
    found = {}
    for norm in norms:
        holders = [path for path in leaves if norm.startswith(path + ".")]
        if holders:
            found[norm] = leaves[max(holders, key=len)]
    return found


def recorded_run(inside: Inside) -> Dataflow | str:
    """The leaf's run on tensors shaped as the trace recorded its inputs, or why it could not be run."""
    def example(node: fx.Node) -> Any:
        meta = node.meta.get("tensor_meta")
        if not isinstance(meta, TensorMetadata):
            raise LookupError(f"the trace recorded no single tensor for its input '{node.name}'")
        if meta.dtype.is_floating_point:
            return torch.randn(tuple(meta.shape)).to(meta.dtype)
        return torch.zeros(tuple(meta.shape), dtype=meta.dtype)

    try:
        args = fx.node.map_arg(inside.node.args, example)
        kwargs = fx.node.map_arg(inside.node.kwargs, example)
        return record_dataflow(inside.module, tuple(args), dict(kwargs))
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
