"""Plugin arguments: one pydantic model per plugin, typed and bounded, declared next to the module.

Public: ``PluginArgs`` (also ``ps.PluginArgs``) is how any plugin, built in or yours, declares what a
recipe may set, and the types and bounds below (``Reduction``, ``OddKernel``, ``HIDDEN``...) are there to
be reused.

A recipe is data from anywhere, and a plugin argument sizes real tensors: ``eca kernel_size:
1000000001`` is 4 GB of parameters per site. So every settable argument is declared once, with its
type, the paper's default, an absolute range and a description, and the same model validates recipe
steps, the arguments a manifest records, and what ``plugsurgeon plugins`` prints.

Strict on purpose: YAML's ``"false"`` is a string, not False (lax pydantic reads it as False, and
Python's ``bool("false")`` as True); ``true`` is not the integer 1; floats are finite. Lists are
accepted where tuples are declared, because YAML and JSON have no tuples.

Some bounds depend on the site: a hidden layer as wide as the site's channels is already no
bottleneck, and a kernel twice as wide as the map reads nothing but padding. Those are declared with
``SiteLimit`` and checked when the step is planned on a site, never larger than the paper's default
allows, so every default fits every site it fitted before.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from torch import nn

from plugsurgeon.errors import SiteError
from plugsurgeon.sites.site import Site

# Absolute ranges: far above every paper's value, far below what would exhaust memory by itself.
MAX_WIDTH = 1 << 16  # channel reductions and hidden widths
MAX_KERNEL = 63  # spatial kernels and pooling windows
MAX_DILATION = 256  # dilation rates (a rate pads the map by as much)
MAX_BRANCHES = 8  # list arguments: kernels, bins, rates, paths


class SiteLimit:
    """An upper bound that depends on the site: ``value <= max(measure(site, replaced), paper default)``.

    ``why`` is one clause for the refusal, formatted with the measured ``{limit}``.
    """

    def __init__(self, measure: Callable[[Site, nn.Module | None], int], describe: str, why: str) -> None:
        self.measure = measure
        self.describe = describe  # for the catalog: what the bound is, without a site
        self.why = why

    def __repr__(self) -> str:
        return f"SiteLimit({self.describe})"


def _longest_side(site: Site) -> int:
    return max(site.spatial) if site.spatial else 1


HIDDEN = SiteLimit(
    lambda site, _replaced: site.channels,
    "at most the site's channels (or the default, if larger)",
    "the site has {limit} channels, and a hidden layer wider than its input is no bottleneck",
)
KERNEL_ON_MAP = SiteLimit(
    lambda site, _replaced: 2 * _longest_side(site) - 1,
    "at most 2 x the map's longest side - 1 at the planned input size (or the default, if larger)",
    "on this site's {spatial} map a window wider than {limit} reads only padding beyond it",
)
ON_MAP = SiteLimit(
    lambda site, _replaced: _longest_side(site),
    "at most the map's longest side at the planned input size (or the default, if larger)",
    "this site's map is {spatial}, so more than {limit} adds nothing but padding",
)


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd (to keep the map size), got {value}")
    return value


# Types are written as ``Annotated[type, constraint, ...]`` with the constraints as metadata (never a
# function returning a type), so that type checkers read the fields as what they are.

#: The metadata of an odd integer: ``Annotated[int, kernel_range(1023), ODD]`` (the catalog says "odd").
ODD = AfterValidator(_odd)


def kernel_range(largest: int) -> Any:
    """The range of a kernel size, 1 to ``largest``, as ``Annotated`` metadata; with ``ODD``, marked odd."""
    return Field(ge=1, le=largest, json_schema_extra={"odd": True})


def tuple_length(min_length: int = 1, max_length: int = MAX_BRANCHES) -> Any:
    """The metadata of a tuple argument: ``Annotated[tuple[Dilation, ...], tuple_length(3, 3)]``.

    YAML and JSON give lists, which are taken as tuples (the items stay strict); the count is bounded.
    """
    return Field(strict=False, min_length=min_length, max_length=max_length)


Reduction = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
HiddenWidth = Annotated[int, Field(ge=1, le=MAX_WIDTH), HIDDEN]
OddKernel = Annotated[int, kernel_range(MAX_KERNEL), ODD]  # odd, so that "same" padding keeps the map size
Dilation = Annotated[int, Field(ge=1, le=MAX_DILATION)]
BnEps = Annotated[float, Field(gt=0.0, le=1.0, description="BatchNorm epsilon of the new BatchNorms")]
BnMomentum = Annotated[float, Field(ge=0.0, le=1.0, description="BatchNorm momentum of the new BatchNorms")]


class PluginArgs(BaseModel):
    """The arguments a recipe may set for one plugin: the base of every plugin's argument model.

    Subclass it once per plugin, with one field per constructor argument that a recipe may set (its
    type, range, the paper's default and a description), and pass the subclass to
    ``register_plugin(args=...)``. Structural arguments (the site's channels, the replaced module) come
    from the graph through the plugin's ``infer`` and are not fields. The registry checks that the
    fields name exactly the constructor's other parameters, with the same defaults.

    The model is strict (YAML's ``"false"`` is a string, not False; ``true`` is not 1), frozen, refuses
    unknown names and non-finite floats, and validates its defaults. Lists are accepted where tuples
    are declared (``Ints``), since YAML and JSON have no tuples. A bound that depends on the site (a
    kernel no wider than the map) is declared by adding a ``SiteLimit`` (``HIDDEN``, ``KERNEL_ON_MAP``,
    ``ON_MAP``) to the field's ``Annotated`` metadata, and checked by ``check_site`` when a step is
    planned on a site.

    Attributes:
        site_bounds: Per field name, a bound that a subclass checks in its own ``check_site``, in words
            for the catalog (``SiteLimit`` fields describe themselves).

    Examples:
        >>> from typing import Annotated
        >>> from pydantic import Field
        >>> from plugsurgeon.plugins.args import KERNEL_ON_MAP, OddKernel, PluginArgs, Reduction
        >>> class MyArgs(PluginArgs):
        ...     reduction: Reduction = Field(16, description="hidden width C / reduction")
        ...     kernel_size: Annotated[OddKernel, KERNEL_ON_MAP] = Field(7, description="spatial kernel")
        >>> MyArgs(reduction=8).kwargs()
        {'reduction': 8, 'kernel_size': 7}
        >>> MyArgs.model_validate({"kernel_size": 4})
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for MyArgs
        ...
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, validate_default=True)

    site_bounds: ClassVar[dict[str, str]] = {}

    def kwargs(self) -> dict[str, Any]:
        """The validated values, as the plugin's constructor takes them.

        Returns:
            Every field's value by name, ready to be passed to the plugin's constructor as keywords.

        Examples:
            >>> PluginArgs().kwargs()
            {}
        """
        return {name: getattr(self, name) for name in type(self).model_fields}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        """Refuse values too large for ``site``.

        Checks every field declared with a ``SiteLimit``: its value may be at most the bound measured
        on the site, or the field's default where that is larger (so a default fits every site).
        Plugins with bounds of their own (a divisor of the channels) override this, call it, and
        refuse with ``refuse``.

        Args:
            site: Where the step is planned.
            replaced: The module a ``mode="replace"`` plugin replaces there, or None.

        Raises:
            SiteError: A value is too large for this site; the message names the argument, the
                bound and why.
        """
        for name, field in type(self).model_fields.items():
            limit = next((m for m in field.metadata if isinstance(m, SiteLimit)), None)
            value = getattr(self, name)
            if limit is None or value is None:
                continue
            default = field.default if isinstance(field.default, tuple) else (field.default,)
            measured = limit.measure(site, replaced)
            bound = max(measured, *(d for d in default if d is not None))
            largest = max(value) if isinstance(value, tuple) else value
            if largest > bound:
                why = limit.why.format(limit=measured, spatial="x".join(map(str, site.spatial)))
                self.refuse(name, largest, f"more than {bound}", site, why)

    def refuse(self, name: str, value: Any, bound: str, site: Site, why: str) -> None:
        """Raise the SiteError of an argument that does not fit ``site``, with the hint every refusal shares.

        Args:
            name: The argument.
            value: Its value.
            bound: What it exceeds, as a phrase ("more than 7", "not a divisor of 96").
            site: The site it does not fit.
            why: One clause on why the bound exists.

        Raises:
            SiteError: Always.
        """
        raise SiteError(
            f"argument '{name}' = {reprlib.repr(value)} is {bound} at site '{site.path}': {why}",
            hint=f"lower '{name}' for this step, or leave the site out with `where: {{exclude: [...]}}` "
                 "or `on_unfit: skip`; `plugsurgeon plugins` shows each argument's range",
        )


def describe(model: type[PluginArgs]) -> dict[str, dict[str, Any]]:
    """Per argument: type, default, range, site bound and description, as plain JSON-able data."""
    schema = model.model_json_schema()["properties"]
    described = {}
    for name, field in model.model_fields.items():
        prop = schema[name]
        limit = next((m for m in field.metadata if isinstance(m, SiteLimit)), None)
        described[name] = {
            "type": _type_name(prop),
            "default": prop.get("default"),
            "range": _range(prop),
            "site_bound": "; ".join(b for b in (limit.describe if limit else None, model.site_bounds.get(name)) if b) or None,
            "description": field.description or "",
        }
    return described


def _type_name(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_name(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"])
    if prop.get("type") == "array":
        return f"list of {_type_name(prop['items'])}"
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "null"}.get(str(prop.get("type")), "any")


def _range(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return "; ".join(r for r in (_range(p) for p in prop["anyOf"]) if r)
    parts = []
    if prop.get("type") == "array":
        count = f"{prop.get('minItems', 0)} to {prop['maxItems']}" if "maxItems" in prop else f"at least {prop.get('minItems', 0)}"
        inner = _range(prop["items"])
        return f"{count} items" + (f", each {inner}" if inner else "")
    low = f"{prop['minimum']} <= " if "minimum" in prop else f"{prop['exclusiveMinimum']} < " if "exclusiveMinimum" in prop else ""
    high = f" <= {prop['maximum']}" if "maximum" in prop else f" < {prop['exclusiveMaximum']}" if "exclusiveMaximum" in prop else ""
    if low or high:
        parts.append(f"{low}x{high}")
    if prop.get("odd"):
        parts.append("odd")
    return ", ".join(parts)
