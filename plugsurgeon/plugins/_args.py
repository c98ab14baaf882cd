"""Plugin arguments: one pydantic model per plugin, typed and bounded, declared next to the module.

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


Reduction = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
HiddenWidth = Annotated[int, Field(ge=1, le=MAX_WIDTH), HIDDEN]


def odd_kernel(largest: int) -> Any:
    """An odd kernel size from 1 to ``largest`` (odd, so that "same" padding keeps the map size)."""
    return Annotated[int, Field(ge=1, le=largest, json_schema_extra={"odd": True}), AfterValidator(_odd)]


OddKernel = odd_kernel(MAX_KERNEL)
Dilation = Annotated[int, Field(ge=1, le=MAX_DILATION)]
BnEps = Annotated[float, Field(gt=0.0, le=1.0, description="BatchNorm epsilon of the new BatchNorms")]
BnMomentum = Annotated[float, Field(ge=0.0, le=1.0, description="BatchNorm momentum of the new BatchNorms")]


def Ints(item: Any, *, min_length: int = 1, max_length: int = MAX_BRANCHES) -> Any:  # noqa: N802 - a type factory
    """A tuple of ``item``: YAML and JSON give lists, which are taken as tuples; items stay strict."""
    return Annotated[tuple[item, ...], Field(strict=False, min_length=min_length, max_length=max_length)]


class PluginArgs(BaseModel):
    """The arguments a recipe may set for one plugin. Subclass it once per plugin (fields with types,
    ranges, paper defaults and descriptions) and pass it to ``register_plugin(args=...)``; structural
    arguments (channels, the replaced module) come from the graph and are not fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False, validate_default=True)

    # Site bounds a subclass checks in its own ``check_site``, in words for the catalog.
    site_bounds: ClassVar[dict[str, str]] = {}

    def kwargs(self) -> dict[str, Any]:
        """The validated values, as the plugin's constructor takes them."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        """Refuse values too large for this site (``SiteLimit`` fields); plugins with bounds of
        their own (a divisor of the channels) extend this."""
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
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "null"}.get(prop.get("type"), "any")


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


# Planning sizes every new module before allocating it; a plan may add at most this many parameter
# and buffer elements: ten times the model, with a floor for small models (a context module such as
# ASPP can outweigh a toy network) and a cap for large ones.
BUDGET_FACTOR = 10
BUDGET_FLOOR = 16_000_000
BUDGET_CAP = 1_000_000_000


def added_budget(model_elements: int) -> int:
    """How many parameter and buffer elements surgery may add to a model of ``model_elements``."""
    return min(BUDGET_CAP, max(BUDGET_FLOOR, BUDGET_FACTOR * model_elements))


def budget_text(model_elements: int) -> str:
    return (f"{added_budget(model_elements):,} elements ({BUDGET_FACTOR} x the model's {model_elements:,}, "
            f"at least {BUDGET_FLOOR:,}, at most {BUDGET_CAP:,})")
