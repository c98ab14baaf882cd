"""Sweeps as processes: Ctrl-C and SIGKILL then resume, and several workers sharing one study (journal file, PostgreSQL).

Each process imports torch (seconds of CPU): these are `slow`. The objective (tests/sweep/tiny.py:logged_score)
logs "start S" and "done S" for the stages S of every candidate it evaluates, so a repeated trial shows.
"""

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sweep.tiny import WEIGHTS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CANDIDATES = 2 ** len(WEIGHTS) - 1


def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("sweep:\n  name: workers\n  steps:\n    - plugin: se\n      at: residual.branch\n"
                    "      stages: {subsets_of: [2, 3, 4, 5]}\n")
    return path


def launch(tmp_path, log, sleep, *extra):
    command = [sys.executable, "-c", "from plugsurgeon.cli.app import main; main()", "sweep", "tests.sweep.tiny:FourStages",
               "--space", str(space(tmp_path)), "--objective", "tests.sweep.tiny:logged_score", "--input-shape", "1,3,32,32",
               "--json", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWEEP_LOG": str(log), "SWEEP_SLEEP": str(sleep)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(log):
    lines = log.read_text().split("\n") if log.exists() else []
    return collections.Counter(line for line in lines if line)


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def in_flight_after(log, finished):
    """A trial has started after `finished` ones were done, and is not done yet."""
    def check():
        seen = events(log)
        done = sum(n for e, n in seen.items() if e.startswith("done"))
        started = sum(n for e, n in seen.items() if e.startswith("start"))
        return done >= finished and started == done + 1
    return check


def dones(log):
    return {e[5:]: n for e, n in events(log).items() if e.startswith("done")}


def test_ctrl_c_stops_after_the_current_trial_and_the_study_resumes(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    worker = launch(tmp_path, log, 0.8, "-o", str(out))
    wait_for(in_flight_after(log, 2))
    worker.send_signal(signal.SIGINT)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 130, stderr
    seen = events(log)
    assert sum(n for e, n in seen.items() if e.startswith("start")) == sum(n for e, n in seen.items() if e.startswith("done"))
    assert "stopping after this trial" in stderr or "stopped by Ctrl-C" in stderr
    finished = len(dones(log))
    resumed = launch(tmp_path, log, 0, "-o", str(out))
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert len(dones(log)) == CANDIDATES and set(dones(log).values()) == {1}  # nothing evaluated twice
    assert finished < CANDIDATES


def test_a_killed_sweep_resumes_and_runs_only_the_interrupted_trial_again(tmp_path):
    log, out = tmp_path / "log", tmp_path / "out"
    worker = launch(tmp_path, log, 1.0, "-o", str(out))
    wait_for(in_flight_after(log, 2))
    worker.kill()
    worker.communicate(timeout=60)
    killed = {e[6:] for e, n in events(log).items() if e.startswith("start")} - set(dones(log))
    assert len(killed) == 1
    resumed = launch(tmp_path, log, 0, "-o", str(out))
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert len(dones(log)) == CANDIDATES and set(dones(log).values()) == {1}
    assert events(log)[f"start {killed.pop()}"] == 2  # started twice, done once


def run_two_workers(tmp_path, log, *storage):
    workers = [launch(tmp_path, log, 0.5, *storage) for _ in range(2)]
    outputs = [w.communicate(timeout=400) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    return outputs


def test_two_workers_share_one_journal_file(tmp_path):
    log = tmp_path / "log"
    run_two_workers(tmp_path, log, "-o", str(tmp_path / "out"))
    assert len(dones(log)) == CANDIDATES and set(dones(log).values()) == {1}
    assert_two_workers(tmp_path / "out" / "study.journal")


def assert_two_workers(storage):
    import optuna

    if "://" in str(storage):  # SQLAlchemy would take a bare postgresql:// for psycopg 3; the extra installs psycopg2
        study = optuna.load_study(study_name="workers", storage=str(storage).replace("postgresql://", "postgresql+psycopg2://"))
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        study = optuna.load_study(study_name="workers", storage=JournalStorage(JournalFileBackend(str(storage))))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both took part
    assert len({t.number for t in complete}) == len(complete)


def test_two_workers_share_one_postgresql_study(tmp_path):
    pytest.importorskip("psycopg2")
    from tests.sweep import postgres

    if not os.environ.get("PLUGSURGEON_TEST_POSTGRES") and postgres.binary("initdb") is None:
        pytest.skip("PostgreSQL is not installed (.ci/run starts one)")
    with postgres.server() as url:
        log = tmp_path / "log"
        run_two_workers(tmp_path, log, "--storage", url, "-o", str(tmp_path / "out"))
        assert len(dones(log)) == CANDIDATES and set(dones(log).values()) == {1}
        assert_two_workers(url)
