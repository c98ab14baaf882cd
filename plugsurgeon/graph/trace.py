"""Tracing with torch.fx, keeping track of which module's ``forward`` each node belongs to.

Surgery edits the smallest module whose forward contains a site. To map a node of the whole-model
graph onto the graph of that module alone, the tracer numbers nodes per module call ("frame"): a
node records its innermost frame and its index there, and a call to a non-leaf child occupies one
index in its parent (it is a single ``call_module`` node once the parent is traced alone with its
children as leaves). Tracing the owner shallowly reproduces the same numbering.

Models that fx cannot trace whole (detection models) are traced in parts: the largest submodules
that trace, found top-down, with input structures recorded by hooks on one eval forward.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_map

from plugsurgeon.errors import TraceError

OWNER = "ps_owner"  # node.meta key: path (relative to the traced root) of the innermost module call
OWNER_CALL = "ps_owner_call"  # which call of that module, when it runs more than once
LOCAL = "ps_local"  # index of the node inside that call, see module docstring
_ASSERT_TARGETS = {"_assert", "_assert_is_none"}

_extra_leaf_types: set[type] = set()


def register_leaf(cls: type) -> type:
    """Make ``cls`` a leaf for every plugsurgeon tracer (catalog plugins are registered here)."""
    _extra_leaf_types.add(cls)
    return cls


def is_leaf_type(module: nn.Module) -> bool:
    if isinstance(module, tuple(_extra_leaf_types)):
        return True
    mod = type(module).__module__
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if mod.startswith(("torch.nn", "torch.ao.nn")):
        return True
    # Childless layers from other libraries (torchvision's FrozenBatchNorm2d, StochasticDepth,
    # DeformConv2d) hold state or read self.training: tracing through them would bake the mode into
    # the graph. Stateless helpers (FPN's LastLevelMaxPool) are traced through, as fx would.
    if next(module.children(), None) is not None:
        return False
    has_state = next(module.parameters(recurse=False), None) is not None or next(module.buffers(recurse=False), None) is not None
    return has_state or reads_training_flag(type(module))


def _holds_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


_training_flag_cache: dict[type, bool] = {}


def reads_training_flag(cls: type) -> bool:
    if cls not in _training_flag_cache:
        try:
            _training_flag_cache[cls] = "self.training" in inspect.getsource(cls.forward)
        except (OSError, TypeError):
            _training_flag_cache[cls] = False
    return _training_flag_cache[cls]


@dataclass
class CallRecord:
    """One call of a non-leaf module met while tracing: enough to trace that module alone, and to
    see its output as one node (its slot) of the caller's graph."""

    path: str
    call: int
    concrete_args: dict[str, Any] | None
    parent: tuple[str, int] = ("", 0)
    slot: int = -1
    output: str | None = None  # name of the node the call returned, when it returned a single value


@dataclass(frozen=True)
class Scope:
    """A node as seen from one module's forward: insert there by tracing ``owner`` alone."""

    owner: str  # path relative to the traced part
    call: int
    local: int
    op: str  # what the owner's own graph has at ``local``
    target: Any


@dataclass
class _Frame:
    path: str
    call: int
    counter: int = 0


class PlugsurgeonTracer(fx.Tracer):
    """An fx tracer that numbers nodes per module call.

    ``shallow=True`` makes every module called directly from the root's forward a leaf, which is
    how an owner is traced for editing: its children keep their own classes and forwards. Children
    that hold no parameters or buffers and are not leaves elsewhere (torchvision FPN's
    ``extra_blocks``, which returns a tuple the owner iterates) are traced through, as in the model trace.
    """

    def __init__(self, shallow: bool = False) -> None:
        super().__init__()
        self.shallow = shallow
        self.calls: list[CallRecord] = []
        self._frames: list[_Frame] = []
        self._call_counts: dict[str, int] = {}
        self._making_root_args = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.shallow and len(self._frames) == 1:
            return is_leaf_type(m) or _holds_state(m)
        return is_leaf_type(m)

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # Placeholders and the asserts fx adds for concrete args are not part of the forward body.
        self._making_root_args = True
        try:
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        finally:
            self._making_root_args = False

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind not in ("placeholder", "output") and not self._making_root_args and self._frames:
            frame = self._frames[-1]
            node.meta[OWNER] = frame.path
            node.meta[OWNER_CALL] = frame.call
            node.meta[LOCAL] = frame.counter
            frame.counter += 1
        return node

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        parent = self._frames[-1]
        slot = parent.counter
        parent.counter += 1  # the slot of this call in the parent, see module docstring
        call = self._call_counts.get(path, 0)
        self._call_counts[path] = call + 1
        record = CallRecord(path, call, _concrete_args_of(m.forward, args, kwargs), (parent.path, parent.call), slot)
        self.calls.append(record)
        self._frames.append(_Frame(path, call))
        try:
            result = super().call_module(m, forward, args, kwargs)
        finally:
            self._frames.pop()
        if isinstance(result, fx.Proxy):
            record.output = result.node.name
        return result

    def trace(self, root, concrete_args=None):
        self._frames = [_Frame("", 0)]
        self.calls = []
        self._call_counts = {}
        return super().trace(root, concrete_args)


def _concrete_args_of(forward, args, kwargs, is_input=lambda v: isinstance(v, fx.Proxy)) -> dict[str, Any] | None:
    """The ``concrete_args`` that make fx see this call's input structure when tracing the module alone.

    A plain input stays an ordinary placeholder; containers of inputs become pytrees of ``fx.PH``;
    anything else (None, flags, sizes) is specialised to the value it had in this call.
    """
    try:
        bound = inspect.signature(forward).bind(*args, **kwargs)
    except TypeError:
        return None
    concrete: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if is_input(value):
            continue
        concrete[name] = tree_map(lambda v: fx.PH if is_input(v) else v, value)
    return concrete or None


@contextlib.contextmanager
def attributes_preserved(model: nn.Module):
    """Undo attribute writes that a forward makes while traced (torchvision's AnchorGenerator caches
    its anchors on itself; a failed trace would leave Proxies in the user's model)."""
    saved = []
    for module in model.modules():
        state = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        saved.append((module, state))
    try:
        yield
    finally:
        for module, state in saved:
            for key in [k for k in vars(module) if k not in state and k not in ("_parameters", "_buffers", "_modules")]:
                del module.__dict__[key]
            for key, value in state.items():
                if module.__dict__.get(key, _MISSING) is not value:
                    module.__dict__[key] = value


_MISSING = object()


def trace_module(module: nn.Module, concrete_args: dict[str, Any] | None = None, *, shallow: bool = False) -> tuple[fx.GraphModule, PlugsurgeonTracer]:
    tracer = PlugsurgeonTracer(shallow=shallow)
    with warnings.catch_warnings(), attributes_preserved(module):
        # fx warns that it cannot assert on specialised container inputs; surgery keeps the structure.
        warnings.simplefilter("ignore", UserWarning)
        graph = tracer.trace(module, concrete_args=concrete_args)
    name = type(module).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm, tracer


def body_nodes(graph: fx.Graph) -> Iterator[fx.Node]:
    return (n for n in graph.nodes if LOCAL in n.meta)


def relative_target(node: fx.Node, owner: str) -> Any:
    """The target of a node as the owner's own graph would name it."""
    if node.op in ("call_module", "get_attr") and owner:
        prefix = owner + "."
        return node.target[len(prefix):] if node.target.startswith(prefix) else node.target
    return node.target


@dataclass
class TracedPart:
    """One traced submodule: ``path`` in the model ("" for the whole model), its graph with shapes."""

    path: str
    gm: fx.GraphModule
    calls: list[CallRecord]
    example_inputs: tuple[Any, ...]
    input_spatial: tuple[int, int] | None  # the image size strides are measured against (the largest part input)
    concrete_args: dict[str, Any] | None = None
    flops: int | None = None

    def call_record(self, owner: str, call: int = 0) -> CallRecord | None:
        for record in self.calls:
            if record.path == owner and record.call == call:
                return record
        return None

    def call_count(self, owner: str) -> int:
        return sum(1 for record in self.calls if record.path == owner)

    def scopes(self, node: fx.Node) -> list[Scope]:
        """Every module forward in which ``node`` is one node, innermost first.

        A node that a module call returns is also that call's slot in the caller, and so on up.
        """
        owner = node.meta.get(OWNER, "")
        scopes = [Scope(owner, node.meta.get(OWNER_CALL, 0), node.meta.get(LOCAL, -1), node.op, relative_target(node, owner))]
        outputs = {(r.path, r.call): r for r in self.calls if r.output is not None}
        record = outputs.get((owner, scopes[0].call))
        while record is not None and record.output == node.name:
            parent_path, parent_call = record.parent
            child = record.path[len(parent_path) + 1 :] if parent_path else record.path
            scopes.append(Scope(parent_path, parent_call, record.slot, "call_module", child))
            record = outputs.get(record.parent)
        return scopes

    def absolute(self, relative_path: str) -> str:
        return ".".join(p for p in (self.path, relative_path) if p)


@dataclass
class Traced:
    """The traced parts of a model, with node shapes, and what could not be traced."""

    model: nn.Module
    parts: list[TracedPart]
    input_shape: tuple[int, ...]
    untraced: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def flops(self) -> int | None:
        """FLOPs of the traced parts (torch.utils.flop_counter, counted during shape propagation)."""
        counts = [p.flops for p in self.parts if p.flops is not None]
        return sum(counts) if counts else None

    @property
    def whole(self) -> bool:
        return len(self.parts) == 1 and self.parts[0].path == ""

    def part(self, path: str) -> TracedPart:
        for part in self.parts:
            if part.path == path:
                return part
        raise KeyError(path)


def trace(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> Traced:
    """Trace ``model`` (or its largest traceable parts) and propagate shapes on fake tensors."""
    from plugsurgeon.graph.shapes import fake_inputs_like, propagate_shapes, validate_input_shape

    input_shape = validate_input_shape(input_shape)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        gm, tracer = trace_module(model)
    except Exception as whole_error:  # fx raises many types; any of them means "not whole"
        return _trace_in_parts(model, input_shape, whole_error, dtype)
    example = (torch.empty(input_shape, dtype=dtype),)
    flops = propagate_shapes(gm, fake_inputs_like(example), where="the model")
    part = TracedPart("", gm, tracer.calls, example, _spatial(input_shape), None, flops)
    return Traced(model, [part], input_shape)


def _spatial(shape) -> tuple[int, int] | None:
    return (int(shape[-2]), int(shape[-1])) if len(shape) >= 4 else None


def _trace_in_parts(model: nn.Module, input_shape: tuple[int, ...], whole_error: Exception, dtype: torch.dtype) -> Traced:
    from plugsurgeon.graph.shapes import fake_inputs_like, propagate_shapes, record_module_inputs

    inputs = record_module_inputs(model, torch.zeros(input_shape, dtype=dtype))
    parts: list[TracedPart] = []
    untraced: list[tuple[str, str]] = [("", f"{type(model).__name__}: {_short(whole_error)}")]

    def visit(path: str, module: nn.Module) -> None:
        if is_leaf_type(module):
            return
        if path and path in inputs:
            args, kwargs = inputs[path]
            try:
                concrete = _concrete_args_of(module.forward, args, kwargs, is_input=lambda v: isinstance(v, torch.Tensor))
                gm, tracer = trace_module(module, concrete_args=concrete)
                example = _example_call(module.forward, args, kwargs)
                flops = propagate_shapes(gm, fake_inputs_like(example), where=f"'{path}'")
            except Exception as error:  # noqa: BLE001 - any failure means "look inside"
                untraced.append((path, f"{type(module).__name__}: {_short(error)}"))
            else:
                first_image = next((a for a in flat_tensors(example) if a.dim() == 4), None)
                spatial = _spatial(first_image.shape) if first_image is not None else None
                parts.append(TracedPart(path, gm, tracer.calls, example, spatial, concrete, flops))
                return
        for name, child in module.named_children():
            visit(f"{path}.{name}" if path else name, child)

    visit("", model)
    # Strides are relative to the image the backbone sees: a head part fed pyramid levels must not
    # measure its strides against its own (already downsampled) inputs.
    reference = max((p.input_spatial for p in parts if p.input_spatial), key=lambda s: s[0] * s[1], default=None)
    for part in parts:
        part.input_spatial = reference
    if not parts:
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__} nor any of its submodules: {_short(whole_error)}",
            hint="check that the model runs on an input of --input-shape; fx cannot follow data-dependent control flow",
        )
    return Traced(model, parts, input_shape, untraced)


def _example_call(forward, args, kwargs) -> tuple[Any, ...]:
    """Recorded inputs in the order the traced GraphModule's forward takes them."""
    bound = inspect.signature(forward).bind(*args, **kwargs)
    return tuple(bound.arguments.values())


def flat_tensors(tree) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
