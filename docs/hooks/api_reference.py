"""The API reference's completeness check: docs/api.md documents exactly ``plugsurgeon.__all__``.

docs/api.md is written by hand (the names grouped by what they are for), each name as a mkdocstrings
directive on the public top-level name (``::: plugsurgeon.apply``, never a module path inside the package,
so moving code between modules changes nothing here). At build time this hook reads ``plugsurgeon.__all__``
(importing ``plugsurgeon`` is cheap: its names load lazily) and stops the build if a public name has no
directive on the page, if a directive names something that is not public, or if a name is documented twice.

Run alone, ``python docs/hooks/api_reference.py`` does the same check and exits 1 on a mismatch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

PAGE = "api.md"
PAGE_FILE = Path(__file__).resolve().parents[1] / PAGE
_DIRECTIVE = re.compile(r"^:::\s+(\S+)\s*$", re.MULTILINE)


def problems(markdown: str) -> list[str]:
    """What is wrong with the page's directives, as sentences; empty when it documents exactly ``__all__``."""
    import plugsurgeon

    public = list(plugsurgeon.__all__)
    targets = _DIRECTIVE.findall(markdown)
    documented = [t.removeprefix("plugsurgeon.") for t in targets if t.startswith("plugsurgeon.")]
    found = []
    missing = [name for name in public if name not in documented]
    if missing:
        found.append(
            f"in plugsurgeon.__all__ but not documented: {', '.join(missing)} "
            f"(add `::: plugsurgeon.NAME` to docs/{PAGE})"
        )
    not_public = [
        t for t in targets if not t.startswith("plugsurgeon.") or t.removeprefix("plugsurgeon.") not in public
    ]
    if not_public:
        found.append(
            f"documented but not in plugsurgeon.__all__: {', '.join(not_public)} "
            "(document public names only, as `::: plugsurgeon.NAME`)"
        )
    twice = sorted({name for name in documented if documented.count(name) > 1})
    if twice:
        found.append(f"documented more than once: {', '.join(twice)}")
    return found


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == PAGE:
        wrong = problems(markdown)
        if wrong:
            raise PluginError(f"docs/{PAGE} does not match plugsurgeon.__all__:\n  " + "\n  ".join(wrong))
    return markdown


if __name__ == "__main__":
    wrong = problems(PAGE_FILE.read_text(encoding="utf-8"))
    for line in wrong:
        print(f"docs/{PAGE}: {line}", file=sys.stderr)
    if not wrong:
        print(f"docs/{PAGE} documents every name in plugsurgeon.__all__")
    sys.exit(1 if wrong else 0)
