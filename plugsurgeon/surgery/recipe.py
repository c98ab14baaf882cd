"""Recipes: declarative, validated lists of surgery steps, loaded from plain YAML.

The YAML is read as plain data (``plugsurgeon.surgery.recipe_yaml``: no anchors, aliases or tags, a
bounded size). Plugin arguments are validated against each plugin's typed, bounded argument model.
"""

from __future__ import annotations

import keyword
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plugsurgeon.errors import RecipeError, UnknownNameError
from plugsurgeon.sites.find import ALIASES, check_role
from plugsurgeon.sites.select import Where
from plugsurgeon.surgery.recipe_yaml import builtin_dir, read_yaml, recipe_text


class ArgumentError(ValueError):
    """A plugin argument that does not validate; ``loc`` is where it sits inside the step."""

    def __init__(self, message: str, loc: tuple[str, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class Step(BaseModel):
    """One step of a recipe: a plugin, the role of the sites it goes to, and which of them.

    Validated when it is made: the plugin must exist and fit the role, and its arguments must be ones
    the plugin takes, within their bounds (structural ones, such as channels, come from the graph).

    Attributes:
        plugin: The catalog name of the plugin (``plugsurgeon plugins`` lists them).
        at: A site role (``residual.branch``), a role family (``downsample``: every variant) or an
            alias (``conv3x3``).
        where: Selectors that narrow the sites of the role (paths, stages, kernel, every n-th...).
        args: The plugin's arguments; the ones not given take the plugin's defaults.
        name: The attribute name of each new module (default: the plugin's name).
        allow_empty: Accept a step that matches no site; otherwise it is an error.
        on_unfit: What a matched site the plugin cannot take does: ``"refuse"`` the whole recipe,
            or ``"skip"`` the site (the report says why).

    Examples:
        >>> step = ps.Step(plugin="se", at="residual.branch", where={"stages": [4, 5]}, args={"reduction": 8})
        >>> ps.Recipe(name="se-late", steps=[step])
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: str = Field(description="catalog name of the plugin")
    at: str = Field(description="site role, role family (e.g. `downsample`) or alias (`conv3x3`)")
    where: Where = Field(default_factory=Where)
    args: dict[str, Any] = Field(default_factory=dict, description="plugin arguments; structural ones come from the graph")
    name: str | None = Field(default=None, description="attribute name of the new module (default: the plugin name)")
    allow_empty: bool = Field(default=False, description="a step that matches no site is an error unless this is true")
    on_unfit: Literal["refuse", "skip"] = Field(
        default="refuse",
        description="a matched site the plugin cannot take (a conv subclass it cannot reproduce, a map too small) "
        "refuses the whole recipe (refuse), or is skipped and reported (skip)",
    )

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.isidentifier() or keyword.iskeyword(value):
            raise ValueError(f"'{value}' is not a valid attribute name")
        # Python reads identifiers NFKC-normalised ('ﬁlter' is 'filter'), so fx's generated code would
        # look up another attribute than the one set; a name of nn.Module or GraphModule's own would
        # shadow what the edited module needs.
        if unicodedata.normalize("NFKC", value) != value:
            raise ValueError(f"'{value}' is not in NFKC form; write '{unicodedata.normalize('NFKC', value)}'")
        if value.startswith("_") or value in _reserved_names():
            raise ValueError(f"'{value}' is a name torch modules use themselves (or private); choose another")
        return value

    @model_validator(mode="after")
    def _plugin_fits(self):
        from plugsurgeon.plugins.registry import get_plugin

        spec = get_plugin(self.plugin)
        check_role(self.at)
        role = ALIASES.get(self.at, (self.at, {}))[0]
        if not spec.fits(role):
            raise ValueError(f"plugin '{self.plugin}' takes {', '.join(spec.roles)} sites, not '{self.at}'; {_fitting_step(spec)}")
        structural = sorted(set(self.args) & spec.structural)
        if structural:
            raise ValueError(f"argument(s) {structural} of plugin '{self.plugin}' come from the graph and cannot be set")
        settable = spec.args.model_fields
        unknown = sorted(set(self.args) - set(settable))
        if unknown:
            raise ValueError(f"plugin '{self.plugin}' has no argument(s) {unknown}; it takes {sorted(settable) or 'none'}")
        try:
            spec.args.model_validate(self.args)
        except ValidationError as error:
            from plugsurgeon.plugins.registry import describe_error

            name = str(error.errors()[0]["loc"][0]) if error.errors()[0]["loc"] else ""
            raise ArgumentError(f"plugin '{self.plugin}': {describe_error(error, spec.args)}", ("args", name)) from None
        return self

    def plugin_args(self) -> BaseModel:
        """The step's arguments validated by the plugin's argument model (defaults filled in).

        Returns:
            An instance of the plugin's argument model.
        """
        from plugsurgeon.plugins.registry import get_plugin

        return get_plugin(self.plugin).validate_args(self.args)

    def selector(self) -> Where:
        """The step's selectors, with those an alias in ``at`` stands for (``conv3x3``: ``kernel: 3``).

        Returns:
            The ``Where`` to select the role's sites with.
        """
        alias = ALIASES.get(self.at)
        if alias is None:
            return self.where
        return Where(**{**alias[1], **self.where.model_dump(exclude_unset=True)})

    def role(self) -> str:
        """The role or role family the step targets, with an alias resolved (``conv3x3``: ``conv``).

        Returns:
            A role name or role family.
        """
        return ALIASES.get(self.at, (self.at, {}))[0]


class Recipe(BaseModel):
    """A named list of steps, applied in order; what a recipe YAML file holds, validated.

    Attributes:
        name: The recipe's name, as reports and saved manifests give it.
        description: What it does, one line.
        paper: The paper it follows, if any.
        steps: The steps, at least one.
        source: Where it was read from (a path, ``built-in recipe 'cbam'``); not part of its content.

    Examples:
        >>> recipe = ps.Recipe(name="eca-everywhere", steps=[{"plugin": "eca", "at": "residual.branch"}])
        >>> result = ps.apply(torchvision.models.resnet50(), recipe)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    paper: str | None = None
    steps: list[Step] = Field(min_length=1)
    source: str | None = Field(default=None, exclude=True, description="where the recipe was read from")


def _fitting_step(spec) -> str:
    """How a step of this plugin is written: its role, and the selector a typical step uses."""
    where = ", ".join(f"{key}: {value}" for key, value in spec.suggested_where)
    at = " or ".join(f"`at: {role}`" for role in spec.roles)
    return f"write {at}" + (f" with `where: {{{where}}}`" if where else "")


def builtin_recipes() -> dict[str, Recipe]:
    """Every recipe that ships with plugsurgeon, read and validated.

    Returns:
        The recipes by name, in file-name order.

    Examples:
        >>> recipes = ps.builtin_recipes()
        >>> recipes["cbam"].steps[0].at
        'residual.branch'
    """
    found = {}
    for entry in sorted(builtin_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            recipe = parse_recipe(entry.read_text(encoding="utf-8"), source=f"built-in recipe '{entry.name[:-5]}'")
            found[recipe.name] = recipe
    return found


@cache
def _reserved_names() -> frozenset[str]:
    import torch.fx
    from torch import nn

    instance = torch.fx.GraphModule(nn.Module(), torch.fx.Graph())
    return frozenset({*dir(torch.fx.GraphModule), *vars(instance)})


def load_recipe(spec: str | Path | Recipe | dict) -> Recipe:
    """A validated recipe from whatever names one.

    Args:
        spec: A ``Recipe`` (returned as it is), a mapping of a recipe YAML's content, a path to a
            YAML file (a ``.yaml``/``.yml`` suffix, or a path that exists), or the name of a built-in
            recipe.

    Returns:
        The recipe.

    Raises:
        RecipeError: The file does not exist or cannot be read, or the recipe is malformed.
        UnknownNameError: ``spec`` names no built-in recipe (close names are suggested).

    Examples:
        >>> ps.load_recipe("cbam").steps[0].plugin
        'cbam'
        >>> recipe = ps.load_recipe("recipes/my_recipe.yaml")
    """
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, dict):
        return _validated(spec, "the recipe mapping")
    if not isinstance(spec, (str, Path)):
        raise RecipeError(f"a recipe is a name, a path, a mapping or a ps.Recipe, not {type(spec).__name__}",
                          hint="for example ps.apply(model, 'cbam') or ps.apply(model, {'name': 'mine', 'steps': [...]})")
    text, source = recipe_text(spec)
    return parse_recipe(text, source=source)


def parse_recipe(text: str, *, source: str = "<string>") -> Recipe:
    """A recipe from YAML text.

    The YAML is read as plain data: no anchors, aliases or tags, no duplicate keys, JSON's scalar
    types only, at most 64 KiB.

    Args:
        text: The recipe as YAML.
        source: What the text is, for error messages (a file name).

    Returns:
        The recipe, validated.

    Raises:
        RecipeError: The text is too large, not YAML, or not a valid recipe.

    Examples:
        >>> recipe = ps.parse_recipe('''
        ... name: se-late
        ... steps:
        ...   - plugin: se
        ...     at: residual.branch
        ...     where: {stages: [4, 5]}
        ... ''')
    """
    data = read_yaml(text, source)
    return _validated(data, source)


def _validated(data: object, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping with 'name' and 'steps', got {type(data).__name__}",
                          hint="`plugsurgeon recipes show cbam` prints a recipe in the format, ready to copy")
    try:
        return Recipe.model_validate({**data, "source": source})
    except ValidationError as error:
        raise RecipeError(describe_invalid(error, source), hint="`plugsurgeon recipes show cbam` prints a recipe in the format; `plugsurgeon plugins show PLUGIN` lists a plugin's arguments with ranges") from None
    except UnknownNameError as error:
        raise RecipeError(f"{source}: {error.message}", hint=error.hint) from None


def describe_invalid(error: ValidationError, source: str) -> str:
    """The first problem of a recipe's (or a space's) validation error, with its field, as one line."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "recipe"
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, ArgumentError):
        location = ".".join([location, *cause.loc])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: field '{location}': {message}{more}"
