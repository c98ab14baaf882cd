"""A recipe's text and its YAML, read as plain data: what can be checked before torch is imported.

``plugsurgeon apply MODEL --recipe cbma`` should say "unknown recipe" at once, not after torch and the
model have loaded. Finding a recipe (a built-in name or a file) and reading its YAML need neither, so
they live here, apart from the schema (``plugsurgeon.surgery.recipe``), whose roles and plugin
arguments do.

A recipe may come from anywhere, so its YAML is data in the plainest sense: no anchors or aliases
(a few hundred bytes of nested aliases expand to gigabytes), no tags (``!!binary``, ``!!python/...``),
no duplicate keys, a bounded size and nesting depth, and only JSON's scalar types (a date stays a
string).
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from plugsurgeon.errors import RecipeError, UnknownNameError, did_you_mean
from plugsurgeon.surgery.recipe_names import check_step_names

MAX_RECIPE_BYTES = 64 * 1024  # built-in recipes are under 1 KB; a recipe with a step per layer of a big model fits
MAX_YAML_DEPTH = 16  # a recipe nests five deep (steps, a step, where, a list)


def builtin_dir() -> Traversable:
    return resources.files("plugsurgeon.recipes")


def recipe_text(spec: str | Path) -> tuple[str, str]:
    """The YAML text ``spec`` names (a path to a file, or a built-in recipe's name) and where it was
    read from, for messages.

    Raises:
        RecipeError: The file does not exist or cannot be read.
        UnknownNameError: ``spec`` names no built-in recipe (close names are suggested).
    """
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
        return text, str(path)
    entry = builtin_dir() / f"{spec}.yaml"
    if not entry.is_file():
        names = [e.name[:-5] for e in builtin_dir().iterdir() if e.name.endswith(".yaml")]
        suggestion = did_you_mean(str(spec), names)
        raise UnknownNameError(
            f"unknown recipe '{spec}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon recipes` lists the built-in recipes; a file path must end in .yaml",
        )
    return entry.read_text(encoding="utf-8"), f"built-in recipe '{spec}'"


def read_yaml(text: str, source: str) -> object:
    """The plain data of a recipe's YAML text.

    Raises:
        RecipeError: The text is too large, not YAML, or uses anchors, aliases, tags or deep nesting.
    """
    if len(text) > MAX_RECIPE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source} is larger than {MAX_RECIPE_BYTES // 1024} KiB, more than any recipe needs",
                          hint="a recipe lists steps; split a generated one, or check that the file is a recipe")
    try:
        _check_plain(text, source)
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader with fewer types
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{source} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None


def check_recipe_text(spec: str | Path, *, user_plugins: bool = False) -> list[str]:
    """Everything about the recipe ``spec`` names that needs no torch: that it exists, reads, parses
    as plain YAML and is a mapping, and that its steps name known plugins and roles
    (``recipe_names.check_step_names``). The schema is checked when the recipe is loaded (``load_recipe``).

    Args:
        spec: A built-in recipe's name or a path to a recipe file.
        user_plugins: Whether the user's code, imported before the recipe is loaded, may register plugins.

    Returns:
        The plugin names left for ``load_recipe``: not built in, but possibly registered.

    Raises:
        RecipeError: As ``recipe_text`` and ``read_yaml``, or the YAML is not a mapping with steps.
        UnknownNameError: ``spec`` names no built-in recipe, or a step an unknown plugin or role.
    """
    text, source = recipe_text(spec)
    data = read_yaml(text, source)
    if not isinstance(data, dict):
        raise RecipeError(f"{source} must be a mapping with 'name' and 'steps', got {type(data).__name__}",
                          hint="`plugsurgeon recipes show cbam` prints a recipe in the format, ready to copy")
    return check_step_names(data, source, user_plugins=user_plugins)


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
