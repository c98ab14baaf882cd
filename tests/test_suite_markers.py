"""The default suite and the `slow` one are chosen where each test is written, never by a test's name elsewhere.

A conftest hook that matched names (as tests/conftest.py did until issue 16) moved a whole sweep into the default
suite, silently, when a test or a case was renamed. Slow cases are marked at the test: `@pytest.mark.slow`, or
`pytest.param(..., marks=pytest.mark.slow)` via tests/slow.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.slow import slow_except

ROOT = Path(__file__).resolve().parent.parent
# Hooks that see every collected item and could pick some out by name.
ITEM_HOOKS = {"pytest_collection_modifyitems", "pytest_itemcollected", "pytest_collection_finish", "pytest_collection",
              "pytest_pycollect_makeitem", "pytest_generate_tests"}


def _conftests() -> list[Path]:
    """The project's own conftests: the root's and those under tests/ (pyproject's testpaths); installed
    packages' conftests (a virtual environment inside the checkout, as CI's) are not ours to judge."""
    return sorted([*(p for p in [ROOT / "conftest.py"] if p.is_file()), *(ROOT / "tests").rglob("conftest.py")])


def test_no_conftest_chooses_tests_by_name():
    conftests = _conftests()
    assert ROOT / "tests" / "conftest.py" in conftests
    for path in conftests:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        hooks = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name in ITEM_HOOKS]
        assert not hooks, f"{path.relative_to(ROOT)} defines {hooks}: mark slow cases at the test instead"
        markers = [n.lineno for n in ast.walk(tree)
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_marker"]
        assert not markers, f"{path.relative_to(ROOT)} adds markers to collected items (lines {markers})"


def test_slow_except_marks_every_case_but_the_default_ones():
    params = slow_except([("a", "x"), ("b", "x"), ("c", "y")], default={("b", "x")})
    assert [p.values for p in params] == [("a", "x"), ("b", "x"), ("c", "y")]
    assert [[m.name for m in p.marks] for p in params] == [["slow"], [], ["slow"]]
    single = slow_except(["a", "b"], default={"a"})
    assert [p.values for p in single] == [("a",), ("b",)] and [len(p.marks) for p in single] == [0, 1]


def test_slow_except_refuses_a_default_case_that_is_not_among_the_cases():
    """A renamed case cannot leave its sweep with no default representative, or move it, unnoticed."""
    with pytest.raises(ValueError, match="resnet19"):
        slow_except(["resnet18", "resnet50"], default={"resnet19"})
