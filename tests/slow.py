"""Which cases of a sweep run in the default suite: marked where the test is parametrised, never by name elsewhere.

The default suite keeps to a CPU budget (about 500 s on 2 cores): of a zoo-wide parametrisation, a representative
per code path runs by default and the rest under the `slow` marker, which CI runs as a second step
(`pytest -m slow`). Renaming a test, or a case, cannot move a sweep: the marks travel with the cases, and a default
case that is not among the cases is an error at collection.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pytest


def slow_except(cases: Iterable, default: Collection) -> list:
    """`cases` as `pytest.param`s: those in `default` unmarked, every other one marked `slow`.

    A case is one value, or a tuple of values for a parametrisation of several arguments; the ids are pytest's own
    (string values joined by "-"). Raises ValueError when `default` names a case that is not among `cases`.
    """
    cases = list(cases)
    missing = [case for case in default if case not in cases]
    if missing:
        raise ValueError(f"default cases {missing} are not among the cases {cases}")
    return [pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=() if case in default else pytest.mark.slow)
            for case in cases]
