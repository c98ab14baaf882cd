"""Python conditions on tensor shapes, decided at the traced input's shape and guarded in the graph.

torch.fx stops at ``if skip.shape[1] != 0:`` (smp's Linknet decoder) or ``if h % 32 != 0:`` (smp's input
check): a Proxy has no truth value. A condition computed from tensor shapes alone (``.shape``,
``.size()``, ``.dim()``, indexing and arithmetic on them, constants) on sizes the architecture fixes
(channel counts, ranks) has one value for every input, so the tracer takes that branch
(``PlugsurgeonTracer.to_bool``) and puts a ``torch._assert`` on the condition into the graph: a traced
(edited) forward called where the other branch would run raises, naming the condition, instead of
computing something else. A size counts as fixed when it is the same at a larger probe input (one more
sample, twice the height and width). Conditions on sizes that follow the input (the batch, the image
size: ``if h % 32 != 0``) still stop the trace, as do conditions on tensor values: the traced shape
stands for every input size, and a guard there would refuse sizes the original model accepts.

The values come from running the condition's ancestors on fake tensors (no compute, no memory); the
decision is kept with the call's ``concrete_args`` (``Specialised``), so tracing that call alone again
(the owner of an edit) takes the same branches without inputs.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

# Reads of a tensor that give its shape, never its values.
SHAPE_ATTRIBUTES = frozenset({"shape", "ndim"})
SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel"})

_INFIX = {
    operator.eq: "==", operator.ne: "!=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.floordiv: "//", operator.truediv: "/",
    operator.mod: "%", operator.pow: "**", operator.and_: "&", operator.or_: "|", operator.xor: "^",
}
_PREFIX = {operator.neg: "-", operator.not_: "not ", operator.pos: "+", operator.invert: "~"}

# (frame path relative to the call, statement index in that frame, the condition with its tensors numbered)
ConditionKey = tuple[str, int, str]


class Specialised(dict):
    """``concrete_args`` for fx, carrying what a trace decided in that call on the shapes it saw:
    condition -> value (None where two calls decided differently: not decidable without inputs)."""

    conditions: dict[ConditionKey, Any]


def with_conditions(concrete: dict[str, Any] | None, conditions: dict[ConditionKey, Any]) -> dict[str, Any] | None:
    """``concrete`` carrying ``conditions`` (``concrete`` itself when there are none)."""
    if not conditions:
        return concrete
    specialised = Specialised(concrete or {})
    specialised.conditions = dict(conditions)
    return specialised


def conditions_of(concrete: Any) -> dict[ConditionKey, Any]:
    return dict(getattr(concrete, "conditions", {})) if isinstance(concrete, Specialised) else {}


def record_condition(conditions: dict[ConditionKey, Any], key: ConditionKey, value: Any) -> None:
    """Keep ``value`` for ``key``; a second, different value makes it undecidable (None)."""
    if key in conditions and conditions[key] != value:
        conditions[key] = None
    else:
        conditions[key] = value


def shape_expression(node: fx.Node) -> tuple[list[fx.Node], str, str] | None:
    """The nodes of the expression ``node`` is (from the reads of tensor shapes on), and its source
    text twice: with the tensors numbered (the same in any trace of the call) and with their names
    (for messages). None when ``node`` reads anything but shapes and constants."""
    tensors: list[fx.Node] = []
    reads: list[fx.Node] = []
    terms: list[fx.Node] = []

    def read(node: fx.Node, text: str) -> str:
        if node not in reads:
            reads.append(node)
        return text

    def name(tensor: fx.Node, numbered: bool) -> str:
        if tensor not in tensors:
            tensors.append(tensor)
        return f"t{tensors.index(tensor)}" if numbered else str(tensor.target if tensor.op == "placeholder" else tensor.name)

    def render(value: Any, numbered: bool) -> str | None:
        if isinstance(value, fx.Node):
            return render_node(value, numbered)
        if isinstance(value, (tuple, list)):
            items = [render(v, numbered) for v in value]
            return None if None in items else f"({', '.join(str(i) for i in items)}{',' if len(items) == 1 else ''})"
        if isinstance(value, slice):
            parts = [render(p, numbered) if p is not None else "" for p in (value.start, value.stop, value.step)]
            return None if None in parts else ":".join(str(p) for p in (parts if parts[2] else parts[:2]))
        if value is None or isinstance(value, (bool, int, float, str, torch.Size)):
            return repr(value)
        return None

    def render_node(node: fx.Node, numbered: bool) -> str | None:
        if node not in terms:
            terms.append(node)
        args = node.args
        if node.op == "call_function" and node.target is getattr and len(args) == 2 and args[1] in SHAPE_ATTRIBUTES \
                and isinstance(args[0], fx.Node):
            return read(node, f"{name(args[0], numbered)}.{args[1]}")
        if node.op == "call_method" and node.target in SHAPE_METHODS and args and isinstance(args[0], fx.Node):
            positional = [render(a, numbered) for a in args[1:]]
            keywords = {k: render(v, numbered) for k, v in node.kwargs.items()}
            if None in positional or None in keywords.values():
                return None
            rest = [*map(str, positional), *(f"{k}={v}" for k, v in keywords.items())]
            return read(node, f"{name(args[0], numbered)}.{node.target}({', '.join(rest)})")
        if node.op != "call_function" or node.kwargs:
            return None
        if node.target is operator.getitem and len(args) == 2:
            base, index = render(args[0], numbered) if isinstance(args[0], fx.Node) else None, render(args[1], numbered)
            return None if base is None or index is None else f"{base}[{index.strip('()') if isinstance(args[1], tuple) else index}]"
        if node.target in _INFIX and len(args) == 2:
            left, right = render(args[0], numbered), render(args[1], numbered)
            return None if left is None or right is None else f"({left} {_INFIX[node.target]} {right})"
        if node.target in _PREFIX and len(args) == 1:
            operand = render(args[0], numbered)
            return None if operand is None else f"({_PREFIX[node.target]}{operand})"
        return None

    numbered = render_node(node, True)
    if numbered is None or not reads:
        return None
    named = render_node(node, False)
    return terms, _unwrap(numbered), _unwrap(named or numbered)


def _unwrap(text: str) -> str:
    return text[1:-1] if text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]) else text


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def evaluate(node: fx.Node, values: dict[fx.Node, Any], root: nn.Module, call: Callable[[nn.Module, tuple, dict], Any]) -> Any:
    """The value of ``node``, computing each ancestor not in ``values`` (which memoises them) in graph
    order. Placeholders must be in ``values``; ``call`` runs a module (the tracer's own way, outside the trace)."""
    needed: list[fx.Node] = []
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen or current in values:
            continue
        seen.add(current)
        if current.op == "placeholder":
            raise KeyError(f"no example value for input '{current.target}'")
        needed.append(current)
        stack.extend(current.all_input_nodes)
    if not needed:
        return values[node]
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    for current in sorted(needed, key=order.__getitem__):
        args = fx.node.map_arg(current.args, values.__getitem__)
        kwargs = fx.node.map_arg(current.kwargs, values.__getitem__)
        if current.op == "get_attr":
            value: Any = root
            for attribute in str(current.target).split("."):
                value = getattr(value, attribute)
        elif current.op == "call_module":
            value = call(root.get_submodule(str(current.target)), tuple(args), dict(kwargs))
        elif current.op == "call_method":
            value = getattr(args[0], str(current.target))(*args[1:], **kwargs)
        elif current.op == "call_function":
            value = current.target(*args, **kwargs)  # type: ignore[operator]
        else:
            raise KeyError(f"cannot evaluate a {current.op} node")
        values[current] = value
    return values[node]


def larger(shape: torch.Size) -> tuple[int, ...]:
    """A shape one more sample and twice the extent of ``shape``: N,C,H,W -> N+1,C,2H,2W; N,L -> N+1,2L."""
    dims = list(shape)
    if len(dims) >= 2:
        dims[0] += 1
        first_extent = 2 if len(dims) >= 3 else 1
        dims[first_extent:] = [2 * d for d in dims[first_extent:]]
    return tuple(dims)


def guard_message(where: str, condition: str, value: Any) -> str:
    """What the guard says when a later input makes the condition come out differently."""
    return (f"{where} was traced by plugsurgeon where `{condition}` is {value!r}, and the edited forward keeps only "
            "that branch; this input changes it. Trace the model at this input's shape (input_shape=...) and apply the surgery again")


class ConditionDecider:
    """Decides shape conditions for one trace: replayed from an earlier trace of the same call
    (``replay``), or computed on fake tensors from the example inputs the trace is made at."""

    def __init__(self, example: tuple[tuple, dict] | None, fake_mode: FakeTensorMode | None,
                 replay: dict[ConditionKey, Any]) -> None:
        self.example = example
        self.fake_mode = fake_mode
        self.replay = replay
        self.evaluating = False  # set while modules run for real (on fake tensors), outside the trace
        self._inputs: dict[fx.Node, Any] = {}  # placeholder -> example value, as given
        self._values: dict[fx.Node, Any] = {}  # node -> fake value, memoised across conditions
        self._probe: dict[fx.Node, Any] = {}  # the same at a larger input (``larger``)

    def bind(self, root: nn.Module, forward: Callable[..., Any], placeholders: list[fx.Node], concrete_args: dict[str, Any] | None) -> None:
        """Pair the trace's placeholders with the example's values, in the order fx creates them:
        one per parameter, or one per leaf of a parameter fixed by ``concrete_args``. Left unpaired
        (conditions then undecidable) where the counts do not match."""
        if self.example is None:
            return
        args, kwargs = self.example
        try:
            signature = inspect.signature(inspect.unwrap(forward))
            bound = signature.bind(root, *args, **kwargs)
        except (TypeError, ValueError):
            return
        bound.apply_defaults()
        names = list(signature.parameters)[1:]
        if any(signature.parameters[n].kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for n in names):
            return
        flat: list[Any] = []
        for name in names:
            value = bound.arguments[name]
            flat.extend(tree_flatten(value)[0] if concrete_args is not None and name in concrete_args else [value])
        if len(flat) == len(placeholders):
            self._inputs = dict(zip(placeholders, flat, strict=True))

    def decide(self, node: fx.Node, terms: list[fx.Node], key: ConditionKey, root: nn.Module,
               call: Callable[[nn.Module, tuple, dict], Any]) -> Any:
        """The value of ``node`` (a shape expression, ``terms`` its nodes) at the example's shapes;
        LookupError if not known, or if a number in it follows the input's batch or extent."""
        if key in self.replay:
            if self.replay[key] is None:
                raise LookupError("decided differently in different calls")
            return self.replay[key]
        if not self._inputs:
            raise LookupError("no example inputs")
        if not self._values:
            mode = self.fake_mode or FakeTensorMode(allow_non_fake_inputs=True)
            self.fake_mode = mode
            self._values = {n: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for n, v in self._inputs.items()}
            with mode:
                self._probe = {n: torch.empty(larger(v.shape), dtype=v.dtype) if isinstance(v, torch.Tensor) else v
                               for n, v in self._inputs.items()}
        self.evaluating = True
        try:
            with self.fake_mode:  # type: ignore[union-attr]
                for term in terms:
                    here = evaluate(term, self._values, root, call)
                    # A number, or a whole shape compared (``self.shape != x.shape``: Ultralytics' Detect
                    # rebuilding its anchors for a new input size), that changes with the input's size.
                    whole = isinstance(here, tuple) and any(u in terms and u.target is not operator.getitem for u in term.users)
                    if (isinstance(here, int) or whole) and here != evaluate(term, self._probe, root, call):
                        raise LookupError(f"'{term.name}' follows the input's batch or extent")
                value = evaluate(node, self._values, root, call)
        except LookupError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the module raises on fake tensors: undecided
            raise LookupError(str(error)) from error
        finally:
            self.evaluating = False
        if isinstance(value, torch.Tensor) or not isinstance(value, (bool, int, torch.Size, tuple)):
            raise LookupError(f"a shape expression gave {type(value).__name__}")
        return value
