"""Recipes: declarative, validated lists of surgery steps, loaded from YAML with safe_load."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plugsurgeon.errors import RecipeError, UnknownNameError, did_you_mean
from plugsurgeon.sites.find import ALIASES, check_role
from plugsurgeon.sites.select import Where


class Step(BaseModel):
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
        if value is not None and not value.isidentifier():
            raise ValueError(f"'{value}' is not a valid attribute name")
        return value

    @model_validator(mode="after")
    def _plugin_fits(self):
        from plugsurgeon.plugins.registry import get_plugin

        spec = get_plugin(self.plugin)
        check_role(self.at)
        role = ALIASES.get(self.at, (self.at, {}))[0]
        if not spec.fits(role):
            raise ValueError(
                f"plugin '{self.plugin}' takes {', '.join(spec.roles)} sites, not '{self.at}'"
                + ("; ACBlock-style replacements target `at: conv` with `where: {kernel: 3}`" if spec.mode == "replace" else "")
            )
        structural = sorted(set(self.args) & spec.structural)
        if structural:
            raise ValueError(f"argument(s) {structural} of plugin '{self.plugin}' come from the graph and cannot be set")
        settable = spec.settable_args()
        unknown = sorted(set(self.args) - set(settable))
        if unknown:
            raise ValueError(f"plugin '{self.plugin}' has no argument(s) {unknown}; it takes {sorted(settable) or 'none'}")
        return self

    def selector(self) -> Where:
        alias = ALIASES.get(self.at)
        if alias is None:
            return self.where
        return Where(**{**alias[1], **self.where.model_dump(exclude_unset=True)})

    def role(self) -> str:
        return ALIASES.get(self.at, (self.at, {}))[0]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    paper: str | None = None
    steps: list[Step] = Field(min_length=1)
    source: str | None = Field(default=None, exclude=True, description="where the recipe was read from")


def _builtin_dir():
    return resources.files("plugsurgeon.recipes")


def builtin_recipes() -> dict[str, Recipe]:
    found = {}
    for entry in sorted(_builtin_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            recipe = parse_recipe(entry.read_text(encoding="utf-8"), source=f"built-in recipe '{entry.name[:-5]}'")
            found[recipe.name] = recipe
    return found


def load_recipe(spec: str | Path | Recipe) -> Recipe:
    """A Recipe, a path to a YAML file, or the name of a built-in recipe."""
    if isinstance(spec, Recipe):
        return spec
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(spec):
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist", hint="`plugsurgeon recipes` lists the built-in recipes")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise RecipeError(f"cannot read recipe file '{path}': {error}") from None
        return parse_recipe(text, source=str(path))
    entry = _builtin_dir() / f"{spec}.yaml"
    if not entry.is_file():
        names = [e.name[:-5] for e in _builtin_dir().iterdir() if e.name.endswith(".yaml")]
        suggestion = did_you_mean(str(spec), names)
        raise UnknownNameError(
            f"unknown recipe '{spec}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon recipes` lists the built-in recipes; a file path must end in .yaml",
        )
    return parse_recipe(entry.read_text(encoding="utf-8"), source=f"built-in recipe '{spec}'")


def parse_recipe(text: str, *, source: str = "<string>") -> Recipe:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping with 'name' and 'steps', got {type(data).__name__}",
                          hint="see `plugsurgeon recipes` and recipes/cbam.yaml for the format")
    try:
        return Recipe(**data, source=source)
    except ValidationError as error:
        raise RecipeError(_describe(error, source), hint="see recipes/cbam.yaml for the format; `plugsurgeon plugins` lists plugins and their arguments") from None
    except UnknownNameError as error:
        raise RecipeError(f"{source}: {error.message}", hint=error.hint) from None


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "recipe"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{source}: field '{location}': {message}{more}"
