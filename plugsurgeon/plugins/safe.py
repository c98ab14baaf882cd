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

import functools
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
    their code builds. The host model's own classes are the caller's to add, as for the unedited model.

    Returns:
        The classes, sorted by qualified name, so the list is the same on every call.

    Examples:
        Save a model edited with a replacement plugin whole, and load it weights-only:

        >>> import io, torch, torchvision
        >>> import plugsurgeon as ps
        >>> model = ps.apply(torchvision.models.resnet18(), "acnet", input_shape=(1, 3, 64, 64)).model
        >>> buffer = io.BytesIO()
        >>> torch.save(model, buffer)
        >>> _ = buffer.seek(0)
        >>> host = {type(m) for m in torchvision.models.resnet18().modules()}
        >>> with torch.serialization.safe_globals([*ps.safe_globals(), *host]):
        ...     loaded = torch.load(buffer, weights_only=True)
        >>> type(loaded.layer1[0].conv1).__name__
        'ACBlock'
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
    """Every module of the plugins package, helpers (``_conv``, ``_layers``) included."""
    package = importlib.import_module(_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        yield importlib.import_module(f"{_PACKAGE}.{info.name}")


def _own_module_classes(module: types.ModuleType) -> Iterator[type]:
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
            yield value


def _torch_module_classes(module: types.ModuleType) -> set[type]:
    """torch.nn module classes the module's functions and classes name (``nn.X`` or an imported ``X``),
    take as default arguments (``norm_layer=nn.BatchNorm2d``), or wrap in a module-level ``partial``."""
    names: set[str] = set()
    for value in vars(module).values():
        named = value.func if isinstance(value, functools.partial) else value  # ReLU = partial(nn.ReLU, ...)
        if isinstance(named, type) and issubclass(named, nn.Module) and named.__module__.startswith("torch.nn."):
            names.add(named.__name__)  # imported by name: from torch.nn import Conv2d
        for code, defaults in _code_of(value, module.__name__):
            names.update(_names(code))
            names.update(_class_names(defaults))
    found = set()
    for name in names:
        value = getattr(nn, name, None)
        if isinstance(value, type) and issubclass(value, nn.Module):
            found.add(value)
    return found


def _code_of(value: object, module_name: str) -> Iterator[tuple[types.CodeType, tuple[object, ...]]]:
    """The code objects of a function, or of the methods of a class, defined in ``module_name``, each
    with its default argument values."""
    if isinstance(value, types.FunctionType):
        if value.__module__ == module_name:
            yield value.__code__, _defaults(value)
    elif isinstance(value, type) and value.__module__ == module_name:
        for member in vars(value).values():
            for function in (getattr(member, "__func__", member), getattr(member, "fget", None), getattr(member, "fset", None)):
                if isinstance(function, types.FunctionType):
                    yield function.__code__, _defaults(function)


def _defaults(function: types.FunctionType) -> tuple[object, ...]:
    return (*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values())


def _class_names(values: tuple[object, ...]) -> Iterator[str]:
    """The names of the classes among ``values``, or wrapped by a ``functools.partial`` among them."""
    for value in values:
        named = value.func if isinstance(value, functools.partial) else value
        if isinstance(named, type):
            yield named.__name__


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names a code object and the functions nested in it use."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _names(constant)

