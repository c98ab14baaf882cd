"""The package reads as its pipeline: every import, function-level ones included, goes down the stages.

A cycle or an upward import fails here with the import that causes it, so a new module cannot quietly
tie two stages together again (surgery once recorded its own replay and replay called surgery back).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "plugsurgeon"

# Lower stages first; a module may import its own stage and the ones before it.
STAGES = [
    {"errors", "progress"},
    {"graph"},
    {"sites"},
    {"drawing"},  # pictures read traces, sites and reports (by what they hold), so surgery's report can draw itself
    {"plugins"},
    {"surgery"},
    {"deployment"},
    {"store", "export"},
    {"integrations"},
    {"sweep"},  # searches placements with recipes, surgery and the framework trainers
    {"cli"},
]
STAGE_OF = {name: index for index, names in enumerate(STAGES) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(module imported, line) for every plugsurgeon import in the file, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "plugsurgeon":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.append((target if target in modules else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "plugsurgeon"]
    return found


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGE_OF.get(parts[1]) if len(parts) > 1 else None


def test_every_stage_is_known():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert top - {"__init__"} <= set(STAGE_OF) | {"recipes"}, "a new top-level module or package needs its stage here"


def test_imports_only_go_down_the_stages():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        here = _stage(name)
        for target, line in _imports(path, modules):
            there = _stage(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not upward, "imports up the pipeline:\n" + "\n".join(upward)


def test_the_module_graph_has_no_cycle():
    modules = _modules()
    edges = {name: {t for t, _ in _imports(path, modules) if t in modules and t != name} for name, path in modules.items()}
    # A package's __init__ is imported with each of its modules: it may not import them back.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
