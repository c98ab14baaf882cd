"""Recipes: declarative, validated lists of surgery steps, loaded from plain YAML.

A recipe may come from anywhere, so its YAML is data in the plainest sense: no anchors or aliases
(a few hundred bytes of nested aliases expand to gigabytes), no tags (``!!binary``, ``!!python/...``),
no duplicate keys, a bounded size and nesting depth, and only JSON's scalar types (a date stays a
string). Plugin arguments are validated against each plugin's typed, bounded argument model.
"""

from __future__ import annotations

import keyword
import unicodedata
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plugsurgeon.errors import RecipeError, UnknownNameError, did_you_mean
from plugsurgeon.sites.find import ALIASES, check_role
from plugsurgeon.sites.select import Where

MAX_RECIPE_BYTES = 64 * 1024  # built-in recipes are under 1 KB; a recipe with a step per layer of a big model fits
MAX_YAML_DEPTH = 16  # a recipe nests five deep (steps, a step, where, a list)


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
            raise ValueError(
                f"plugin '{self.plugin}' takes {', '.join(spec.roles)} sites, not '{self.at}'"
                + ("; ACBlock-style replacements target `at: conv` with `where: {kernel: 3}`" if spec.mode == "replace" else "")
            )
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


def _builtin_dir():
    return resources.files("plugsurgeon.recipes")


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
    for entry in sorted(_builtin_dir().iterdir(), key=lambda e: e.name):
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
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(spec):
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist", hint="`plugsurgeon recipes` lists the built-in recipes")
        try:
            with path.open("rb") as handle:  # read no more than the limit, whatever the file claims
                data = handle.read(MAX_RECIPE_BYTES + 1)
            text = data.decode("utf-8")
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
    if len(text) > MAX_RECIPE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source} is larger than {MAX_RECIPE_BYTES // 1024} KiB, more than any recipe needs",
                          hint="a recipe lists steps; split a generated one, or check that the file is a recipe")
    try:
        _check_plain(text, source)
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader with fewer types
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return _validated(data, source)


def _validated(data: object, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping with 'name' and 'steps', got {type(data).__name__}",
                          hint="`plugsurgeon recipes show cbam` prints a recipe in the format, ready to copy")
    try:
        return Recipe.model_validate({**data, "source": source})
    except ValidationError as error:
        raise RecipeError(_describe(error, source), hint="`plugsurgeon recipes show cbam` prints a recipe in the format; `plugsurgeon plugins show PLUGIN` lists a plugin's arguments with ranges") from None
    except UnknownNameError as error:
        raise RecipeError(f"{source}: {error.message}", hint=error.hint) from None


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that resolves plain scalars to JSON's types only and refuses duplicate keys.

    YAML 1.1 also reads timestamps (``2024-01-01`` becomes a date) and merge keys (``<<``, which need
    aliases); neither means anything in a recipe."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag.rsplit(":", 1)[-1] in ("bool", "int", "float", "null")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # node: a yaml MappingNode (yaml is untyped)
        seen = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key; the schema refuses it with its field name
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_plain(text: str, source: str) -> None:
    """Refuse anchors, aliases, tags and deep nesting from the event stream, before anything is built
    (PyYAML would expand an alias bomb while constructing, and recurse on deep nesting)."""
    depth = 0
    for event in yaml.parse(text, Loader=_RecipeLoader):
        line = f" (line {event.start_mark.line + 1})" if event.start_mark is not None else ""
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            name = getattr(event, "anchor", None)
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise RecipeError(f"{source} uses the YAML {kind}{name}{line}: "
                              "recipes refuse anchors and aliases", hint="write each value out where it is used")
        tag = getattr(event, "tag", None)
        if tag is not None and isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            tag = tag.replace("tag:yaml.org,2002:", "!!")
            raise RecipeError(f"{source} uses the YAML tag {tag}{line}: recipes hold plain values only",
                              hint="remove the tag; arguments are numbers, booleans, strings or lists of them")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise RecipeError(f"{source} nests deeper than {MAX_YAML_DEPTH} levels{line}", hint="a recipe nests a few levels at most")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _describe(error: ValidationError, source: str) -> str:
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
