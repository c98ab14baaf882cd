"""The classes a checkpoint holding plugin modules needs allow-listed for ``torch.load(weights_only=True)``.

``torch.save(model)`` pickles every module by its class. A weights-only load rebuilds only tensors,
containers and the globals a caller allows, and torch allows no module class by default (not even
``nn.Conv2d``), so a whole model with a CBAM in it is refused unless its classes are listed::

    with torch.serialization.safe_globals([*ps.safe_globals(), *MY_MODEL_CLASSES]):
        model = torch.load("edited.pt", weights_only=True)

``safe_globals()`` lists what the plugins add: the class of every registered plugin, every module
class the plugin files define (the blocks plugins are built from), and the torch.nn module classes
that code builds. The host model's own classes (torchvision's ``ResNet``, ``Bottleneck``...) are the
caller's to add, as for the unedited model. The torch classes are found in the names the plugin
files' code uses (``nn.Conv2d`` and the like), not by building plugins, so a new plugin file is
covered when it is added; the test suite round-trips every registered plugin to hold this to it.

Allowing a class lets the unpickler create instances of it without ``__init__`` and set their
attributes to data the file holds; nothing the file names is imported or called. Modules whose
pickle runs code (``torch.fx.GraphModule`` regenerates and compiles its forward) are not listed: a
model whose edited block became one loads only with ``weights_only=False``.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from collections.abc import Iterator

from torch import nn

from plugsurgeon.plugins.registry import catalog

_PACKAGE = "plugsurgeon.plugins"


def safe_globals() -> list[type]:
    """Every class plugsurgeon's plugins are made of, for ``torch.serialization.safe_globals``.

    Registered plugins (``ps.register_plugin``, built-in or yours) contribute their classes; the
    built-in plugin files also contribute the module classes they define and the torch.nn classes
    their code builds. Sorted by qualified name, so the list is the same on every call.
    """
    classes: set[type] = set()
    for spec in catalog().values():
        classes.update(c for c in spec.classes if isinstance(c, type))
    for module in _plugin_modules():
        classes.update(_own_module_classes(module))
        classes.update(_torch_module_classes(module))
    classes.discard(nn.Module)
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _plugin_modules() -> Iterator[types.ModuleType]:
    """Every module of the plugins package, helpers (``_conv``, ``_context``) included."""
    package = importlib.import_module(_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"{_PACKAGE}.{info.name}")


def _own_module_classes(module: types.ModuleType) -> Iterator[type]:
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
            yield value


def _torch_module_classes(module: types.ModuleType) -> set[type]:
    """torch.nn module classes the module's functions and classes name (``nn.X`` or an imported ``X``)."""
    names: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__.startswith("torch.nn."):
            names.add(value.__name__)  # imported by name: from torch.nn import Conv2d
        for code in _code_of(value, module.__name__):
            names.update(_names(code))
    found = set()
    for name in names:
        value = getattr(nn, name, None)
        if isinstance(value, type) and issubclass(value, nn.Module):
            found.add(value)
    return found


def _code_of(value: object, module_name: str) -> Iterator[types.CodeType]:
    """The code objects of a function, or of the methods of a class, defined in ``module_name``."""
    if isinstance(value, types.FunctionType):
        if value.__module__ == module_name:
            yield value.__code__
    elif isinstance(value, type) and value.__module__ == module_name:
        for member in vars(value).values():
            for function in (getattr(member, "__func__", member), getattr(member, "fget", None), getattr(member, "fset", None)):
                if isinstance(function, types.FunctionType):
                    yield function.__code__


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names a code object and the functions nested in it use."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names(constant)

