"""What the listing commands show, read as data: no torch, no plugin module, no recipe validation.

``plugsurgeon plugins`` and ``plugins show NAME`` read the generated catalog file
(plugsurgeon/plugins/catalog.py); ``plugsurgeon recipes`` and ``recipes show NAME`` read the built-in
recipes' YAML. Both are checked against the live registry and the validated recipes by the tests
(tests/cli/test_listings.py), so what is listed is what ``apply`` would use.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from plugsurgeon.errors import UnknownNameError, did_you_mean


def plugins() -> list[dict[str, Any]]:
    from plugsurgeon.plugins import catalog

    return catalog.load()


def plugin(name: str) -> dict[str, Any]:
    found = {entry["name"]: entry for entry in plugins()}
    if name not in found:
        suggestion = did_you_mean(name, list(found))
        raise UnknownNameError(
            f"unknown plugin '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon plugins` lists the catalog",
        )
    return found[name]


def _recipe_files() -> dict[str, Any]:
    """The built-in recipes' files by the name ``--recipe NAME`` takes (the file name without .yaml)."""
    directory = resources.files("plugsurgeon.recipes")
    return {
        entry.name[:-5]: entry
        for entry in sorted(directory.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def recipe_text(name: str) -> str:
    """A built-in recipe's YAML exactly as shipped (comments included), to copy and edit."""
    files = _recipe_files()
    if name not in files:
        suggestion = did_you_mean(name, list(files))
        raise UnknownNameError(
            f"unknown recipe '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="`plugsurgeon recipes` lists the built-in recipes",
        )
    return files[name].read_text(encoding="utf-8")


def recipes() -> list[dict[str, Any]]:
    """Every built-in recipe as plain data: name, description, paper, steps (the YAML's own values).

    The files ship with the package and are validated by the test suite, so they are read with
    PyYAML's safe loader alone; ``--recipe NAME`` validates them in full before any model is built.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    found = []
    for _name, entry in _recipe_files().items():
        data = yaml.load(entry.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
        found.append(
            {
                "name": data["name"],
                "description": data.get("description", ""),
                "paper": data.get("paper"),
                "steps": list(data["steps"]),
            }
        )
    return found
