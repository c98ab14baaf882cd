"""The error boundary, markup safety, --force and --trust-source.

``run(args)`` is what the console script runs (main() only adds sys.exit), so calling it in-process
tests the entry point's handling of usage errors and bugs without a subprocess per case; CliRunner
tests the per-command boundary that callers of ``app`` get. Models are tests.nets' tiny ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli import app as cli
from plugsurgeon.cli.app import app, run

TINY = "tests.nets:TinyResNet"
SMALL = ("--input-shape", "1,3,32,32")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli_run(capsys):
    def call(*args) -> Ran:
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return call


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A model directory written by `apply -o` from an import-path source (so loading it needs trust)."""
    out = tmp_path_factory.mktemp("saved") / "model"
    result = CliRunner().invoke(app, ["apply", TINY, "--recipe", "se", *SMALL, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


# -- exit codes ------------------------------------------------------------------------------------


def test_bare_command_prints_help_and_exits_0(cli_run):
    ran = cli_run()
    assert ran.code == 0, ran.output
    assert "Usage" in ran.out and "apply" in ran.out and "deploy" in ran.out
    assert "error" not in ran.err
    assert CliRunner().invoke(app, []).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("apply",), "Missing argument"),
        (("apply", "resnet18", "--recipe", "se", "--bogus"), "No such option: --bogus"),
        (("frobnicate",), "No such command"),
        (("apply", "resnet18", "--recipe", "se", "--weights", "."), "is a directory"),
    ],
)
def test_usage_errors_exit_1_with_one_message_and_hint(cli_run, args, message):
    ran = cli_run(*args)
    assert ran.code == 1
    assert message in ran.err and "hint: see `plugsurgeon" in ran.err
    assert no_traceback(ran.output)


def test_internal_error_exits_2_with_one_line(cli_run, monkeypatch):
    def broken(spec, *, trust_source):
        raise KeyError("boom [/] [bold]")  # a bug, with markup-looking text for good measure

    monkeypatch.setattr(cli, "load_model", broken)
    monkeypatch.delenv("PLUGSURGEON_DEBUG", raising=False)
    ran = cli_run("sites", "resnet18")
    assert ran.code == 2
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("internal error: KeyError:") and "[/]" in lines[0]
    assert "PLUGSURGEON_DEBUG=1" in lines[0] and no_traceback(ran.output)
    # CliRunner drives `app` directly, without run(): the per-command boundary gives the same code.
    result = CliRunner().invoke(app, ["sites", "resnet18"])
    assert result.exit_code == 2 and "internal error: KeyError" in result.output and no_traceback(result.output)


def test_internal_error_shows_traceback_only_when_debugging(cli_run, monkeypatch):
    def broken(spec, *, trust_source):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "load_model", broken)
    monkeypatch.setenv("PLUGSURGEON_DEBUG", "1")
    ran = cli_run("sites", "resnet18")
    assert ran.code == 2
    assert "Traceback" in ran.err and "ZeroDivisionError: oops" in ran.err


def test_error_outside_any_command_exits_2(cli_run, monkeypatch):
    # A failure in typer itself (or anything around the commands) meets the same boundary in run().
    def broken_app(**kwargs):
        raise AttributeError("module 'typer' has no attribute 'Something'")

    monkeypatch.setattr(cli, "app", broken_app)
    monkeypatch.delenv("PLUGSURGEON_DEBUG", raising=False)
    ran = cli_run("plugins")
    assert ran.code == 2 and ran.err.startswith("internal error: AttributeError") and no_traceback(ran.output)


def test_user_error_exits_1_without_traceback(cli_run):
    ran = cli_run("apply", "resnet5", "--recipe", "se")
    assert ran.code == 1
    assert "unknown model 'resnet5'" in ran.err and "hint:" in ran.err and no_traceback(ran.output)


def test_console_script_exit_codes():
    # The installed entry point, in a fresh interpreter: bare help, a usage error and a bug.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PLUGSURGEON_DEBUG", None)
    entry = "from plugsurgeon.cli.app import main; main()"
    bare = subprocess.run([sys.executable, "-c", entry], capture_output=True, text=True, env=env, cwd=ROOT)
    assert bare.returncode == 0 and "Usage" in bare.stdout and no_traceback(bare.stderr), bare.stderr
    bug = ("import plugsurgeon.cli.app as cli\n"
           "def broken(spec, *, trust_source): raise RuntimeError('bug')\n"
           "cli.load_model = broken\ncli.main()")
    crashed = subprocess.run([sys.executable, "-c", bug, "sites", "resnet18"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert crashed.returncode == 2, crashed.stderr
    assert crashed.stderr.strip().splitlines() == [crashed.stderr.strip()] and "internal error: RuntimeError: bug" in crashed.stderr


# -- markup in user text ---------------------------------------------------------------------------


def test_markup_in_a_model_spec_is_printed_literally(cli_run):
    ran = cli_run("apply", "foo[/]", "--recipe", "se")
    assert ran.code == 1 and "unknown model 'foo[/]'" in ran.err and no_traceback(ran.output)
    ran = cli_run("sites", "[bold red]x[/]")
    assert ran.code == 1 and "'[bold red]x[/]'" in ran.err and no_traceback(ran.output)


def test_markup_in_a_recipe_is_printed_literally(cli_run, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('name: "x[/]"\ndescription: "[red]not red[/] :smile:"\nsteps:\n  - plugin: se\n    at: residual.branch\n')
    out = tmp_path / "out"
    ran = cli_run("apply", TINY, "--recipe", recipe, *SMALL, "-o", out)
    assert ran.code == 0, ran.output
    assert "recipe 'x[/]'" in ran.out and "saved to" in ran.out and (out / "manifest.json").is_file()


def test_report_text_is_never_markup():
    # Site paths, notes and names come from the model and the recipe; any of them may look like markup.
    from rich.console import Console

    from plugsurgeon.cli import render
    from plugsurgeon.surgery.report import EditReport, SurgeryReport

    report = SurgeryReport(
        model="Net[/]", recipe="[bold]r", input_shape=(1, 3, 8, 8), traced=["[/]"], untraced=[("head[/]", "why [x]")],
        edits=[EditReport(1, "se", "after", "residual.branch", "blocks.[/].bn", "blocks.[/].se", 8, (4, 4), 2, 10, 20)],
        notes=["step 1 (se) skipped 'a[/]': [red]too small[/] :smile:"], renamed_keys=["k[/]"])
    console = Console(record=True, width=300, markup=False, emoji=False)
    saved = render.console
    render.console = console
    try:
        render.surgery_summary(report, dry_run=False)
    finally:
        render.console = saved
    text = console.export_text()
    for literal in ("Net[/]", "[bold]r", "blocks.[/].se", "note: step 1 (se) skipped 'a[/]': [red]too small[/] :smile:", "k[/]",
                    "1 sites skipped as unfit"):
        assert literal in text, literal


# -- -o and --force --------------------------------------------------------------------------------


def test_output_holding_a_model_is_refused_before_any_work(cli_run, tmp_path, saved):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("manifest.json", "weights.safetensors"):
        (out / name).write_bytes((saved / name).read_bytes())
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    ran = cli_run("apply", TINY, "--recipe", "se", *SMALL, "-o", out)
    assert ran.code == 1 and "already holds a saved model" in ran.err and "--force" in ran.err and no_traceback(ran.output)
    # The refusal comes before the model is built: an unknown model is not even looked at.
    ran = cli_run("apply", "no_such_model", "--recipe", "se", "-o", out)
    assert ran.code == 1 and "already holds a saved model" in ran.err
    ran = cli_run("deploy", TINY, *SMALL, "--no-verify", "-o", out)
    assert ran.code == 1 and "already holds a saved model" in ran.err
    assert snapshot(out) == before  # bytes and mtimes


def test_force_replaces_the_saved_model_and_nothing_else(cli_run, tmp_path):
    out = tmp_path / "out"
    assert cli_run("apply", TINY, "--recipe", "se", *SMALL, "-o", out).code == 0
    (out / "notes.txt").write_text("mine")
    first = json.loads((out / "manifest.json").read_text())
    ran = cli_run("apply", TINY, "--recipe", "eca", *SMALL, "-o", out, "--force")
    assert ran.code == 0, ran.output
    second = json.loads((out / "manifest.json").read_text())
    assert first != second and "eca" in json.dumps(second) and (out / "notes.txt").read_text() == "mine"


def test_output_that_is_a_file_or_an_empty_directory(cli_run, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    ran = cli_run("apply", TINY, "--recipe", "se", *SMALL, "-o", file, "--force")
    assert ran.code == 1 and "is not a directory" in ran.err and file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    ran = cli_run("apply", TINY, "--recipe", "se", *SMALL, "-o", empty)
    assert ran.code == 0 and (empty / "manifest.json").is_file()


# -- --trust-source --------------------------------------------------------------------------------


def test_trust_source_is_passed_through(cli_run, saved, tmp_path):
    for args in (("sites", saved, *SMALL), ("apply", saved, "--recipe", "eca", *SMALL, "--dry-run"),
                 ("deploy", saved, *SMALL, "--no-verify")):
        refused = cli_run(*args)
        assert refused.code == 1 and "--trust-source" in refused.err and no_traceback(refused.output), args
        trusted = cli_run(*args, "--trust-source")
        assert trusted.code == 0, (args, trusted.output)
    # export takes it too; its refusal comes before any ONNX work (the trusted export is tested in tests/deployment).
    refused = cli_run("export", saved, "--onnx", tmp_path / "m.onnx")
    assert refused.code == 1 and "--trust-source" in refused.err and not (tmp_path / "m.onnx").exists()


def test_reader_leaving_the_pipe_is_not_a_bug():
    # `plugsurgeon plugins --json | head -1`: stdout closes under the command; no "internal error".
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", "from plugsurgeon.cli.app import main; main()", "plugins", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    process.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == "", err


def test_what_a_factory_prints_stays_out_of_json_output():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    entry = "from plugsurgeon.cli.app import main; main()"
    ran = subprocess.run([sys.executable, "-c", entry, "sites", "tests.nets:chatty_tiny_resnet", "--trust-source",
                          "--input-shape", "1,3,32,32", "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    json.loads(ran.stdout)
    assert "building a TinyResNet" in ran.stderr and "from the descriptor" in ran.stderr
