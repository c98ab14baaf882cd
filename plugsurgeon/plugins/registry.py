"""The plugin catalog: every plugin by name, as registered by ``register_plugin``.

The built-in plugins are the modules named in ``BUILT_IN``, one technique per file, each registering its
plugins with ``@register_plugin``. The registry imports them from that list once, the first time the
catalog is read (``catalog()``, ``get_plugin()``), so importing plugsurgeon stays cheap and what is
built in is written in one place (a test checks the list against the files). Plugins registered from
elsewhere (a user's module, a notebook, a test) join the same catalog.

The tracer keeps every plugin class as a leaf (one module call, never traced through) by asking the
registry: the graph package sits below this one and cannot import it, so this module hands it
``is_plugin_class`` through its hook ``graph.trace.register_leaf_check`` when it is first imported.
Any class that is registered is a leaf, and one whose registration is replaced is no longer.
"""

from __future__ import annotations

import importlib
import inspect
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from pydantic import ValidationError
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from plugsurgeon.errors import RecipeError, SiteError, UnknownNameError, did_you_mean
from plugsurgeon.graph.trace import register_leaf_check
from plugsurgeon.plugins.args import PluginArgs, describe
from plugsurgeon.plugins.budget import check_budget, new_tensors
from plugsurgeon.sites.site import Site, known_role, role_matches

Infer = Callable[[Site, "nn.Module | None"], dict[str, Any]]
Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

PACKAGE = "plugsurgeon.plugins"

# The built-in plugins: the modules of this package that register plugins, imported in this order the
# first time the catalog is read. A new plugin file is one entry here (tests/plugins/test_registry.py
# fails on a plugin file that is missing, or an entry without its file).
BUILT_IN: tuple[str, ...] = (
    "a2", "acnet", "asff", "aspp", "bam", "blaze", "blurpool", "cbam", "ccnet", "coord_attention",
    "coordconv", "dcn", "dwsep", "eca", "gc", "ghost", "mixconv", "nonlocal", "ppm", "repvgg", "rfb",
    "rfb_s", "scconv", "scse", "se", "seb", "sge", "sk", "splat", "spp", "ssh", "stn", "strip_pooling",
)
BUILT_IN_MODULES = frozenset(f"{PACKAGE}.{name}" for name in BUILT_IN)


@dataclass(frozen=True)
class PluginSpec:
    """What the engine needs to know about one plugin: how to build it, where it goes, what it promises.

    Made by ``register_plugin`` and read from the catalog (``ps.catalog()``, ``ps.get_plugin(name)``);
    not constructed by hand. ``mode="after"`` inserts the module after the site's node (same shape in and
    out, plus the site's extra nodes as further inputs when ``inputs="site+extra"``); ``mode="replace"``
    swaps the module the site's node calls.

    Attributes:
        name: The name recipes use (``plugin: cbam``).
        factory: The class, or a function choosing among ``classes`` by site.
        classes: The module classes the factory builds; each is a leaf for the tracer.
        roles: The site roles the plugin takes (a role family, ``"downsample"``, takes its variants).
        mode: ``"after"`` (insert after the site) or ``"replace"`` (swap the module at the site).
        infer: Returns the structural constructor arguments from the site and the replaced module
            (the channel count...); recipes may not set them.
        structural: The names ``infer`` returns.
        identity_at_init: The edited model computes exactly what the original did until the module is
            trained; the test matrix holds every plugin that declares it to it.
        paper: The reference, with its arXiv number.
        year: The paper's year.
        summary: One line on what the module computes.
        inputs: ``"site"``, or ``"site+extra"`` for a module that also reads the site's extra nodes
            (the other pyramid levels).
        suggested_where: The selector a typical step uses, as (key, value) pairs (``kernel: 3``).
        args: The ``PluginArgs`` subclass declaring every argument a recipe may set.

    Examples:
        >>> import plugsurgeon as ps
        >>> spec = ps.get_plugin("cbam")
        >>> spec.mode, spec.fits("residual.branch"), spec.fits("upsample")
        ('after', True, False)
        >>> spec.defaults()
        {'reduction': 16, 'kernel_size': 7, 'spatial': True}
    """

    name: str
    factory: Callable[..., nn.Module]
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
    suggested_where: tuple[tuple[str, Any], ...] = ()
    args: type[PluginArgs] = PluginArgs

    def fits(self, role: str) -> bool:
        """Whether the plugin takes sites of ``role``.

        Args:
            role: A role, or a role family (``"downsample"``) or variant (``"downsample.pool"``).

        Returns:
            True if one of the plugin's roles is ``role``, a variant of it, or the family it belongs to.
        """
        return any(role_matches(role, r) or role_matches(r, role) for r in self.roles)

    def defaults(self) -> dict[str, Any]:
        """The paper's value of every argument a recipe may set.

        Returns:
            The argument model's defaults by name.
        """
        return self.args().kwargs()

    def validate_args(self, args: dict[str, Any] | PluginArgs) -> PluginArgs:
        """``args`` checked against the plugin's argument model.

        Args:
            args: A recipe step's arguments, or an already validated instance of ``self.args``.

        Returns:
            The validated arguments, defaults filled in.

        Raises:
            RecipeError: An argument is unknown, of the wrong type or out of range; the message names
                it, its value and what it should be.
        """
        if isinstance(args, self.args):
            return args
        try:
            return self.args.model_validate(args)
        except ValidationError as error:
            raise RecipeError(f"plugin '{self.name}': {describe_error(error, self.args)}",
                              hint=f"`plugsurgeon plugins show {self.name}` lists what it takes, with ranges") from None

    def fitting_args(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs) -> PluginArgs:
        """The validated arguments, once they are checked against the site.

        Args:
            site: Where the plugin would go.
            replaced: The module a ``mode="replace"`` plugin replaces there, or None.
            args: The step's arguments.

        Returns:
            The validated arguments.

        Raises:
            RecipeError: The arguments are invalid in themselves.
            SiteError: A value is too large for this site (a kernel wider than its map).
        """
        values = self.validate_args(args)
        try:
            values.check_site(site, replaced)
        except SiteError as error:
            raise SiteError(f"plugin '{self.name}': {error.message}", hint=error.hint) from None
        return values

    def constructor_kwargs(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs) -> dict[str, Any]:
        """What the factory is called with at ``site``: the structural arguments from the graph, then the step's.

        Args:
            site: Where the plugin goes.
            replaced: The module a ``mode="replace"`` plugin replaces there, or None.
            args: The step's arguments.

        Returns:
            The factory's keyword arguments.

        Raises:
            RecipeError: The arguments are invalid.
        """
        return {**self.infer(site, replaced), **self.validate_args(args).kwargs()}

    def build(self, site: Site, replaced: nn.Module | None, args: dict[str, Any] | PluginArgs, *,
              host: nn.Module | None = None, fake: bool = False,
              dtype: torch.dtype | None = None, device: torch.device | None = None) -> nn.Module:
        """The plugin module for ``site``.

        The arguments are validated and checked against the site first. With ``host``, the module is
        first built on fake tensors (no memory) and refused if it would add more parameter and buffer
        elements than the host's budget allows (``plugins.budget.added_budget``).

        Args:
            site: Where the module goes.
            replaced: The module a ``mode="replace"`` plugin replaces there, or None.
            args: The step's arguments.
            host: The model the module goes into, to hold the module to its budget; None checks none.
            fake: Return the fake build: it runs under fake tensor modes (shapes, FLOPs, the pre-commit
                check) but holds no data, so apply must build the real one.
            dtype: Converts the floating point tensors the module creates (never those it keeps from
                ``replaced``).
            device: Moves the tensors the module creates.

        Returns:
            The new module.

        Raises:
            RecipeError: The arguments are invalid, or the module exceeds the host's budget.
            SiteError: The arguments do not fit this site.
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
        """The plugin's declarations as plain JSON-able data (the catalog file and listings read this).

        Returns:
            Name, mode, roles, identity at init, paper, year, summary, inputs, the suggested selector and
            every argument's type, default, range, site bound and description.
        """
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


def _convert_new(module: nn.Module, replaced: nn.Module | None, dtype: torch.dtype | None, device: torch.device | None) -> nn.Module:
    """Move the module's own tensors to ``dtype``/``device`` (floating point ones take the dtype).

    Not ``module.to``: that would also convert the replaced conv's weight, which the module shares
    with the caller's model, and it cannot convert fake parameters in place.
    """
    if dtype is None and device is None:
        return module
    own = {id(t) for t in new_tensors(module, replaced)}
    converted: dict[int, torch.Tensor] = {}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        wanted_dtype = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if tensor.dtype == wanted_dtype and (device is None or tensor.device == torch.device(device)):
            return tensor  # already there: re-wrapping a Parameter costs a detach, and a fake one a dispatch
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
                        store[key] = convert(tensor)  # type: ignore[assignment]  # a Parameter stays a Parameter (convert)
    return module


def site_channels(site: Site, _replaced: nn.Module | None = None) -> dict[str, Any]:
    """The ``infer`` of every plugin whose only structural argument is the site's channel count."""
    return {"channels": site.channels}


_REGISTRY: dict[str, PluginSpec] = {}
_built_in_loaded = False


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
    replace: bool = False,
) -> Callable[[Factory], Factory]:
    """A decorator adding a plugin to the catalog, under ``name``, for recipes, apply, save and load.

    Decorate the module class, or a factory function that picks among ``classes`` by site. Its
    parameters are the structural ones (from ``infer``) and the ones a recipe may set, which ``args``
    declares with the same names and defaults. The plugin's classes become leaves for the tracer.
    A name is registered once: registering it again is an error unless ``replace=True`` says that the
    new plugin is meant to take the old one's place (a notebook cell run again, a built-in plugin
    overridden on purpose).

    Args:
        name: The name recipes use (``plugin: NAME``).
        roles: The site roles it takes (``"residual.branch"``, ``"conv"``, a family such as ``"downsample"``).
        mode: ``"after"`` inserts the module after the site (same shape in and out); ``"replace"``
            swaps the module that the site's node calls.
        infer: ``infer(site, replaced)`` returns the structural constructor arguments (such as
            ``{"channels": site.channels}``); recipes cannot set them.
        structural: The names ``infer`` returns.
        identity_at_init: Whether the edited model computes exactly what it did before until the module
            is trained.
        paper: The reference (authors, title, venue, arXiv number).
        year: The paper's year.
        summary: One line on what the module computes.
        inputs: ``"site+extra"`` for a module whose forward also takes the site's extra nodes (the
            other pyramid levels of a ``neck.level`` site).
        classes: The module classes a factory function builds (a decorated class is its own).
        suggested_where: The selector a typical step uses, shown by ``plugsurgeon plugins``.
        args: A ``PluginArgs`` subclass declaring every argument a recipe may set: exactly the
            factory's non-structural parameters, with the same defaults.
        replace: Replace a plugin already registered under ``name`` instead of refusing.

    Returns:
        The decorator; it registers the factory and returns it unchanged.

    Raises:
        ValueError: (from the decorator) ``name`` is taken and ``replace`` is False, a role is unknown,
            ``args`` does not match the factory's parameters, or a factory function names no
            ``classes``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import plugsurgeon as ps
        >>> @ps.register_plugin(
        ...     "channel_scale", roles=("residual.branch",), mode="after",
        ...     infer=lambda site, replaced: {"channels": site.channels}, structural=("channels",),
        ...     identity_at_init=True, paper="LayerScale, Touvron et al., arXiv:2103.17239", year=2021,
        ...     summary="a learnable per-channel scale, initialised to 1", replace=True)
        ... class ChannelScale(nn.Module):
        ...     def __init__(self, channels: int) -> None:
        ...         super().__init__()
        ...         self.scale = nn.Parameter(torch.ones(channels))
        ...     def forward(self, x):
        ...         return x * self.scale[:, None, None]
        >>> ps.get_plugin("channel_scale").classes == (ChannelScale,)
        True

        Without ``replace=True``, running the cell again raises ``ValueError: plugin 'channel_scale' is
        already registered ...``.
    """

    def decorate(factory: Factory) -> Factory:
        if getattr(factory, "__module__", None) not in BUILT_IN_MODULES:
            _load_built_in()  # so a name taken by a built-in plugin is seen as taken
        if name in _REGISTRY and not replace:
            old = _REGISTRY[name].factory
            raise ValueError(
                f"plugin '{name}' is already registered (by {old.__module__}.{old.__qualname__}); pass "
                f"replace=True to register_plugin to replace it on purpose (a notebook cell run again), "
                "or choose another name"
            )
        unknown = [r for r in roles if not known_role(r)]
        if unknown:
            raise ValueError(f"plugin '{name}' declares unknown roles {unknown}")
        named: tuple[object, ...] = tuple(classes) or (factory,)
        kinds = tuple(k for k in named if isinstance(k, type) and issubclass(k, nn.Module))
        if len(kinds) != len(named):
            raise ValueError(f"plugin '{name}': a factory function must name the module classes it builds "
                             f"with classes=(...); got {[k for k in named if k not in kinds]}")
        _check_args_match(name, factory, frozenset(structural), args)
        _REGISTRY[name] = PluginSpec(
            name, factory, kinds, tuple(roles), mode, infer, frozenset(structural), identity_at_init, paper, year,
            summary, inputs, tuple(sorted((suggested_where or {}).items())), args,
        )
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


def _load_built_in() -> None:
    """Import the ``BUILT_IN`` plugin modules (each registers its plugins), once."""
    global _built_in_loaded
    if _built_in_loaded:
        return
    _built_in_loaded = True  # first, so that a plugin module reading the catalog as it loads does not recurse
    try:
        for module in BUILT_IN:
            importlib.import_module(f"{PACKAGE}.{module}")
    except BaseException:
        _built_in_loaded = False  # a failed import is retried (and raises again) on the next lookup
        raise


def catalog() -> dict[str, PluginSpec]:
    """Every registered plugin, built in or registered from elsewhere, by name.

    The first call imports the built-in plugin modules; later calls only copy the registry.

    Returns:
        A new dict of name to ``PluginSpec``, sorted by name.

    Examples:
        >>> import plugsurgeon as ps
        >>> plugins = ps.catalog()
        >>> "cbam" in plugins and plugins["cbam"].paper.startswith("Woo et al.")
        True
        >>> sorted(name for name, spec in plugins.items() if spec.mode == "replace")[:3]
        ['acnet', 'blaze', 'blurpool']
    """
    _load_built_in()
    return dict(sorted(_REGISTRY.items()))


def get_plugin(name: str) -> PluginSpec:
    """The registered plugin called ``name``.

    Args:
        name: A plugin name, as recipes write it (``"cbam"``).

    Returns:
        Its ``PluginSpec``.

    Raises:
        UnknownNameError: No plugin has that name; the message suggests close names, the hint names
            ``plugsurgeon plugins``.

    Examples:
        >>> import plugsurgeon as ps
        >>> ps.get_plugin("eca").mode
        'after'
        >>> ps.get_plugin("cbma")
        Traceback (most recent call last):
        ...
        plugsurgeon.errors.UnknownNameError: unknown plugin 'cbma'; did you mean 'cbam', 'eca', 'bam'?
        hint: `plugsurgeon plugins` lists the catalog
    """
    _load_built_in()
    spec = _REGISTRY.get(name)
    if spec is None:
        suggestion = did_you_mean(name, list(_REGISTRY))
        raise UnknownNameError(
            f"unknown plugin '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon plugins` lists the catalog",
        )
    return spec


def is_plugin_class(cls: type) -> bool:
    """Whether ``cls`` is (a subclass of) a class of a registered plugin: a leaf for the tracer.

    A class of this package's plugin modules makes the registry load the built-in plugins first, so the
    answer never depends on which of them happen to be imported already.
    """
    if cls.__module__.startswith(PACKAGE + "."):
        _load_built_in()
    return issubclass(cls, _plugin_classes())


_classes_of: tuple[tuple[PluginSpec, ...], tuple[type, ...]] = ((), ())


def _plugin_classes() -> tuple[type, ...]:
    """The classes of every registered plugin, gathered again only when the registry changed (the
    tracer asks for every module it meets)."""
    global _classes_of
    specs = tuple(_REGISTRY.values())
    if specs != _classes_of[0]:  # the same spec objects compare by identity first: cheap when unchanged
        _classes_of = (specs, tuple(kind for spec in specs for kind in spec.classes))
    return _classes_of[1]


def is_plugin(module: nn.Module) -> bool:
    """Whether ``module`` is an instance of a registered plugin's class."""
    _load_built_in()
    return is_plugin_class(type(module))


# The tracer asks the registry which classes are plugins (the graph package cannot import this one).
register_leaf_check(is_plugin_class)
