"""``neck.level`` for a model traced as a row of parts whose head is no part: the levels a head reads, from a run.

A model whose own forward fx cannot follow (YOLO-World and YOLOE branch on their text features' batch) is
traced part by part: each layer alone. A head that does not trace either (it reads the text features too)
is then no graph at all, and no graph holds the maps it reads side by side, so the pyramid rules of
``locators`` find nothing. The maps are still the outputs of traced parts: one run of the model records
which tensors each module call returned and inside which calls each tensor was read
(``graph.probe.record_dataflow``). A module that is no part and reads, from outside itself, maps of several
strides that parts after the extractor returned is the head; those part outputs are the levels. Each is the
output node of its part's graph, where an insertion edits that part; the other levels live in other graphs,
so a level found here carries no extra inputs (a multi-input plugin is refused there, with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx as fx

from plugsurgeon.graph.probe import record_dataflow
from plugsurgeon.graph.shapes import flat_tensors
from plugsurgeon.sites.graphview import GraphView


def levels_read_across_parts(views: Sequence[GraphView], extractor_parts: set[int]) -> list[tuple[int, fx.Node]]:
    """(part index, node) for each level a head outside every part reads, in part order; [] when none does.

    Args:
        views: every traced part's view, in trace order.
        extractor_parts: indices of the parts that hold the extractor (its stages and backbone).

    Returns:
        The output node of each part whose map the head reads.
    """
    if len(views) < 2 or any(not v.part.path for v in views):
        return []
    image = _image(views)
    if image is None:
        return []
    try:
        flow = record_dataflow(views[0].model, (torch.zeros(image.shape, dtype=image.dtype),), {})
    except Exception:  # noqa: BLE001 - the trace ran this model; a failure here means no levels found, never an error
        return []
    index = {v.part.path: i for i, v in enumerate(views)}
    made_by: dict[int, int] = {}  # tensor id -> index of the part whose call returned it
    for path, calls in flow.calls.items():
        if path in index and calls:
            for tensor in calls[0].outputs:
                made_by.setdefault(tensor, index[path])
    read_in: dict[str, set[int]] = {}  # module call -> parts whose returned tensors an op inside it read
    for tensor, stacks in flow.readers.items():
        if tensor in made_by:
            for stack in stacks:
                for path in stack:
                    read_in.setdefault(path, set()).add(made_by[tensor])
    heads: list[tuple[str, list[int]]] = []
    for path in flow.calls:  # in the order the calls first ran
        if not path or any(path == p or path.startswith(p + ".") for p in index):
            continue
        outside = [i for i in sorted(read_in.get(path, ())) if not _inside(views[i].part.path, path)]
        maps = [i for i in outside if _returned(views[i]) is not None]
        if len({_returned_shape(views[i])[2:] for i in maps}) > 1 and not extractor_parts & set(maps):
            heads.append((path, maps))
    outermost = [(p, maps) for p, maps in heads if not any(p.startswith(q + ".") for q, _m in heads)]
    if not outermost:
        return []
    return [(i, node) for i in outermost[-1][1] if (node := _returned(views[i])) is not None]


def _inside(part: str, call: str) -> bool:
    return part == call or part.startswith(call + ".")


def _returned(view: GraphView) -> fx.Node | None:
    """The one N,C,H,W map a part returns, as a node of its graph."""
    if view.output_node is None:
        return None
    returned = [n for n in view.output_node.all_input_nodes if n in view.position]
    if len(returned) != 1:
        return None
    shape = view.shape(returned[0])
    return returned[0] if shape is not None and len(shape) == 4 and view.nchw(returned[0]) else None


def _returned_shape(view: GraphView) -> tuple[int, ...]:
    node = _returned(view)
    return (view.shape(node) or ()) if node is not None else ()


def _image(views: Sequence[GraphView]) -> torch.Tensor | None:
    """The image the model was traced at: the input of the first part fed it."""
    for view in views:
        maps = [t for t in flat_tensors(view.part.example_inputs) if t.dim() == 4]
        if len(maps) == 1 and tuple(maps[0].shape[-2:]) == tuple(view.part.input_spatial or ()):
            return maps[0]
    return None
