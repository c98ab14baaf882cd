"""The plugin catalog as data: ``catalog.json`` next to this file, generated from the live registry.

Listing the catalog (``plugsurgeon plugins``, ``plugsurgeon plugins show NAME``) needs only what each
plugin declares: name, mode, roles, identity at init, paper, summary, and its arguments (types,
defaults, ranges, the JSON schema of its argument model). Importing the registry for that means
importing torch and every plugin, seconds before the first line is printed; so the declarations are
written once into ``catalog.json`` and the listings read that file. Anything that touches a model
(plan, apply, recipes validated against the plugins) still uses the registry itself.

After adding or changing a plugin, regenerate the file and commit it::

    python -m plugsurgeon.plugins.catalog --write

``--check`` exits 1 if the file differs from what the registry generates now; so does a test
(tests/cli/test_listings.py), naming the command above.

Nothing here imports torch at module level: ``load()`` reads JSON, ``generate()`` imports the registry.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CATALOG_FILE = Path(__file__).with_name("catalog.json")
REGENERATE = "python -m plugsurgeon.plugins.catalog --write"


def entry(spec) -> dict[str, Any]:
    """One plugin's declared metadata: ``PluginSpec.to_dict()`` plus the JSON schema of its arguments."""
    return {**spec.to_dict(), "schema": spec.args.model_json_schema()}


def generate() -> list[dict[str, Any]]:
    """The catalog's entries from the live registry: the built-in plugins, by name.

    Plugins registered from elsewhere (a user's module, a test) are not built in and are left out; the
    built-in ones are those of the modules ``registry.BUILT_IN`` lists.
    """
    from plugsurgeon.plugins.registry import BUILT_IN_MODULES, catalog

    return [entry(spec) for spec in catalog().values() if getattr(spec.factory, "__module__", "") in BUILT_IN_MODULES]


def render(entries: list[dict[str, Any]]) -> str:
    """The file's text: stable (key order as declared, plugins by name), one trailing newline."""
    document = {"generated_by": REGENERATE, "plugins": entries}
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def load() -> list[dict[str, Any]]:
    """The built-in plugins' entries, read from ``catalog.json`` (no torch, no plugin imported).

    A missing file (a broken install) falls back to the registry: slower, never wrong.
    """
    try:
        text = CATALOG_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        return generate()
    return json.loads(text)["plugins"]


def stale() -> str | None:
    """Why ``catalog.json`` differs from what the registry generates now, or None if it does not."""
    expected = generate()
    try:
        recorded = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))["plugins"]
    except FileNotFoundError:
        return f"{CATALOG_FILE} does not exist"
    if render(recorded) == render(expected):
        return None
    old = {e["name"]: e for e in recorded}
    new = {e["name"]: e for e in expected}
    parts = []
    if sorted(new) != sorted(old):
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        parts += [f"not in the file: {added}"] * bool(added) + [f"no longer registered: {removed}"] * bool(
            removed
        )
    changed = sorted(name for name in set(new) & set(old) if new[name] != old[name])
    if changed:
        parts.append(f"declarations changed: {changed}")
    return f"{CATALOG_FILE.name} is out of date with the plugin registry ({'; '.join(parts) or 'formatting'})"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m plugsurgeon.plugins.catalog", description=__doc__.split("\n\n")[0]
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--write", action="store_true", help=f"regenerate {CATALOG_FILE.name} from the registry"
    )
    action.add_argument("--check", action="store_true", help=f"exit 1 if {CATALOG_FILE.name} is out of date")
    args = parser.parse_args(argv)
    if args.write:
        entries = generate()
        CATALOG_FILE.write_text(render(entries), encoding="utf-8")
        print(f"wrote {CATALOG_FILE} ({len(entries)} plugins)")
        return 0
    problem = stale()
    if problem:
        print(f"{problem}: run `{REGENERATE}` and commit it", file=sys.stderr)
        return 1
    print(f"{CATALOG_FILE.name} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
