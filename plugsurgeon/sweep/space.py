"""A search space written like a recipe: each field of a step takes one value or a choice of values.

```yaml
sweep:
  name: attention-placement
  steps:
    - plugin: [se, cbam, eca]                 # a name, or a choice of names
      at: residual.branch                     # a role, or a choice of roles
      stages: {subsets_of: [2, 3, 4, 5]}      # any non-empty subset; or [4, 5] (fixed) or [[4, 5], [5]] (a choice)
      density: [every, per_stage_last, last]  # every site, the last of each stage, the last one
      args: {reduction: [8, 16]}              # a choice, or a range {low: 4, high: 32, step: 4}
      optional: false                         # true: the step may be left out altogether
```

The file is read as a recipe is (plain YAML data, no anchors or tags), and validated against the plugin
registry before anything runs: every plugin must exist and take the role, every argument choice (and
both ends of a range) must be within the bounds its plugin declares. ``check_model`` then checks the
stages against the model's sites. A candidate is one value per dimension (``dimensions``), and
``resolve`` turns it into recipe steps.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plugsurgeon.errors import PlugsurgeonError, RecipeError, UnknownNameError
from plugsurgeon.sites.select import Where
from plugsurgeon.surgery.recipe import ArgumentError, Recipe, Step, describe_invalid
from plugsurgeon.surgery.recipe_yaml import MAX_RECIPE_BYTES, read_yaml

Density = Literal["every", "per_stage_last", "last"]
# What each density adds to a step's `where:` (applied after the stage filter).
DENSITY_SELECTORS: dict[str, dict[str, int]] = {"every": {}, "per_stage_last": {"per_stage_last": 1}, "last": {"last": 1}}
Scalar = bool | int | float | str
MAX_GRID = 1_000_000  # a grid beyond this is not listed; search it with a sampler instead


class Range(BaseModel):
    """A numeric argument's range: integers from ``low`` to ``high`` by ``step``, or floats (``log`` scale)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int | float
    high: int | float
    step: int | float | None = None
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"range low {self.low} is above high {self.high}")
        if self.step is not None and self.step <= 0:
            raise ValueError("range step must be positive")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def values(self) -> list[int | float] | None:
        """Every value of the range, or None for a continuous one."""
        if self.integer and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            count = int((self.high - self.low) / self.step + 1e-9) + 1
            return [self.low + i * self.step for i in range(count)]
        return None


class Subsets(BaseModel):
    """Every non-empty subset of the given stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subsets_of: list[int] = Field(min_length=1)


class SpaceStep(BaseModel):
    """One step of a space: a recipe step whose plugin, role, stages, density and arguments may be choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: str | list[str]
    at: str | list[str]
    stages: Subsets | list[int] | list[list[int]] | None = None
    density: Density | list[Density] | None = None
    where: Where = Field(default_factory=Where)
    args: dict[str, Scalar | list[Scalar] | Range] = Field(default_factory=dict)
    optional: bool = False
    name: str | None = None
    on_unfit: Literal["refuse", "skip"] = "refuse"

    def plugins(self) -> list[str]:
        return _choices(self.plugin)

    def roles(self) -> list[str]:
        return _choices(self.at)

    def densities(self) -> list[str]:
        return _choices(self.density) if self.density is not None else []

    def stage_numbers(self) -> list[int]:
        """Every stage the step may name."""
        if isinstance(self.stages, Subsets):
            return sorted(set(self.stages.subsets_of))
        if not self.stages:
            return []
        if isinstance(self.stages[0], list):
            return sorted({s for choice in self.stages for s in choice})
        return sorted(set(self.stages))

    @model_validator(mode="after")
    def _valid(self):
        for values, what in ((self.plugins(), "plugin"), (self.roles(), "at"), (self.densities(), "density")):
            if self.density is not None or what != "density":
                _distinct(values, what)
        if self.stages is not None and self.where.stages is not None:
            raise ValueError("give the stages either in `stages` or in `where.stages`, not both")
        if isinstance(self.stages, list) and self.stages and isinstance(self.stages[0], list):
            if any(not choice for choice in self.stages):
                raise ValueError("a choice of stages may not be empty")
        density_keys = {"per_stage_last", "last"} & set(self.where.model_dump(exclude_unset=True))
        if self.density is not None and density_keys:
            raise ValueError(f"`density` and `where.{sorted(density_keys)[0]}` both choose sites by position; keep one")
        for plugin, at in itertools.product(self.plugins(), self.roles()):
            Step(plugin=plugin, at=at, where=self.where, name=self.name)  # the plugin exists and takes the role
        for arg, value in self.args.items():
            takers = [p for p in self.plugins() if arg in _settable(p)]
            if not takers:
                raise ArgumentError(f"no plugin of {self.plugins()} takes argument '{arg}'", ("args", arg))
            ends = [value.low, value.high] if isinstance(value, Range) else _choices(value)
            for plugin in takers:
                for end in ends:
                    try:
                        Step(plugin=plugin, at=self.roles()[0], args={arg: end})
                    except ValidationError as error:
                        cause = error.errors()[0].get("ctx", {}).get("error")
                        message = str(cause) if cause is not None else error.errors()[0]["msg"]
                        raise ArgumentError(message, ("args", arg)) from None
        return self


class Space(BaseModel):
    """A search space: named steps, each a choice of recipe steps; what a space YAML's ``sweep:`` holds.

    Attributes:
        name: The space's name; the study is named after it unless told otherwise.
        description: What it searches, one line.
        steps: The steps, combined in order in every candidate.
        source: Where it was read from; not part of its content.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "sweep"
    description: str = ""
    steps: list[SpaceStep] = Field(min_length=1)
    source: str | None = Field(default=None, exclude=True)


def _choices(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _distinct(values: list[Any], what: str) -> None:
    if not values:
        raise ValueError(f"`{what}` needs at least one choice")
    if len({repr(v) for v in values}) != len(values):
        raise ValueError(f"`{what}` lists a choice twice")


def _settable(plugin: str) -> set[str]:
    from plugsurgeon.plugins.registry import get_plugin

    return set(get_plugin(plugin).args.model_fields)


def load_space(spec: str | Path | dict | Space) -> Space:
    """A validated space from a YAML file, its content as a mapping, or a ``Space``.

    Args:
        spec: The space; a mapping or file may hold it under a top-level ``sweep:`` key or bare.

    Returns:
        The space, its plugins and arguments checked against the registry.

    Raises:
        RecipeError: The file cannot be read, or the space is malformed: an unknown plugin or role, an
            argument no plugin takes or out of its plugin's bounds.
    """
    if isinstance(spec, Space):
        return spec
    if isinstance(spec, dict):
        return _validated(spec, "the space mapping")
    path = Path(spec)
    if not path.is_file():
        raise RecipeError(f"space file '{path}' does not exist", hint="write one as docs/sweep.md shows")
    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_RECIPE_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read space file '{path}': {error}") from None
    return _validated(read_yaml(text, str(path)), str(path))  # plain data, as recipes are read


def _validated(data: object, source: str) -> Space:
    if isinstance(data, dict) and set(data) == {"sweep"}:
        data = data["sweep"]
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping with 'steps' (under a top-level 'sweep:')",
                          hint="see docs/sweep.md for the format")
    try:
        return Space.model_validate({**data, "source": source})
    except ValidationError as error:
        raise RecipeError(describe_invalid(error, source).replace("field 'steps.", "field 'sweep.steps."),
                          hint="`plugsurgeon plugins show PLUGIN` lists a plugin's arguments with their ranges") from None
    except UnknownNameError as error:
        raise RecipeError(f"{source}: {error.message}", hint=error.hint) from None


def check_model(space: Space, traced: Any, model_name: str) -> None:
    """Refuse a space naming a stage where the model has no site of the step's role, before anything runs.

    Args:
        space: The space.
        traced: The model's trace (``ps.trace``).
        model_name: The model, for the message.

    Raises:
        RecipeError: A step names a stage the model lacks.
    """
    from plugsurgeon.plugins.registry import get_plugin
    from plugsurgeon.sites.find import locate
    from plugsurgeon.sites.site import role_matches

    sites = locate(traced)
    for index, step in enumerate(space.steps, start=1):
        wanted = step.stage_numbers() or list(step.where.stages or [])
        for at in step.roles():
            role = Step(plugin=step.plugins()[0], at=at).role()
            have = sorted({s.stage for s in sites if role_matches(s.role, role)
                           and any(get_plugin(p).fits(s.role) for p in step.plugins())})
            missing = [s for s in wanted if s not in have]
            if missing:
                where = f"{space.source or 'the space'}: step {index} ({at})"
                raise RecipeError(f"{where}: {model_name} has no {role} site at stage {', '.join(map(str, missing))}; "
                                  f"its {role} sites are at stages {have or 'none'}",
                                  hint=f"`plugsurgeon sites MODEL --kind {role}` lists them with their stages")


# -- dimensions: what one candidate chooses ------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One choice a candidate makes: a name (``step1.plugin``) and its values, or a continuous range."""

    name: str
    choices: tuple[Any, ...] | None = None  # None: a continuous range
    range: Range | None = None

    def values(self) -> list[Any] | None:
        """Every value, or None for a continuous range."""
        if self.choices is not None:
            return list(self.choices)
        return self.range.values() if self.range is not None else None


def dimensions(space: Space) -> list[Dimension]:
    """Every choice a candidate of ``space`` makes, in a fixed order (each step's, step by step).

    Args:
        space: The space.

    Returns:
        The dimensions; a step's stage subset is one yes/no dimension per stage.
    """
    found: list[Dimension] = []
    for index, step in enumerate(space.steps, start=1):
        prefix = f"step{index}."
        if step.optional:
            found.append(Dimension(prefix + "use", (True, False)))
        if len(step.plugins()) > 1:
            found.append(Dimension(prefix + "plugin", tuple(step.plugins())))
        if len(step.roles()) > 1:
            found.append(Dimension(prefix + "at", tuple(step.roles())))
        if isinstance(step.stages, Subsets):
            found += [Dimension(f"{prefix}stage{s}", (True, False)) for s in step.stage_numbers()]
        elif step.stages and isinstance(step.stages[0], list) and len(step.stages) > 1:
            found.append(Dimension(prefix + "stages", tuple(_stage_label(c) for c in step.stages)))
        if len(step.densities()) > 1:
            found.append(Dimension(prefix + "density", tuple(step.densities())))
        for arg, value in step.args.items():
            if isinstance(value, Range):
                values = value.values()
                found.append(Dimension(prefix + arg, None if values is None else tuple(values), value))
            elif isinstance(value, list) and len(value) > 1:
                found.append(Dimension(prefix + arg, tuple(value)))
    return found


def _stage_label(stages: list[int]) -> str:
    return ",".join(str(s) for s in stages)


def grid(space: Space) -> list[dict[str, Any]]:
    """Every candidate of a space whose dimensions are all finite, as one value per dimension.

    Raises:
        PlugsurgeonError: A dimension is a continuous range, or the grid is too large to list.
    """
    dims = dimensions(space)
    lists = []
    for dim in dims:
        values = dim.values()
        if values is None:
            raise PlugsurgeonError(f"'{dim.name}' is a continuous range: the space has no finite list of candidates",
                                   hint="give the range a `step`, or list choices, to list or grid-search the space")
        lists.append(values)
    size = 1
    for values in lists:
        size *= len(values)
    if size > MAX_GRID:
        raise PlugsurgeonError(f"the space has {size} combinations, too many to list",
                               hint="search it with a sampler (TPE, NSGA-II) and a number of trials instead")
    combos = (dict(zip([d.name for d in dims], combo, strict=True)) for combo in itertools.product(*lists))
    return [values for values in combos if invalid(space, values) is None]


def invalid(space: Space, values: dict[str, Any]) -> str | None:
    """Why a choice of values is no candidate (a step that must be used chose no stage), or None."""
    for index, step in enumerate(space.steps, start=1):
        prefix = f"step{index}."
        if isinstance(step.stages, Subsets) and not step.optional and values.get(prefix + "use", True) \
                and not any(values.get(f"{prefix}stage{s}", True) for s in step.stage_numbers()):
            return f"step {index} chose no stage (make the step `optional: true` to allow leaving it out)"
    return None


def resolve(space: Space, values: dict[str, Any]) -> Recipe | None:
    """The recipe one candidate stands for; None when it uses no step (the unedited model).

    Args:
        space: The space.
        values: One value per dimension (``dimensions``); fixed fields need none.

    Returns:
        The recipe, or None. An optional step whose subset of stages is empty is left out (``invalid``
        refuses an empty subset for a step that is not optional).
    """
    steps = []
    for index, step in enumerate(space.steps, start=1):
        prefix = f"step{index}."
        if step.optional and not values.get(prefix + "use", True):
            continue
        plugin = values.get(prefix + "plugin", step.plugins()[0])
        at = values.get(prefix + "at", step.roles()[0])
        where = step.where.model_dump(exclude_unset=True)
        if isinstance(step.stages, Subsets):
            chosen = [s for s in step.stage_numbers() if values.get(f"{prefix}stage{s}", True)]
            if not chosen:
                continue
            where["stages"] = chosen
        elif step.stages and isinstance(step.stages[0], list):
            label = values.get(prefix + "stages", _stage_label(step.stages[0]))
            where["stages"] = [int(s) for s in str(label).split(",")]
        elif step.stages:
            where["stages"] = list(step.stages)
        density = values.get(prefix + "density", step.densities()[0] if step.densities() else "every")
        where.update(DENSITY_SELECTORS[density])
        takes = _settable(plugin)
        args = {}
        for arg, value in step.args.items():
            if arg not in takes:
                continue  # an argument of another plugin of the choice
            if prefix + arg in values:
                args[arg] = values[prefix + arg]
            elif isinstance(value, list):
                args[arg] = value[0]
            elif not isinstance(value, Range):
                args[arg] = value
        steps.append(Step(plugin=plugin, at=at, where=Where(**where), args=args, name=step.name, on_unfit=step.on_unfit))
    if not steps:
        return None
    return Recipe(name=f"{space.name}-candidate", steps=steps)


def describe(recipe: Recipe | None) -> str:
    """A candidate in a few words: ``cbam residual.branch stages 4,5 per_stage_last reduction=8``."""
    if recipe is None:
        return "(unedited)"
    parts = []
    for step in recipe.steps:
        where = step.where.model_dump(exclude_unset=True)
        words = [step.plugin, step.at]
        if "stages" in where:
            words.append("stages " + _stage_label(where.pop("stages")))
        if where.pop("per_stage_last", None) == 1:
            words.append("per_stage_last")
        elif where.get("last") == 1 and where.pop("last"):
            words.append("last")
        words += [f"{k}={v}" for k, v in where.items()]
        words += [f"{k}={v}" for k, v in step.args.items()]
        parts.append(" ".join(words))
    return " + ".join(parts)
