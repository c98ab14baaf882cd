"""An edited module stays an instance of its own class.

Surgery splices new modules into a module's traced graph. Left as torch.fx builds it, the result is a
``GraphModule``: a new class that drops the module's methods and ``isinstance`` identity (framework
code such as Ultralytics' ``fuse()`` looks for its own ``Conv`` and ``Detect``), and whose
``__deepcopy__`` keeps only fx's own attributes, so a copied Ultralytics layer loses the ``f`` and
``i`` its model loop reads (EMA, checkpoints and a second edit all copy the model).

Here the edited module is instead an instance of a subclass of its own class, made for this edit:
same class name, same instance attributes, children, parameters, buffers and hooks, plus the new
modules, and a ``forward`` compiled from the edited graph's Python code. Copies share the subclass.

Such a subclass cannot be imported by name, so an edited module pickles by value: the forward's
source and the names it reads are stored, and unpickling compiles them again (torch.fx pickles its
GraphModules the same way). Loading such a pickle runs code held in the file, so it needs
``torch.load(..., weights_only=False)`` on a file you trust; ``ps.save``/``ps.load`` (safetensors and
a manifest of the edits, replayed) is the safe way to store an edited model.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import linecache
import math
import types
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from plugsurgeon.errors import PlugsurgeonError

_EDIT = "_plugsurgeon_edit"
# The pytree specs that fx's generated code reads from ``self`` when the trace flattened its inputs.
_CODEGEN_ATTRIBUTES = ("_in_spec", "_out_spec")
_serial = itertools.count()


@dataclass(frozen=True)
class ModuleRef:
    """A Python module the generated code reads, stored by name (module objects do not pickle)."""

    name: str


@dataclass(frozen=True)
class EditedForward:
    """What an edited class is made of: its base class and each generated method's source with the names it reads.

    ``methods`` holds ``forward``, and the edited form of an alternative forward the module's framework
    switches to (Ultralytics' fuse() sets ``m.forward = m.forward_fuse``) when one could be derived.
    """

    base: type[nn.Module]
    methods: dict[str, tuple[str, dict[str, Any]]]
    codegen: dict[str, Any] = field(default_factory=dict)
    graph: fx.Graph | None = field(default=None, compare=False)  # in the process that made it, for checks

    @property
    def source(self) -> str:
        return self.methods["forward"][0]

    def picklable(self) -> tuple:
        methods = {name: (source, {k: ModuleRef(v.__name__) if isinstance(v, types.ModuleType) else v for k, v in names.items()})
                   for name, (source, names) in self.methods.items()}
        return self.base, methods, self.codegen


def is_edited(module: nn.Module) -> bool:
    return isinstance(getattr(type(module), _EDIT, None), EditedForward)


def original_class(module: nn.Module) -> type[nn.Module]:
    """The class the module had before any edit (an edited module's class is a subclass made for it)."""
    edit = getattr(type(module), _EDIT, None)
    return edit.base if isinstance(edit, EditedForward) else type(module)


def edited_source(module: nn.Module) -> str | None:
    """The Python source of an edited module's forward (None for a module surgery did not edit).

    Surgery edits a block by giving it a forward generated from its edited graph; the block keeps its
    class (an edited ``BasicBlock`` is still one), and this is the code it now runs.

    Args:
        module: Any module, typically a block of a model ``ps.apply`` returned.

    Returns:
        The source of its generated ``forward``, or None when surgery did not edit its forward.

    Examples:
        >>> result = ps.apply(torchvision.models.resnet18(), "se")
        >>> print(ps.edited_source(result.model.layer1[0]))  # calls self.se(...) before the add
    """
    edit = getattr(type(module), _EDIT, None)
    return edit.source if isinstance(edit, EditedForward) else None


def edited_graph(module: nn.Module) -> fx.Graph | None:
    """The graph an edited module's forward was generated from, in the process that edited it."""
    edit = getattr(type(module), _EDIT, None)
    return edit.graph if isinstance(edit, EditedForward) else None


def as_edited_instance(owner: nn.Module, gm: fx.GraphModule, new_modules: dict[str, nn.Module],
                       alternatives: dict[str, fx.Graph] | None = None) -> nn.Module:
    """A new instance of (a subclass of) ``owner``'s class computing ``gm``'s graph; ``owner`` is untouched.

    The instance shares ``owner``'s children, tensors, plain attributes and hook tables (so the caller's
    hook handles still work), with child and tensor tables of its own holding ``new_modules`` too.
    ``alternatives``: edited graphs of other forward methods of the class (``forward_fuse``).
    """
    graphs = {"forward": gm.graph, **(alternatives or {})}
    methods: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, graph in graphs.items():
        python_code = graph.python_code(root_module="self")
        methods[name] = (python_code.src, dict(python_code.globals))
    codegen = {name: gm.__dict__[name] for name in _CODEGEN_ATTRIBUTES if name in gm.__dict__}
    forward = EditedForward(original_class(owner), methods, codegen, gm.graph)
    edited: nn.Module = object.__new__(_edited_class(forward))
    edited.__dict__.update(owner.__dict__)
    for table in ("_modules", "_parameters", "_buffers"):
        edited.__dict__[table] = type(owner.__dict__[table])(owner.__dict__[table])
    edited.__dict__["_non_persistent_buffers_set"] = set(owner.__dict__.get("_non_persistent_buffers_set", ()))
    for name, module in new_modules.items():
        edited._modules[name] = module
    # Tensor constants the trace lifted into attributes (``_tensor_constant0``) live on the GraphModule.
    for name, buffer in gm.named_buffers(recurse=False):
        if name not in edited._buffers:
            edited.register_buffer(name, buffer, persistent=name not in gm._non_persistent_buffers_set)
    return edited


def _edited_class(forward: EditedForward) -> type:
    base = forward.base
    generated = {}
    for method, (source, names) in forward.methods.items():
        namespace = dict(names)
        filename = f"<plugsurgeon: edited {base.__module__}.{base.__qualname__}.{method} #{next(_serial)}>"
        # Registered so tracebacks, torch.compile and fx's re-tracing can show the generated lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - fx's own generated code
        generated[method] = namespace["forward"]
    attributes = {
        **generated,
        _EDIT: forward,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        "__reduce_ex__": _reduce_ex,
        "__deepcopy__": _deepcopy,
        "__setattr__": _setattr,
        **forward.codegen,
    }
    return type(base.__name__, (base,), attributes)


def _setattr(self: nn.Module, name: str, value: Any) -> None:
    """A framework that switches an edited module to another method of its original class (Ultralytics'
    fuse() sets ``m.forward = m.forward_fuse``) would drop the edit silently: refused instead, naming
    what to do. The edited form of such a method, when surgery could derive it, is the class's own."""
    function = getattr(value, "__func__", None)
    if name == "forward" and function is not None and getattr(value, "__self__", None) is self:
        edit = getattr(type(self), _EDIT)
        method = function.__name__
        if getattr(edit.base, method, None) is function and method not in edit.methods:
            raise PlugsurgeonError(
                f"'{type(self).__name__}.{method}' would replace the forward plugsurgeon edited, dropping the "
                "modules it inserted into this block",
                hint="deploy with ps.deploy(model), which reparameterizes and folds the edited model exactly")
    super(type(self), self).__setattr__(name, value)


def _state(module: nn.Module) -> Any:
    getstate = getattr(module, "__getstate__", None)  # object has one from Python 3.11 on
    return getstate() if getstate is not None else module.__dict__


def _reduce_ex(self: nn.Module, protocol: int) -> tuple:
    return _rebuild, getattr(type(self), _EDIT).picklable(), _state(self)


def _deepcopy(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """A copy of the same edited class (no recompiling): the state is deep-copied as for any module."""
    clone = object.__new__(type(self))
    memo[id(self)] = clone
    state = copy.deepcopy(_state(self), memo)
    if hasattr(clone, "__setstate__"):
        clone.__setstate__(state)
    else:
        clone.__dict__.update(state)
    return clone


# Unpickled classes, shared by every instance with the same forward (a model's 16 edited blocks
# usually have one source): keyed by base and source, matched on the identity of what the code reads.
_rebuilt: dict[tuple, list[tuple[dict[str, dict[str, Any]], dict[str, Any], type]]] = {}


def _rebuild(base: type, methods: dict[str, tuple[str, dict[str, Any]]], codegen: dict[str, Any]) -> nn.Module:
    """Unpickling: compile the stored methods again (the instance's state follows through ``__setstate__``)."""
    resolved = {method: (source, {k: importlib.import_module(v.name) if isinstance(v, ModuleRef) else v for k, v in names.items()})
                for method, (source, names) in methods.items()}
    names = {method: names for method, (_, names) in resolved.items()}
    candidates = _rebuilt.setdefault((base, *sorted((m, source) for m, (source, _) in resolved.items())), [])
    for known_names, known_codegen, cls in candidates:
        if known_names.keys() == names.keys() and all(_same(known_names[m], names[m]) for m in names) and _same(known_codegen, codegen):
            return object.__new__(cls)
    cls = _edited_class(EditedForward(base, resolved, codegen))
    candidates.append((names, codegen, cls))
    return object.__new__(cls)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or _equal(a[k], b[k]) for k in a)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):  # fx's code reads `nan`
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # noqa: BLE001 - an object whose == is not a plain truth value is not the same
        return False
