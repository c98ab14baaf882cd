"""The plugin catalog: one dict, filled by the ``register_plugin`` decorator on each plugin class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from plugsurgeon.errors import UnknownNameError, did_you_mean
from plugsurgeon.graph.trace import register_leaf
from plugsurgeon.sites.site import Site, known_role, role_matches

Infer = Callable[[Site, "nn.Module | None"], dict[str, Any]]


@dataclass(frozen=True)
class PluginSpec:
    """What the engine needs to know about a plugin.

    ``mode="after"`` inserts the module after the site's node (same shape in and out, plus the
    site's extra nodes as further inputs when ``inputs="site+extra"``); ``mode="replace"`` swaps the
    module the site's node calls. ``infer`` returns the structural arguments from the site (and the
    replaced module); recipes may not set them. ``identity_at_init`` promises that the model's
    output is unchanged right after surgery; the test matrix holds every plugin to it.
    """

    name: str
    factory: Callable[..., nn.Module]  # the class, or a function choosing among ``classes``
    classes: tuple[type[nn.Module], ...]
    roles: tuple[str, ...]
    mode: Literal["after", "replace"]
    infer: Infer
    structural: frozenset[str]
    identity_at_init: bool
    paper: str
    year: int
    summary: str
    inputs: Literal["site", "site+extra"] = "site"
    suggested_where: tuple[tuple[str, Any], ...] = ()  # the selector a typical step uses, e.g. kernel 3

    def fits(self, role: str) -> bool:
        """True if the plugin takes sites of ``role`` (or of some variant of a role family)."""
        return any(role_matches(role, r) or role_matches(r, role) for r in self.roles)

    def settable_args(self) -> dict[str, inspect.Parameter]:
        params = inspect.signature(self.factory).parameters
        return {n: p for n, p in params.items() if n not in self.structural and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self.settable_args().items() if p.default is not inspect.Parameter.empty}

    def build(self, site: Site, replaced: nn.Module | None, args: dict[str, Any]) -> nn.Module:
        return self.factory(**self.infer(site, replaced), **args)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "roles": list(self.roles),
            "identity_at_init": self.identity_at_init,
            "paper": self.paper,
            "year": self.year,
            "summary": self.summary,
            "inputs": self.inputs,
            "suggested_where": dict(self.suggested_where),
            "args": {k: repr(v) for k, v in self.defaults().items()},
        }


def site_channels(site: Site, _replaced: nn.Module | None = None) -> dict[str, Any]:
    """The ``infer`` of every plugin whose only structural argument is the site's channel count."""
    return {"channels": site.channels}


_REGISTRY: dict[str, PluginSpec] = {}


def register_plugin(
    name: str,
    *,
    roles: tuple[str, ...],
    mode: Literal["after", "replace"],
    infer: Infer,
    structural: tuple[str, ...],
    identity_at_init: bool,
    paper: str,
    year: int,
    summary: str,
    inputs: Literal["site", "site+extra"] = "site",
    classes: tuple[type[nn.Module], ...] = (),
    suggested_where: dict[str, Any] | None = None,
):
    """Decorator adding a plugin to the catalog and making its classes fx leaves.

    Decorate the module class, or a factory function that picks among ``classes`` by site.
    """

    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"plugin '{name}' is registered twice")
        unknown = [r for r in roles if not known_role(r)]
        if unknown:
            raise ValueError(f"plugin '{name}' declares unknown roles {unknown}")
        kinds = tuple(classes) or (factory,)
        _REGISTRY[name] = PluginSpec(
            name, factory, kinds, tuple(roles), mode, infer, frozenset(structural), identity_at_init, paper, year, summary, inputs,
            tuple(sorted((suggested_where or {}).items())),
        )
        for cls in kinds:
            register_leaf(cls)
        return factory

    return decorate


def _load_all() -> None:
    # Every module of this package except the registry registers its plugins on import, so a new
    # plugin is one new file; nothing lists them by hand.
    import plugsurgeon.plugins as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "registry":
            importlib.import_module(f"{package.__name__}.{info.name}")


def catalog() -> dict[str, PluginSpec]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_plugin(name: str) -> PluginSpec:
    plugins = catalog()
    if name not in plugins:
        suggestion = did_you_mean(name, plugins)
        raise UnknownNameError(
            f"unknown plugin '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon plugins` lists the catalog",
        )
    return plugins[name]


def is_plugin(module: nn.Module) -> bool:
    return any(isinstance(module, spec.classes) for spec in catalog().values())
