"""The plugin catalog: one dict, filled by the ``register_plugin`` decorator on each plugin class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from plugsurgeon.errors import RecipeError, SiteError, UnknownNameError, did_you_mean
from plugsurgeon.graph.trace import register_leaf
from plugsurgeon.plugins._args import PluginArgs, added_budget, budget_text, describe
from plugsurgeon.sites.site import Site, known_role, role_matches

Infer = Callable[[Site, "nn.Module | None"], dict[str, Any]]


@dataclass(frozen=True)
class PluginSpec:
    """What the engine needs to know about a plugin.

    ``mode="after"`` inserts the module after the site's node (same shape in and out, plus the
    site's extra nodes as further inputs when ``inputs="site+extra"``); ``mode="replace"`` swaps the
    module the site's node calls. ``infer`` returns the structural arguments from the site (and the
    replaced module); recipes may not set them. ``args`` is the model of everything else: typed,
    bounded, with the paper's defaults (plugins/_args.py). ``identity_at_init`` promises that the
    model's output is unchanged right after surgery; the test matrix holds every plugin to it.
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
    args: type[PluginArgs] = PluginArgs

    def fits(self, role: str) -> bool:
        """True if the plugin takes sites of ``role`` (or of some variant of a role family)."""
        return any(role_matches(role, r) or role_matches(r, role) for r in self.roles)

    def defaults(self) -> dict[str, Any]:
        return self.args().kwargs()

    def validate_args(self, args: dict[str, Any] | PluginArgs) -> PluginArgs:
        """``args`` checked against the plugin's argument model; a RecipeError names the argument,
        the value and what it should be."""
        if isinstance(args, self.args):
            return args
        try:
            return self.args.model_validate(args)
        except ValidationError as error:
            raise RecipeError(f"plugin '{self.name}': {describe_error(error, self.args)}",
                              hint=f"`plugsurgeon plugins show {self.name}` lists what it takes, with ranges") from None

    def fitting_args(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs) -> PluginArgs:
        """The validated arguments, once they are checked against the site (SiteError: unfit)."""
        values = self.validate_args(args)
        try:
            values.check_site(site, replaced)
        except SiteError as error:
            raise SiteError(f"plugin '{self.name}': {error.message}", hint=error.hint) from None
        return values

    def constructor_kwargs(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs) -> dict[str, Any]:
        """What the factory is called with at ``site``: the structural arguments from the graph, then the step's."""
        return {**self.infer(site, replaced), **self.validate_args(args).kwargs()}

    def build(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs, *,
              host: nn.Module | None = None, fake: bool = False,
              dtype: torch.dtype | None = None, device: torch.device | None = None) -> nn.Module:
        """The plugin module for ``site``.

        The arguments are validated and checked against the site first. With ``host``, the module is
        first built on fake tensors (no memory) and refused if it would add more parameter and buffer
        elements than the host's budget allows (``_args.added_budget``). ``fake=True`` returns that
        fake build: it runs under fake tensor modes (shapes, FLOPs, the pre-commit check) but holds
        no data, so apply must build the real one. ``dtype``/``device`` convert the tensors the
        module creates; tensors it keeps from ``replaced`` are never converted.
        """
        values = self.fitting_args(site, replaced, args)
        kwargs = self.constructor_kwargs(site, replaced, values)
        if host is not None or fake:
            # Fake tensors, not the meta device: constructors that place their tensors where the
            # replaced conv's are (device=source.weight.device) would allocate for real on meta.
            with FakeTensorMode(allow_non_fake_inputs=True):
                sized = self.factory(**kwargs)
            if host is not None:
                check_budget(host, [(sized, replaced)], f"plugin '{self.name}' at '{site.path}'")
            if fake:
                return _convert_new(sized, replaced, dtype, device)
        return _convert_new(self.factory(**kwargs), replaced, dtype, device)

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
            "args": describe(self.args),
        }


def describe_error(error: ValidationError, model: type[PluginArgs]) -> str:
    """The first problem of an argument ValidationError: which argument, its value, what it should be."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    name = loc[0] if loc else "arguments"
    where = f"argument '{name}'" + (f" item {loc[1]}" if len(loc) > 1 else "")
    if first["type"] == "extra_forbidden":
        settable = sorted(model.model_fields)
        return f"has no argument '{name}'; it takes {settable or 'none'}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where} = {reprlib.repr(first['input'])}: {message}{more}"


def check_budget(host: nn.Module, modules: list[tuple[nn.Module, nn.Module | None]], what: str) -> None:
    """Refuse ``modules`` (each with the module it replaces, or None) if together they add more
    parameter and buffer elements than ``host``'s budget (``_args.added_budget``); the message has
    the numbers. Fake modules are counted as real ones, without memory."""
    new = [t for module, replaced in modules for t in _new_tensors(module, replaced)]
    added = sum(t.numel() for t in new)
    model = sum(t.numel() for t in (*host.parameters(), *host.buffers()))
    if added > added_budget(model):
        size = sum(t.numel() * t.element_size() for t in new)
        raise RecipeError(
            f"{what} would add {added:,} parameter and buffer elements ({size / 2**30:.1f} GiB), "
            f"more than the budget of {budget_text(model)}",
            hint="lower the steps' size arguments (hidden widths, kernels, paths), or narrow them with `where`",
        )


def _new_tensors(module: nn.Module, replaced: nn.Module | None) -> list[torch.Tensor]:
    """Parameters and buffers the module made itself (not the replaced module's, which it may keep)."""
    kept = {id(t) for t in (*replaced.parameters(), *replaced.buffers())} if replaced is not None else set()
    seen, new = set(), []
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in kept and id(tensor) not in seen:
            seen.add(id(tensor))
            new.append(tensor)
    return new


def new_elements(module: nn.Module, replaced: nn.Module | None = None) -> int:
    return sum(t.numel() for t in _new_tensors(module, replaced))


def _convert_new(module: nn.Module, replaced: nn.Module | None, dtype: torch.dtype | None, device: torch.device | None) -> nn.Module:
    """Move the module's own tensors to ``dtype``/``device`` (floating point ones take the dtype).

    Not ``module.to``: that would also convert the replaced conv's weight, which the module shares
    with the caller's model, and it cannot convert fake parameters in place.
    """
    if dtype is None and device is None:
        return module
    own = {id(t) for t in _new_tensors(module, replaced)}
    converted: dict[int, torch.Tensor] = {}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in converted:
            moved = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
            if isinstance(tensor, nn.Parameter):
                moved = nn.Parameter(moved, requires_grad=tensor.requires_grad)
            converted[id(tensor)] = moved
        return converted[id(tensor)]

    with torch.no_grad():
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for key, tensor in store.items():
                    if tensor is not None and id(tensor) in own:
                        store[key] = convert(tensor)
    return module


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
    args: type[PluginArgs] = PluginArgs,
):
    """Decorator adding a plugin to the catalog and making its classes fx leaves.

    Decorate the module class, or a factory function that picks among ``classes`` by site. ``args``
    declares every argument a recipe may set (a ``PluginArgs`` subclass); it must name exactly the
    factory's non-structural parameters, with the same defaults.
    """

    def decorate(factory):
        if name in _REGISTRY:
            raise ValueError(f"plugin '{name}' is registered twice")
        unknown = [r for r in roles if not known_role(r)]
        if unknown:
            raise ValueError(f"plugin '{name}' declares unknown roles {unknown}")
        _check_args_match(name, factory, frozenset(structural), args)
        kinds = tuple(classes) or (factory,)
        _REGISTRY[name] = PluginSpec(
            name, factory, kinds, tuple(roles), mode, infer, frozenset(structural), identity_at_init, paper, year, summary, inputs,
            tuple(sorted((suggested_where or {}).items())), args,
        )
        for cls in kinds:
            register_leaf(cls)
        return factory

    return decorate


def _check_args_match(name: str, factory: Callable[..., nn.Module], structural: frozenset[str], args: type[PluginArgs]) -> None:
    # The constructor stays the plain Python API; the model is what recipes see. They must agree,
    # or a recipe could set what the constructor ignores, or miss what it takes.
    params = {n: p for n, p in inspect.signature(factory).parameters.items()
              if n not in structural and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if set(params) != set(args.model_fields):
        raise ValueError(f"plugin '{name}': args model {args.__name__} declares {sorted(args.model_fields)}, "
                         f"the factory takes {sorted(params)}")
    for arg, param in params.items():
        default = args.model_fields[arg].default
        if param.default is inspect.Parameter.empty or tuple(_seq(param.default)) != tuple(_seq(default)):
            raise ValueError(f"plugin '{name}': argument '{arg}' defaults to {param.default!r} in the factory "
                             f"and {default!r} in {args.__name__}")


def _seq(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


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
