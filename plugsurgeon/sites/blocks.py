"""The boxes of a model's picture: its traced graph grouped into blocks, with the data flow between them.

A box is one module call site of the model: a residual block (the module whose forward holds a
residual add, as the sites package finds it), a top-level layer, a pyramid's lateral conv. Which
modules become boxes is decided on the module tree that the traced graph saw, never on class names:

- a module that never runs a forward of its own (a ModuleList, a ModuleDict) is opened: its
  children are called one by one from the parent's forward, so they are the units of computation;
- a module that holds a residual block is opened, so each residual block is one box; so is a
  module that holds pyramid (or decoder) levels or merges in two or more of its parts (an FPN);
- then, within a budget of boxes, the shallowest and largest remaining modules of more than a few
  parts (or with such a part) are opened (a VGG ``features`` Sequential), never a residual block; a
  conv + norm + act, an SE block or a decoder block stays one box. Repeated blocks open together or
  not at all, and a group whose boxes would be densely connected (a DenseNet block) stays closed.

Nodes of an opened module's own forward lie in no box. Most are passed through (an interpolate, a
flatten): the edges go from the boxes that feed them to the boxes they feed. A merge of two or more
boxes' outputs there (an FPN's ``+``, a ``cat``) is kept as a small op box, so a pyramid's top-down
path stays visible. Each traced part gets an input and an output box.

The result is plain data (no modules, no tensors): a SurgeryReport keeps it, and the picture is drawn
from it whenever it is asked for.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from plugsurgeon.graph.trace import Traced, TracedPart
from plugsurgeon.sites.site import Site

MAX_BOXES = 40  # opening by size stops here; residual blocks are boxes whatever their number
_ONE_BOX = (
    6  # a module of at most this many parts reads as one box (conv + norm + act, an SE block, a dense layer)
)
_DENSE = 2  # a group of boxes with more edges among them than this many per box is a thicket: drawn closed
_MERGES = {
    operator.add,
    operator.iadd,
    torch.add,
    operator.mul,
    operator.imul,
    torch.mul,
    torch.cat,
    torch.concat,
    torch.stack,
    "add",
    "add_",
    "mul",
    "mul_",
    "cat",
}
_SYMBOLS = {
    "add": "+",
    "iadd": "+",
    "add_": "+",
    "mul": "×",
    "imul": "×",
    "mul_": "×",
    "cat": "cat",
    "concat": "cat",
    "stack": "stack",
}


@dataclass(frozen=True)
class Block:
    id: str  # unique in the graph: the module path, or "op:PART:NODE", "input:PART", "output:PART"
    kind: str  # "module", "op" (a merge in an opened forward), "input" or "output"
    path: str  # module path ("" for op, input and output boxes)
    label: str  # class name ("BasicBlock"), merge symbol ("+", "cat"), or the part for input/output
    params: int = 0  # parameters of the module (each tensor once)
    group: str = ""  # the nearest opened module around it ("layer2"); "" at the model's top level
    tags: tuple[
        str, ...
    ] = ()  # what the sites say it is: "residual", "stage 3 end", "backbone end", "neck", "head"
    shape: tuple[int, ...] = ()  # input boxes: the part's input shape


@dataclass(frozen=True)
class BlockGraph:
    model: str  # class name
    input_shape: tuple[int, ...]
    blocks: tuple[Block, ...]  # in graph order
    edges: tuple[tuple[str, str], ...]  # (from block id, to block id): data flow, each pair once
    params: int
    flops: int | None  # of the traced parts, torch.utils.flop_counter (2 per multiply-accumulate)
    groups: dict[str, str] = field(default_factory=dict)  # opened module path -> class name: the clusters
    untraced: tuple[str, ...] = ()  # modules left out of the trace (drawn as a note)
    site_blocks: dict[str, str] = field(default_factory=dict)  # site path -> id of the box holding its node
    # (role, site path) -> ids of the boxes holding the other nodes a multi-input plugin there reads
    # (ASFF's other pyramid levels, SEB's top-down input): a module inserted there has an edge from each.
    site_reads: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def block(self, block_id: str) -> Block:
        for block in self.blocks:
            if block.id == block_id:
                return block
        raise KeyError(block_id)

    def holder(self, path: str) -> Block | None:
        """The module box that is ``path`` or holds it (``layer2.1`` for ``layer2.1.cbam``)."""
        best = None
        for block in self.blocks:
            if block.kind == "module" and (path == block.path or path.startswith(block.path + ".")):
                if best is None or len(block.path) > len(best.path):
                    best = block
        return best


def block_graph(traced: Traced, sites: list[Site], *, max_boxes: int = MAX_BOXES) -> BlockGraph:
    """Group ``traced``'s nodes into boxes (see the module docstring); ``sites`` are ``locate(traced)``."""
    model = traced.model
    calls = _module_calls(traced)  # every module that ran a forward, with its class name
    tree = _tree(calls)
    anchors = {s.owner for s in sites if s.role == "residual.output" and s.owner}
    params = {path: _params(model, path) for path in tree if path}
    closed: set[str] = set()
    while True:
        boxes = _choose_boxes(tree, calls, anchors, _pyramids(sites), params, max_boxes, closed)
        graph_blocks, edges, node_box = _Builder(traced, calls, boxes, params).run()
        dense = _dense_groups(graph_blocks, edges) - closed
        if not dense:
            break
        closed |= dense
    blocks = _tag(graph_blocks, edges, sites, node_box, anchors)
    site_blocks: dict[str, Any] = {}
    for site in sites:
        holder = node_box.get((site.part, site.node))
        if holder is not None:
            site_blocks.setdefault(site.path, holder)
    site_reads = {
        (site.role, site.path): tuple(dict.fromkeys(b for b in (node_box.get((site.part, n)) for n in site.extra) if b))
        for site in sites
        if site.extra
    }
    groups = {b.group: calls.get(b.group, "") for b in blocks if b.group}
    return BlockGraph(
        model=type(model).__name__,
        input_shape=tuple(traced.input_shape),
        blocks=tuple(blocks),
        edges=tuple(edges),
        params=sum(p.numel() for p in model.parameters()),
        flops=traced.flops,
        groups=groups,
        untraced=tuple(path or "(model)" for path, _reason in traced.untraced) if not traced.whole else (),
        site_blocks=site_blocks,
        site_reads=site_reads,
    )


def _stack(part: TracedPart, node: fx.Node) -> list[str]:
    """Absolute paths of the module calls around ``node``, outermost first (a call_module's own target last)."""
    stack = [part.absolute(path) for path, _cls in node.meta.get("nn_module_stack", {}).values()]
    if part.path and part.path not in stack:
        stack.insert(0, part.path)
    if node.op == "call_module":
        target = part.absolute(str(node.target))
        if not stack or stack[-1] != target:
            stack.append(target)
    return stack


def _module_calls(traced: Traced) -> dict[str, str]:
    """Path -> class name of every module whose forward ran in the traced graphs, in graph order."""
    calls: dict[str, str] = {}
    for part in traced.parts:
        if part.path:
            calls.setdefault(part.path, type(traced.model.get_submodule(part.path)).__name__)
        for node in part.gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            for path in _stack(part, node):
                if path not in calls:
                    calls[path] = type(traced.model.get_submodule(path)).__name__
    return calls


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _tree(calls: dict[str, str]) -> dict[str, list[str]]:
    """Children of every module on the way to a called one ("" is the model), in the order they first ran
    (a module that never ran itself, a ModuleList, takes the place of its first child that did)."""
    tree: dict[str, list[str]] = {"": []}
    for path in calls:
        if path in tree:
            continue
        tree[path] = []
        while path:  # hang it under its parent, and the parent under its own when it is new too
            parent = _parent(path)
            known = parent in tree
            tree.setdefault(parent, []).append(path)
            if known:
                break
            path = parent
    return tree


def _params(model: nn.Module, path: str) -> int:
    return sum(p.numel() for p in model.get_submodule(path).parameters())


def _choose_boxes(tree, calls, anchors, pyramids, params, max_boxes, closed: set[str]) -> list[str]:
    holds_anchor = {_parent(a) for a in anchors} | set(pyramids)
    for anchor in [*anchors, *pyramids]:
        path = _parent(anchor)
        while path:
            holds_anchor.add(path)
            path = _parent(path)

    def must_open(path: str) -> bool:
        return bool(tree[path]) and (path not in calls or path in holds_anchor)

    def opened(paths: list[str]) -> list[str]:
        out = []
        for path in paths:
            out.extend(opened(tree[path]) if must_open(path) else [path])
        return out

    worth: dict[str, bool] = {}

    def may_open(path: str) -> bool:
        """Many parts, or a part that has many (a ViT's encoder: dropout, its 12 layers, a norm)."""
        if path not in worth:
            inner = opened(tree[path]) if path not in anchors and path not in closed else []
            worth[path] = len(inner) > _ONE_BOX or any(may_open(p) for p in inner)
        return worth[path]

    boxes = opened(tree[""])
    refused: set[str] = set()
    while True:
        candidates = [p for p in boxes if p not in refused and may_open(p)]
        if not candidates:
            return boxes
        # The shallowest first, so that no part of the model is drawn much finer than the rest; then
        # the largest. Repeated blocks (same class and size, a transformer's layers) are opened all
        # together or not at all, so that they look alike. min keeps the first of equals: graph order.
        first = min(candidates, key=lambda p: (p.count("."), -params.get(p, 0)))
        unit = [p for p in candidates if p.count(".") == first.count(".") and _same(p, first, calls, params)]
        inner = {p: opened(tree[p]) for p in unit}
        if len(boxes) - len(unit) + sum(len(i) for i in inner.values()) > max_boxes:
            refused.update(unit)
            continue
        boxes = [q for p in boxes for q in inner.get(p, [p])]


def _pyramids(sites: list[Site]) -> set[str]:
    """Modules that hold pyramid (or decoder) levels or merges in two or more of their parts (an FPN's
    lateral and output convs): opened like the holders of residual blocks, so the neck shows its levels."""
    parts: dict[str, set[str]] = defaultdict(set)
    for site in sites:
        if site.role.startswith("neck."):
            path = site.target or site.owner
            while path:
                parent = _parent(path)
                parts[parent].add(path)
                path = parent
    return {parent for parent, children in parts.items() if parent and len(children) >= 2}


def _dense_groups(blocks: list[Block], edges) -> set[str]:
    """Opened modules whose boxes are densely connected among themselves (a DenseNet block: each layer
    reads every earlier one). Open, they would be a thicket of edges; closed, one box says the same."""
    group = {b.id: b.group for b in blocks if b.kind == "module"}
    members: defaultdict[Any, int] = defaultdict(int)
    inside: defaultdict[Any, int] = defaultdict(int)
    for g in group.values():
        members[g] += 1
    for source, target in edges:
        if source in group and group[source] == group.get(target):
            inside[group[source]] += 1
    return {g for g, n in inside.items() if g and members[g] >= 4 and n > _DENSE * members[g]}


def _same(a: str, b: str, calls: dict[str, str], params: dict[str, int]) -> bool:
    return calls.get(a) == calls.get(b) and params.get(a, 0) == params.get(b, 0)


class _Builder:
    """Walks each part's graph once: which box each node lies in, and the edges between boxes."""

    def __init__(
        self, traced: Traced, calls: dict[str, str], boxes: list[str], params: dict[str, int]
    ) -> None:
        self.traced = traced
        self.calls = calls
        self.boxes = set(boxes)
        self.params = params
        self.blocks: dict[str, Block] = {}
        self.edges: dict[tuple[str, str], None] = {}
        self.node_box: dict[tuple[str, str], str] = {}

    def run(self):
        for part in self.traced.parts:
            self._part(part)
        return list(self.blocks.values()), list(self.edges), self.node_box

    def _group(self, path: str) -> str:
        parent = _parent(path)
        while parent and parent not in self.calls:
            parent = _parent(parent)
        return parent

    def _add_block(self, block: Block) -> str:
        self.blocks.setdefault(block.id, block)
        return block.id

    def _connect(self, sources, target: str) -> None:
        for source in sources:
            if source != target:
                self.edges[(source, target)] = None

    def _part(self, part: TracedPart) -> None:
        sources: dict[str, tuple[str, ...]] = {}  # node name -> boxes its value comes from
        where = part.path or "model"
        for node in part.gm.graph.nodes:
            if node.op == "placeholder":
                if "tensor_meta" in node.meta:  # a tensor (or a structure of them) from outside the part
                    shape = _shape(node)
                    sources[node.name] = (
                        self._add_block(Block(f"input:{part.path}", "input", "", where, shape=shape)),
                    )
                continue
            if node.op == "get_attr" or _reads_metadata(node):  # a parameter, or a size: no data flows
                sources[node.name] = ()
                continue
            feeding = tuple(
                dict.fromkeys(s for arg in node.all_input_nodes for s in sources.get(arg.name, ()))
            )
            if node.op == "output":
                if feeding:
                    self._connect(feeding, self._add_block(Block(f"output:{part.path}", "output", "", where)))
                continue
            box = next((p for p in _stack(part, node) if p in self.boxes), None)
            if box is not None:
                self._add_block(
                    Block(box, "module", box, self.calls[box], self.params.get(box, 0), self._group(box))
                )
                self._connect(feeding, box)
                sources[node.name] = (box,)
                self.node_box[(part.path, node.name)] = box
            elif len(feeding) >= 2 and _is_merge(node):
                owner = _stack(part, node)
                op = self._add_block(
                    Block(
                        f"op:{part.path}:{node.name}",
                        "op",
                        "",
                        _symbol(node),
                        group=owner[-1] if owner else part.path,
                    )
                )
                self._connect(feeding, op)
                sources[node.name] = (op,)
                self.node_box[(part.path, node.name)] = op
            else:
                sources[node.name] = feeding  # passed through: a resize, a flatten, an activation call
                if len(feeding) == 1:
                    self.node_box[(part.path, node.name)] = feeding[0]


def _reads_metadata(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``: an interpolate to ``size=c4.shape[-2:]`` takes no data from c4."""
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel")
    return (
        node.op == "call_function"
        and node.target is getattr
        and node.args[1:2] in (("shape",), ("dtype",), ("device",))
    )


def _is_merge(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in _MERGES


def _symbol(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return _SYMBOLS.get(name, name)


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else ()


def _tag(blocks: list[Block], edges, sites: list[Site], node_box, anchors) -> list[Block]:
    """What the sites say each box is. The backbone is the backbone's end and everything before it; the
    neck is what lies outside it on the way to a pyramid level (or decoder level); the head is the
    rest after the backbone's end."""
    tags: dict[str, list[str]] = defaultdict(list)

    def add(block_id: str | None, tag: str) -> None:
        if block_id is not None and tag not in tags[block_id]:
            tags[block_id].append(tag)

    for block in blocks:
        if block.path in anchors:
            add(block.id, "residual")
    ends, levels = [], []
    for site in sites:
        holder = node_box.get((site.part, site.node))
        if site.role == "stage":
            add(holder, f"stage {site.stage} end")
        elif site.role == "backbone" and holder is not None:
            add(holder, "backbone end")
            ends.append(holder)
        elif site.role == "neck.level" and holder is not None:
            levels.append(holder)
    after, before = defaultdict(list), defaultdict(list)
    for source, target in edges:
        after[source].append(target)
        before[target].append(source)
    backbone = _reach(ends, before) | set(ends)
    levels = [b for b in levels if b not in backbone]
    neck = (_reach(levels, before) | set(levels)) - backbone if ends else set(levels)
    later = _reach(ends, after) - backbone
    group = {b.id: b.group for b in blocks}
    # What a pyramid computes from its levels inside its own module (torchvision's extra max-pooled
    # level) is neck too; a head is a module of its own.
    neck_groups = {group[b] for b in neck if group.get(b)}
    neck |= {b for b in later if group.get(b) in neck_groups}
    head = later - neck
    kinds = {b.id: b.kind for b in blocks}
    for block_id in [*dict.fromkeys(neck)]:
        if kinds.get(block_id) == "module":
            add(block_id, "neck")
    for block_id in head:
        if kinds.get(block_id) == "module":
            add(block_id, "head")
    return [
        Block(b.id, b.kind, b.path, b.label, b.params, b.group, tuple(tags[b.id]), b.shape) for b in blocks
    ]


def _reach(starts, step) -> set[str]:
    seen, frontier = set(), list(starts)
    while frontier:
        for nxt in step[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def report_blocks(traced: Traced, sites: list[Site]) -> BlockGraph | None:
    """``block_graph`` for a SurgeryReport, or None if it fails: a picture is no reason for surgery to fail."""
    try:
        return block_graph(traced, sites)
    except Exception:  # noqa: BLE001 - drawing is optional; picture(report) then says there is nothing to draw
        return None
