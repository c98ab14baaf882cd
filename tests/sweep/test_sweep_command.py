"""`plugsurgeon sweep`: the dry run's listing, a sweep with the user's function, and one message for a bad space."""

import json

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli.app import app
from tests.sweep.tiny import one_thread  # noqa: F401 - the fixture, used below

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "tests.sweep.tiny:FourStages"
SHAPE = "1,3,32,32"


def write_space(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_dry_run_lists_distinct_placements_priced(tmp_path):
    space = write_space(tmp_path, "sweep:\n  steps:\n    - plugin: se\n      at: residual.branch\n"
                                  "      stages: {subsets_of: [4, 5]}\n      density: [every, last]\n")
    result = invoke("sweep", MODEL, "--space", space, "--dry-run", "--input-shape", SHAPE, "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    # One block per stage: `last` of {4} is every of {4}; `last` of {5} and of {4, 5} are every of {5}.
    assert listed["combinations"] == 6 and len(listed["candidates"]) == 3
    assert sorted(c["same"] for c in listed["candidates"]) == [1, 2, 3]
    assert all(c["macs_added"] > 0 and c["params_added"] > 0 for c in listed["candidates"])
    table = invoke("sweep", MODEL, "--space", space, "--dry-run", "--input-shape", SHAPE)
    assert table.exit_code == 0 and "3 distinct placements" in " ".join(table.stdout.split()) and "nothing was trained" in table.stdout


def test_sweep_with_a_trusted_objective_writes_results(tmp_path):
    space = write_space(tmp_path, "sweep:\n  name: cli\n  steps:\n    - plugin: se\n      at: residual.branch\n"
                                  "      stages: {subsets_of: [2, 3, 4, 5]}\n")
    out = tmp_path / "out"
    result = invoke("sweep", MODEL, "--space", space, "--objective", "tests.sweep.tiny:score", "--cost", "params",
                    "--input-shape", SHAPE, "-o", str(out), "--trials", "5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trials"] == 5 and [o["name"] for o in data["objectives"]] == ["score", "params"]
    assert (out / "study.journal").is_file() and (out / "best.yaml").is_file()
    assert "trial 4 [5/5]" in result.stderr  # per-trial progress goes to stderr


def test_a_bad_space_file_is_one_message_and_exit_1(tmp_path):
    space = write_space(tmp_path, "sweep:\n  steps:\n    - plugin: [se, cbma]\n      at: residual.branch\n")
    result = invoke("sweep", MODEL, "--space", space, "--dry-run")
    assert result.exit_code == 1
    assert "cbma" in result.stderr and "Traceback" not in result.output
    result = invoke("sweep", MODEL, "--space", write_space(tmp_path, "sweep:\n  steps:\n    - {plugin: se, at: residual.branch, "
                                                             "stages: [6]}\n"), "--dry-run", "--input-shape", SHAPE)
    assert result.exit_code == 1 and "stage 6" in result.stderr
    result = invoke("sweep", MODEL, "--space", space.replace("cbma", "cbam"), "--input-shape", SHAPE)
    assert result.exit_code == 1
