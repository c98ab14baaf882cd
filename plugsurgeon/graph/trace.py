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

import inspect
import operator
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten, tree_map

from plugsurgeon import progress
from plugsurgeon.errors import TraceError
from plugsurgeon.graph.guards import attributes_preserved, hooks_suspended, training_flags_kept
from plugsurgeon.graph.shape_conditions import (
    ConditionDecider,
    ConditionKey,
    conditions_of,
    guard_message,
    record_condition,
    shape_expression,
    with_conditions,
)
from plugsurgeon.graph.shapes import (
    DEFAULT_INPUT_SHAPE,
    fake_inputs_like,
    flat_tensors,
    propagate_shapes,
    record_module_inputs,
    validate_input_shape,
)

OWNER = "ps_owner"  # node.meta key: path (relative to the traced root) of the innermost module call
OWNER_CALL = "ps_owner_call"  # which call of that module, when it runs more than once
LOCAL = "ps_local"  # index of the node inside that call, see module docstring
_ASSERT_TARGETS = {"_assert", "_assert_is_none"}

# What else is a leaf, besides the rules of ``is_leaf_type``: classes named one by one, and checks that
# packages above this one register (the plugin registry asks whether a class is a registered plugin's;
# this package cannot import it).
_extra_leaf_types: set[type] = set()
_leaf_checks: list[Callable[[type], bool]] = []


def register_leaf(cls: type) -> type:
    """Make ``cls`` (and its subclasses) a leaf for every plugsurgeon tracer: one call, never traced through."""
    _extra_leaf_types.add(cls)
    return cls


def register_leaf_check(check: Callable[[type], bool]) -> Callable[[type], bool]:
    """Make every module class for which ``check(cls)`` is true a leaf for every plugsurgeon tracer.

    The check is asked at each module call the tracer meets, so what it answers may change (the plugin
    registry registers ``is_plugin_class``: a class is a leaf while it is a registered plugin's).
    Registering the same check again does nothing.
    """
    if check not in _leaf_checks:
        _leaf_checks.append(check)
    return check


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_leaf_type(module: nn.Module) -> bool:
    if isinstance(module, tuple(_extra_leaf_types)) or any(check(type(module)) for check in _leaf_checks):
        return True
    mod = type(module).__module__
    if isinstance(module, _CONTAINERS):
        return False
    if mod.startswith(("torch.nn", "torch.ao.nn")):
        return True
    if _extends_torch_layer(type(module)):
        # A subclass of a torch layer (timm's BatchNormAct2d, Conv2dSame, StdConv2d) is still that
        # layer to the rest of the model: one value in, one out. Tracing through it would bake its
        # mode checks into the graph and hide the layer from folding and site finding.
        return True
    # Layers from other libraries (torchvision's FrozenBatchNorm2d, StochasticDepth, DeformConv2d)
    # hold state or read self.training: tracing through them would bake the mode into the graph.
    # A layer with its own tensors whose children are stateless decorations (timm's
    # FrozenBatchNormAct2d: a frozen BN with its drop and act) is one layer too. Stateless helpers
    # (FPN's LastLevelMaxPool) are traced through, as fx would.
    own_state = next(module.parameters(recurse=False), None) is not None or next(module.buffers(recurse=False), None) is not None
    children = list(module.children())
    if children:
        return own_state and not any(_holds_state(child) for child in children)
    return own_state or reads_training_flag(type(module))


def _extends_torch_layer(cls: type) -> bool:
    return any(
        base.__module__.startswith(("torch.nn", "torch.ao.nn")) and base not in (nn.Module, *_CONTAINERS)
        for base in cls.__mro__[1:]
    )


def _holds_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


_training_flag_cache: dict[type, bool] = {}


def reads_training_flag(cls: type[nn.Module]) -> bool:
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
    inputs: dict[str, int] = field(default_factory=dict)  # node passed straight in -> index of its placeholder
    conditions: dict[ConditionKey, Any] = field(default_factory=dict)  # shape conditions decided in it (shape_conditions)


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
    module: nn.Module | None = None
    counter: int = 0
    conditions: dict[ConditionKey, Any] = field(default_factory=dict)


class _CountedProxy(fx.Proxy):
    """A Proxy that can be iterated when the number of values is in the call itself.

    ``list(x.chunk(2, 1))`` (Ultralytics' C2f, CSP blocks) makes fx give up, because a Proxy has
    no length; for ``chunk(n)`` and ``split([sizes])`` the count is right there in the arguments.
    """

    def __iter__(self):
        count = _static_count(self.node)
        if count is None:
            # fx itself handles ``a, b = proxy`` by reading the caller's bytecode; that caller is one
            # frame further out now, so look there.
            frame = inspect.currentframe()
            count = _unpacked_count(frame.f_back if frame is not None else None)
        if count is None:
            return super().__iter__()
        return iter([self[i] for i in range(count)])  # type: ignore[index]  # fx adds Proxy's magic methods at import

    def __len__(self) -> int:
        count = _static_count(self.node)
        return super().__len__() if count is None else count


def _unpacked_count(frame: types.FrameType | None) -> int | None:
    import dis
    from bisect import bisect_left

    if frame is None:
        return None
    instructions = list(dis.get_instructions(frame.f_code))
    index = bisect_left(instructions, frame.f_lasti, key=lambda i: i.offset)
    if index < len(instructions) and instructions[index].opname == "UNPACK_SEQUENCE":
        return int(instructions[index].argval)
    return None


def _static_count(node: fx.Node) -> int | None:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function") or name not in ("chunk", "split"):
        return None
    args = list(node.args[1:]) if node.op == "call_method" else list(node.args[1:])
    count = args[0] if args else node.kwargs.get("chunks", node.kwargs.get("split_size_or_sections", node.kwargs.get("split_size")))
    if name == "chunk" and isinstance(count, int):
        return count
    if name == "split" and isinstance(count, (list, tuple)):
        return len(count)
    return None


class PlugsurgeonTracer(fx.Tracer):
    """An fx tracer that numbers nodes per module call.

    ``shallow=True`` makes every module called directly from the root's forward a leaf, which is
    how an owner is traced for editing: its children keep their own classes and forwards. Children
    that hold no parameters or buffers and are not leaves elsewhere (torchvision FPN's
    ``extra_blocks``, which returns a tuple the owner iterates) are traced through, as in the model trace.
    """

    def __init__(self, shallow: bool = False, trace_through: frozenset[str] = frozenset(),
                 opaque: frozenset[int] = frozenset(), example: tuple[tuple, dict] | None = None,
                 fake_mode: FakeTensorMode | None = None, replay: dict[ConditionKey, Any] | None = None) -> None:
        super().__init__()
        # Shape conditions (``if x.shape[1] != 0``) are decided at the example's shapes, or as an earlier trace did.
        self.decider = ConditionDecider(example, fake_mode, replay or {})
        self.shallow = shallow
        self.trace_through = trace_through
        self.opaque = opaque  # ids of modules fx cannot trace through: kept as leaves
        self.failed_in: tuple[str, nn.Module] | None = None
        self.calls: list[CallRecord] = []
        self._frames: list[_Frame] = []
        self._call_counts: dict[str, int] = {}
        self._making_root_args = False
        self._local_names: dict[int, dict[int, str]] = {}

    @property
    def conditions(self) -> dict[ConditionKey, Any]:
        """The shape conditions decided in the traced module's own call (and the calls inside it)."""
        return self._frames[0].conditions if self._frames else {}

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self._specialise(obj, bool, "bool")
        return super().to_bool(obj) if value is None else value

    def iter(self, obj: fx.Proxy) -> Iterator:
        count = self._specialise(obj, len, "len")  # ``for size in x.shape[2:]``
        return super().iter(obj) if count is None else iter([obj[i] for i in range(count)])  # type: ignore[index]

    def _specialise(self, obj: fx.Proxy, of: Callable[[Any], Any], what: str) -> Any:
        """``of(value)`` of a shape condition at the traced shapes (graph/shape_conditions.py), with a
        guard in the graph that it stays so; None where it is no such condition or cannot be known."""
        node = obj.node
        expression = shape_expression(node)
        if expression is None or not self._frames:
            return None
        terms, numbered, named = expression
        frame = self._frames[-1]
        key: ConditionKey = (frame.path, frame.counter, f"{what}({numbered})")
        try:
            value = of(self.decider.decide(node, terms, key, self.root, self._run_outside_trace))
        except LookupError:
            return None
        for outer in self._frames:  # each enclosing call keeps it, by the frame's path relative to its own
            if outer.path == frame.path or frame.path.startswith(outer.path + ".") or not outer.path:
                relative = frame.path[len(outer.path) + 1:] if outer.path else frame.path
                record_condition(outer.conditions, (relative, *key[1:]), value)
        where = type(frame.module).__name__ if frame.module is not None else "a forward"
        if of is len:
            check, condition = self.create_proxy("call_function", len, (obj,), {}) == value, f"len({named})"
        else:
            check, condition = obj if value else self.create_proxy("call_function", operator.not_, (obj,), {}), named
        self.create_proxy("call_function", torch._assert, (check, guard_message(where, condition, value)), {})
        return value

    def _run_outside_trace(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        # Eval mode keeps BatchNorm from counting a fake batch.
        with training_flags_kept(module, False):
            return module(*args, **kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        return attr_val if self.decider.evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.opaque:
            return True
        if self.shallow and len(self._frames) == 1:
            if module_qualified_name in self.trace_through and not is_leaf_type(m):
                return False
            return is_leaf_type(m) or _holds_state(m)
        return is_leaf_type(m)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _CountedProxy(node, self)

    def path_of_module(self, mod: nn.Module) -> str:
        """The path by which the calling forward reaches ``mod``.

        fx names a module by its first path in the model, so a module instance that several blocks
        share (Ultralytics' one SiLU behind every Conv) would be named after the first block
        everywhere, and the block that calls it could not be edited on its own. Naming it from the
        caller keeps every call site's own path.
        """
        if self._frames:
            frame = self._frames[-1]
            if frame.module is not None:
                local = self._names_under(frame.module).get(id(mod))
                if local is not None:
                    return f"{frame.path}.{local}" if frame.path else local
        return super().path_of_module(mod)

    def _names_under(self, module: nn.Module) -> dict[int, str]:
        names = self._local_names.get(id(module))
        if names is None:
            names = {}
            for name, child in module.named_modules(remove_duplicate=False):
                if name:
                    names.setdefault(id(child), name)
            self._local_names[id(module)] = names
        return names

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        # Placeholders and the asserts fx adds for concrete args are not part of the forward body.
        self._making_root_args = True
        try:
            made = super().create_args_for_root(root_fn, is_module, concrete_args)
        finally:
            self._making_root_args = False
        self.decider.bind(self.root, root_fn, [n for n in self.graph.nodes if n.op == "placeholder"], concrete_args)
        return made

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
        if self.decider.evaluating:  # a module run on fake tensors to decide a shape condition: not traced
            return forward(*args, **kwargs)
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        parent = self._frames[-1]
        slot = parent.counter
        parent.counter += 1  # the slot of this call in the parent, see module docstring
        call = self._call_counts.get(path, 0)
        self._call_counts[path] = call + 1
        record = CallRecord(path, call, _concrete_args_of(m.forward, args, kwargs), (parent.path, parent.call), slot,
                            inputs=_direct_inputs(m.forward, args, kwargs))
        self.calls.append(record)
        self._frames.append(_Frame(path, call, m, conditions=record.conditions))
        try:
            result = super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module whose own forward could not be traced
                self.failed_in = (path, m)
            raise
        finally:
            self._frames.pop()
        record.concrete_args = with_conditions(record.concrete_args, record.conditions)
        if isinstance(result, fx.Proxy):
            record.output = result.node.name
        return result

    def trace(self, root, concrete_args=None):
        self._frames = [_Frame("", 0, root if isinstance(root, nn.Module) else None)]
        self.calls = []
        self._call_counts = {}
        return super().trace(root, concrete_args)


def _concrete_args_of(forward, args, kwargs, is_input=lambda v: isinstance(v, fx.Proxy)) -> dict[str, Any] | None:
    """The ``concrete_args`` that make fx see this call's input structure when tracing the module alone.

    A plain input stays an ordinary placeholder; containers of inputs become pytrees of ``fx.PH``;
    anything else (None, flags, sizes) is specialised to the value it had in this call.
    """
    try:
        signature = inspect.signature(forward)
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    # Defaults are part of the call too: traced alone, a module whose caller left ``shortcut=None``
    # out would otherwise get a placeholder there, and ``if shortcut is None`` would take the other branch.
    bound.apply_defaults()
    concrete: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if is_input(value) or (_is_variadic(signature.parameters[name]) and not value):
            continue
        concrete[name] = tree_map(lambda v: fx.PH if is_input(v) else v, value)
    return concrete or None


def fixed_optionals(concrete_args: dict[str, Any] | None) -> list[str]:
    """The arguments a trace fixed to a value rather than kept as inputs (``labels=None``, ``return_dict=None``)."""
    return [name for name, value in (concrete_args or {}).items()
            if not any(leaf is fx.PH for leaf in tree_flatten(value)[0])]


def _direct_inputs(forward, args, kwargs) -> dict[str, int]:
    """Nodes passed as whole arguments, by the position of the parameter (= placeholder) that receives them."""
    try:
        signature = inspect.signature(forward)
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {}
    names = list(signature.parameters)
    return {value.node.name: names.index(name) for name, value in bound.arguments.items() if isinstance(value, fx.Proxy)}


def _is_variadic(parameter: inspect.Parameter) -> bool:
    return parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _without_variadics(module: nn.Module) -> nn.Module:
    """``module`` itself, or a view of it whose forward takes only the named parameters.

    fx turns a root ``forward(self, x, *args, **kwargs)`` (Ultralytics' models) into a ``*args``
    placeholder that the body then splats, which it cannot trace; a call of the model passes
    nothing there, so a forward without them traces the same computation.
    """
    forward = type(module).forward
    try:
        parameters = list(inspect.signature(forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return module
    if not any(_is_variadic(p) for p in parameters):
        return module
    named = [p.name for p in parameters if not _is_variadic(p)]
    if not all(name.isidentifier() for name in named) or any(p.kind is p.KEYWORD_ONLY for p in parameters):
        return module
    source = f"def forward(self, {', '.join(named)}):\n    return _forward(self, {', '.join(named)})\n"
    namespace: dict[str, Any] = {"_forward": forward}
    exec(compile(source, f"<plugsurgeon forward of {type(module).__name__}>", "exec"), namespace)  # noqa: S102 - names checked above
    # The defaults stay: fx gives an argument fixed by concrete_args its default, and one without is required.
    namespace["forward"].__defaults__ = tuple(p.default for p in parameters if not _is_variadic(p) and p.default is not p.empty) or None
    view: nn.Module = object.__new__(type(type(module).__name__, (type(module),), {"forward": namespace["forward"]}))
    view.__dict__ = module.__dict__  # the same module: parameters, children and flags are shared, not copied
    return view


class ModuleTraceError(Exception):
    """fx failed; ``failed_in`` is the (path, module) of the innermost call it failed inside, if not the root's own forward."""

    def __init__(self, cause: Exception, failed_in: tuple[str, nn.Module] | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.failed_in = failed_in


def trace_module(module: nn.Module, concrete_args: dict[str, Any] | None = None, *, shallow: bool = False,
                 trace_through: frozenset[str] = frozenset(), opaque: frozenset[int] = frozenset(),
                 example: tuple[tuple, dict] | None = None, fake_mode: FakeTensorMode | None = None) -> tuple[fx.GraphModule, PlugsurgeonTracer]:
    """Trace ``module`` (see PlugsurgeonTracer). Shape conditions are decided at ``example``'s shapes
    (args, kwargs of one call), or as the trace that made ``concrete_args`` decided them."""
    tracer = PlugsurgeonTracer(shallow=shallow, trace_through=trace_through, opaque=opaque, example=example,
                               fake_mode=fake_mode, replay=conditions_of(concrete_args))
    # The caller's hooks on modules traced through would run on Proxies (and record them).
    with warnings.catch_warnings(), attributes_preserved(module), hooks_suspended(module):
        # fx warns that it cannot assert on specialised container inputs; surgery keeps the structure.
        warnings.simplefilter("ignore", UserWarning)
        try:
            graph = tracer.trace(_without_variadics(module), concrete_args=concrete_args)
            # Built before the module's attributes are restored: fx keeps tensor constants it met as
            # attributes of the root (``_tensor_constant0``), and the GraphModule copies them from there.
            gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
        except Exception as error:  # noqa: BLE001 - fx raises many types
            raise ModuleTraceError(error, tracer.failed_in) from error
    return gm, tracer


_MAX_OPAQUE = 32


def trace_isolating(module: nn.Module, concrete_args: dict[str, Any] | None = None, example: tuple[tuple, dict] | None = None,
                    fake_mode: FakeTensorMode | None = None) -> tuple[fx.GraphModule, PlugsurgeonTracer, list[tuple[str, str]]]:
    """Trace ``module``, keeping as leaves the submodules whose own forward fx cannot follow.

    A detector whose head compares shapes in Python (Ultralytics' ``Detect`` in eval mode) is still
    traced whole around that head, so the backbone, the neck and their connections are one graph.
    Fails (ModuleTraceError) when ``module``'s own forward is the untraceable one. Returns the
    (path, reason) of the submodules kept opaque.
    """
    opaque: dict[int, tuple[str, str]] = {}
    while True:
        try:
            gm, tracer = trace_module(module, concrete_args, opaque=frozenset(opaque), example=example, fake_mode=fake_mode)
            return gm, tracer, list(opaque.values())
        except ModuleTraceError as error:
            if error.failed_in is None or id(error.failed_in[1]) in opaque or len(opaque) >= _MAX_OPAQUE:
                raise
            opaque[id(error.failed_in[1])] = (error.failed_in[0], _short(error.cause))


def placeholder_local(node: fx.Node) -> int:
    """Placeholders are numbered -1, -2, ... in signature order, apart from the body's 0, 1, ..."""
    index = [n for n in node.graph.nodes if n.op == "placeholder"].index(node)
    return -1 - index


def body_nodes(graph: fx.Graph) -> Iterator[fx.Node]:
    return (n for n in graph.nodes if LOCAL in n.meta)


def own_statements(graph: fx.Graph) -> dict[int, tuple]:
    """The statements of a module traced alone and shallowly (its children as leaves), numbered as
    ``TracedPart.statements`` numbers them; nodes spliced in afterwards carry no number."""
    return {node.meta[LOCAL]: (node.op, node.target) for node in body_nodes(graph) if node.meta.get(OWNER) == ""}


def relative_target(node: fx.Node, owner: str) -> Any:
    """The target of a node as the owner's own graph would name it."""
    target = node.target
    if node.op in ("call_module", "get_attr") and owner and isinstance(target, str):  # their targets are paths
        prefix = owner + "."
        return target[len(prefix):] if target.startswith(prefix) else target
    return target


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
    eval_structure: tuple | None = None  # the output's structure in eval mode (graph.shapes.output_structure)
    # What the part gave when run whole on fake tensors, per mode (True: train), filled by the first
    # pre-commit check: a later plan on the same trace (the model unchanged) does not run it again.
    outcomes: dict[bool, Any] = field(default_factory=dict)

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
        if node.op == "placeholder":  # an input of the part: its first statement is the place after it
            return [Scope("", 0, placeholder_local(node), "placeholder", None)]
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

    def input_scopes(self, node: fx.Node) -> list[Scope]:
        """Module forwards that receive ``node`` whole as an argument: there it is a placeholder.

        A value is readable there but not replaceable (other users outside still see the original),
        so these serve a multi-input plugin's extra inputs only.
        """
        return [Scope(r.path, r.call, -1 - r.inputs[node.name], "placeholder", None) for r in self.calls if node.name in r.inputs]

    def absolute(self, relative_path: str) -> str:
        return ".".join(p for p in (self.path, relative_path) if p)

    def statements(self, owner: str, call: int = 0) -> dict[int, tuple]:
        """The statements of one call of ``owner``'s forward as the model trace saw them: index ->
        (op, target as the owner names it); a non-leaf child's call is one ``call_module`` statement.
        Compare with ``own_statements`` of the owner traced alone."""
        found = {node.meta[LOCAL]: (node.op, relative_target(node, owner)) for node in body_nodes(self.gm.graph)
                 if node.meta.get(OWNER) == owner and node.meta.get(OWNER_CALL, 0) == call}
        prefix = owner + "." if owner else ""
        found.update({record.slot: ("call_module", record.path[len(prefix):]) for record in self.calls if record.parent == (owner, call)})
        return found


@dataclass
class Traced:
    """The traced parts of a model, with node shapes, and what could not be traced."""

    model: nn.Module
    parts: list[TracedPart]
    input_shape: tuple[int, ...]
    untraced: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # What each untraced submodule was called with, where one forward recorded it (empty tensors of the shapes
    # seen): deploy runs such a module alone to see its structure.
    untraced_inputs: dict[str, tuple[tuple, dict]] = field(default_factory=dict)
    # The fake mode shapes were propagated in; whole-model checks of the same trace share it (and the
    # fake copies of the model's tensors it memoises once the first of them converts them).
    fake_mode: FakeTensorMode | None = None
    fingerprint: tuple = ()  # the model's modules and tensors when traced (model_fingerprint)
    # The forward drew from torch's random generator while traced (``if torch.rand(1).item() < p:``
    # picks the branch fx records): its sites may depend on the seed (surgery/seeds.py traces again).
    drew_random: bool = False

    def describes(self, model: nn.Module) -> bool:
        """True if this is a trace of ``model`` as it is now: the same modules holding the same tensors."""
        return model is self.model and model_fingerprint(model) == self.fingerprint

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


def trace(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> Traced:
    """Trace ``model`` with torch.fx and propagate shapes on fake tensors (no memory, no real compute).

    What fx cannot follow is left out as small as possible: a submodule whose own forward does not
    trace becomes a leaf of the model's graph and its insides are traced in parts; a model whose own
    forward does not trace (torchvision's detectors) is traced in parts from the top. The model is
    not modified. Pass the trace to ``ps.find_sites``, or as ``traced=`` to ``ps.plan``/``ps.apply``
    to try several recipes without tracing again.

    Args:
        model: The model to trace.
        input_shape: The input it is traced at, N,C,H,W (at least 3 positive sizes).

    Returns:
        The traced parts with the shape of every node, and what could not be traced, with why.

    Raises:
        PlugsurgeonError: ``input_shape`` is not a list of positive sizes, or is too large.
        TraceError: The model does not run on an input of ``input_shape``.

    Examples:
        >>> traced = ps.trace(torchvision.models.resnet50(), (1, 3, 224, 224))
        >>> len(ps.find_sites(traced, "residual.branch"))
        16
    """
    input_shape = validate_input_shape(input_shape)
    refuse_torchscript(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    progress.step(f"tracing {type(model).__name__} at {'x'.join(map(str, input_shape))}")
    with torch.random.fork_rng(devices=[]):  # the caller's random state is theirs: a draw in forward leaves it
        before = torch.random.get_rng_state()
        traced = _PartTracer(model, input_shape, dtype).run()
        traced.drew_random = not torch.equal(before, torch.random.get_rng_state())
    traced.fingerprint = model_fingerprint(model)
    return traced


def refuse_torchscript(model: nn.Module) -> None:
    """A TorchScript module (``torch.jit.script`` or ``torch.jit.trace``) is compiled code: fx cannot
    trace it, it takes no hooks, and its attributes cannot be set. Refused before anything touches it,
    whether it is the model or a part of it."""
    for path, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            what = f"the model's submodule '{path}'" if path else f"this {type(module).__name__}"
            raise TraceError(
                f"{what} is a TorchScript module (made by torch.jit.script or torch.jit.trace): its forward "
                "is compiled code, which torch.fx cannot trace and surgery cannot edit",
                hint="pass the nn.Module it was made from, and script or trace the edited model afterwards",
            )


def model_fingerprint(model: nn.Module) -> tuple:
    """Which module objects sit at which paths, and which tensors (with their shapes and dtypes) they
    hold: what an in-place edit or a loaded state dict of another shape changes. Configuration kept in
    plain attributes (a conv's stride set by hand) is not seen."""
    modules = tuple((path, id(m), type(m)) for path, m in model.named_modules(remove_duplicate=False))
    tensors = tuple((name, id(t), tuple(t.shape), t.dtype) for name, t in
                    [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])
    return modules, tensors


def _spatial(shape) -> tuple[int, int] | None:
    return (int(shape[-2]), int(shape[-1])) if len(shape) >= 4 else None


class _PartTracer:
    """Traces the largest traceable pieces of a model, top-down; input structures of inner pieces
    come from one recorded forward (see shapes.record_module_inputs)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.model = model
        self.input_shape = input_shape
        self.dtype = dtype
        self.parts: list[TracedPart] = []
        self.untraced: list[tuple[str, str]] = []
        self.untraced_inputs: dict[str, tuple[tuple, dict]] = {}
        self._inputs: dict[str, tuple[tuple, dict]] | None = None
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)

    def inputs(self) -> dict[str, tuple[tuple, dict]]:
        if self._inputs is None:
            progress.step(f"running {type(self.model).__name__} once to record the inputs of its traceable parts")
            self._inputs = record_module_inputs(self.model, torch.zeros(self.input_shape, dtype=self.dtype))
        return self._inputs

    def run(self) -> Traced:
        self.visit("", self.model)
        if not self.parts:
            reason = self.untraced[0][1] if self.untraced else "no traceable submodule"
            raise TraceError(
                f"torch.fx cannot trace {type(self.model).__name__} nor any of its submodules: {reason}",
                hint="check that the model runs on an input of input_shape; fx cannot follow data-dependent control flow",
                cli_hint="check that the model runs on an input of --input-shape; fx cannot follow data-dependent control flow",
            )
        if len(self.parts) > 1:
            # Strides are relative to the image the backbone sees: a head part fed pyramid levels must
            # not measure its strides against its own (already downsampled) inputs.
            reference = max((p.input_spatial for p in self.parts if p.input_spatial), key=lambda s: s[0] * s[1], default=None)
            for part in self.parts:
                part.input_spatial = reference
        return Traced(self.model, self.parts, self.input_shape, self.untraced, self.untraced_inputs, self.fake_mode)

    def visit(self, path: str, module: nn.Module) -> None:
        if is_leaf_type(module):
            return
        kwargs: dict[str, Any]
        if path == "":
            # Traced as ``model(x)`` runs it: optional arguments at their defaults. Left as placeholders,
            # a branch like ``if labels is not None: loss = ...`` traces (Hugging Face's, once
            # config.problem_type is set) and makes ``labels`` a required input of the graph.
            args, kwargs = (torch.empty(self.input_shape, dtype=self.dtype),), {}
            concrete = _concrete_args_of(module.forward, args, kwargs, is_input=lambda v: isinstance(v, torch.Tensor))
        elif path in self.inputs():
            args, kwargs = self.inputs()[path]
            concrete = _concrete_args_of(module.forward, args, kwargs, is_input=lambda v: isinstance(v, torch.Tensor))
        else:
            args = None
        if args is not None:
            gm = None
            try:
                gm, tracer, opaque = trace_isolating(module, concrete, (args, kwargs), self.fake_mode)
                concrete = with_conditions(concrete, tracer.conditions)
            except ModuleTraceError as error:
                self.untraced.append((path, f"{type(module).__name__}: {_short(error.cause)}"))
                if path:
                    self.untraced_inputs[path] = (args, kwargs)
            else:
                try:
                    example = _example_call(module.forward, args, kwargs) if path else args
                    flops, structure = propagate_shapes(gm, fake_inputs_like(example, self.fake_mode), where=f"'{path}'" if path else "the model")
                except (TraceError, TypeError) as error:
                    if not path:
                        raise  # the model itself does not run on that input: the user's shape is wrong
                    self.untraced.append((path, f"{type(module).__name__}: {getattr(error, 'message', error)}"))
                    gm = None
            if gm is not None:
                first_image = next((a for a in flat_tensors(example) if a.dim() == 4), None)
                spatial = _spatial(first_image.shape) if first_image is not None else None
                self.parts.append(TracedPart(path, gm, tracer.calls, example, spatial, concrete, flops, structure))
                for inner, reason in opaque:
                    inner_path = ".".join(p for p in (path, inner) if p)
                    inner_module = self.model.get_submodule(inner_path)
                    self.untraced.append((inner_path, f"{type(inner_module).__name__}: {reason}"))
                    for name, child in inner_module.named_children():
                        self.visit(f"{inner_path}.{name}", child)
                return
        for name, child in module.named_children():
            self.visit(f"{path}.{name}" if path else name, child)


def _example_call(forward, args, kwargs) -> tuple[Any, ...]:
    """Recorded inputs in the order the traced GraphModule's forward takes them."""
    bound = inspect.signature(forward).bind(*args, **kwargs)
    return tuple(bound.arguments.values())




def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
