"""The zoo sweep as a test (slow): every model of the timm sample (tests/zoo/timm_sample.txt, 160 convolutional
models across ~120 families), every Ultralytics YAML and every smp architecture of tests/zoo/sweep.py gets `se`.

For each model: no raw (non-PlugsurgeonError) exception; never an edited model that fails to run or changes its
output structure; never more residual sites than same-shape adds; no refusal of a model that has residual merges
(a model without them is refused, saying so); and the residual count within the independent expectation
(tests/zoo/counting.py).

Models run in worker subprocesses (a hang is a timeout, not a stuck suite). Environment: ZOO_SWEEP_LIMIT=N runs
the first N of each list; ZOO_SWEEP_JOBS (default 2) workers; ZOO_SWEEP_SIZE (default 160) input side.
"""

from __future__ import annotations

import os

import pytest

from tests.zoo import sweep

pytestmark = pytest.mark.slow

LIMIT = int(os.environ["ZOO_SWEEP_LIMIT"]) if os.environ.get("ZOO_SWEEP_LIMIT") else None
JOBS = int(os.environ.get("ZOO_SWEEP_JOBS", "2"))
SIZE = int(os.environ.get("ZOO_SWEEP_SIZE", "160"))


def _tasks() -> list[tuple[str, str]]:
    tasks = []
    for zoo, module in (("timm", "timm"), ("ultralytics", "ultralytics"), ("smp", "segmentation_models_pytorch")):
        try:
            __import__(module)
        except ImportError:
            continue
        names = sweep.models_for(zoo)
        if zoo == "timm":
            import timm

            names = [n for n in names if n in set(timm.list_models())]
        tasks += [(zoo, n) for n in names[:LIMIT]]
    return tasks


TASKS = _tasks()


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, str], sweep.Record]:
    done = sweep.sweep(TASKS, recipe="se", size=SIZE, jobs=JOBS, timeout=600)
    return {(r.zoo, r.name): r for r in done}


@pytest.mark.parametrize(("zoo", "name"), TASKS, ids=[f"{z}:{n}" for z, n in TASKS])
def test_se_applies_and_runs_or_is_refused_rightly(zoo, name, records):
    r = records[(zoo, name)]
    detail = f"{r.status}: {r.reason} {' '.join(r.notes)}".strip()
    if r.status == "skipped":
        pytest.skip(f"the zoo cannot run {name} here: {r.reason}")
    assert r.status not in ("failed", "broken", "crashed", "timeout"), detail
    assert r.count != "above", f"{r.found} residual sites but only {r.high} same-shape adds ({r.rule})"
    assert not r.wrong_refusal, f"refused as having no residual sites, but it has {r.expected} ({r.rule}): {detail}"
    # A model with residual merges takes `se` (issue 7: refuse only where the edit really cannot be made).
    assert not (r.status == "refused" and r.low), f"refused although it has {r.expected} residual merges: {detail}"
    assert r.count == "ok", f"{r.found} residual sites, expected {r.expected} ({r.rule}); {detail}"
