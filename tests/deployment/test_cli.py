"""`plugsurgeon deploy` and `plugsurgeon export` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_deploy_then_export(tmp_path):
    pytest.importorskip("onnxruntime")
    trained, deployed = tmp_path / "acnet", tmp_path / "deployed"
    result = invoke("apply", "tests.nets:TinyResNet", "-r", "acnet", "--input-shape", "1,3,32,32", "-o", trained)
    assert result.exit_code == 0, result.output

    # the saved directories name tests.nets:TinyResNet, code that loading runs only when trusted
    refused = invoke("export", trained, "--onnx", tmp_path / "early.onnx", "--input-shape", "1,3,32,32", "--trust-source")
    assert refused.exit_code == 1 and "plugsurgeon deploy" in refused.output and "Traceback" not in refused.output

    result = invoke("deploy", trained, "-o", deployed, "--input-shape", "1,3,32,32", "--trust-source")
    assert result.exit_code == 0, result.output
    for text in ("reparameterized", "ACBlock -> Conv2d", "folded", "params", "FLOPs", "verified", "eval mode"):
        assert text in result.stdout, text

    as_json = invoke("deploy", trained, "--input-shape", "1,3,32,32", "--json", "--trust-source")
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)["report"]
    assert report["verification"]["passed"] and len(report["reparameterized"]) == 9

    exported = invoke("export", deployed, "--onnx", tmp_path / "m.onnx", "--json", "--trust-source")  # shape from the manifest
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.stdout)
    assert data["passed"] and data["input_shape"] == [1, 3, 32, 32] and (tmp_path / "m.onnx").is_file()


def test_deploy_user_errors_have_no_traceback(tmp_path):
    result = invoke("deploy", "resnet18", "--input-shape", "1,3,32", "--no-verify")
    assert result.exit_code == 1 and "--input-shape" in result.output and "Traceback" not in result.output


def _trained_acnet(tmp_path):
    trained = tmp_path / "acnet"
    result = invoke("apply", "tests.nets:TinyResNet", "-r", "acnet", "--input-shape", "1,3,32,32", "-o", trained)
    assert result.exit_code == 0, result.output
    return trained


def _words_whole(text: str, words: list[str]) -> list[str]:
    """The words of ``words`` that do not appear whole on one line of ``text`` (a word wrapped mid-way would not)."""
    tokens = {token for line in text.splitlines() for token in line.replace("(", " ").replace(")", " ").split()}
    return [w for w in words if w not in tokens]


@pytest.mark.parametrize("columns", [80, 200])
def test_deploy_prints_a_compact_summary_and_every_batchnorm_only_with_verbose(tmp_path, columns):
    import plugsurgeon as ps

    trained = _trained_acnet(tmp_path)
    report = ps.deploy(ps.load(trained, trust_source=True), input_shape=(1, 3, 32, 32)).report
    norms, blocks = [f.norm for f in report.folded], [r.path for r in report.reparameterized]
    assert len(norms) == 10 and len(blocks) == 9  # what the summary must account for

    env = {"COLUMNS": str(columns)}  # a wide terminal, or a pipe (rich then falls back to 80)
    compact = runner.invoke(app, ["deploy", str(trained), "--input-shape", "1,3,32,32", "--trust-source"], env=env)
    assert compact.exit_code == 0, compact.output
    lines = compact.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and len(lines) <= 12, compact.stdout
    assert "reparameterized: 9 ACBlock -> Conv2d" in lines and "folded: 10 BatchNorm2d into Conv2d" in lines
    assert _words_whole(compact.stdout, norms) == norms  # no per-BatchNorm list
    assert "--verbose" in compact.stdout

    verbose = runner.invoke(app, ["deploy", str(trained), "--input-shape", "1,3,32,32", "--trust-source", "--verbose"], env=env)
    assert verbose.exit_code == 0, verbose.output
    assert max(len(line) for line in verbose.stdout.splitlines()) <= 80, verbose.stdout
    assert _words_whole(verbose.stdout, norms + blocks) == []  # each path whole, never split across lines
    assert verbose.stdout.startswith(compact.stdout.split("(--verbose")[0])  # the same summary first


def test_deploy_summary_wraps_long_lines_at_spaces(monkeypatch):
    from rich.console import Console

    from plugsurgeon.cli import deploy_commands, render
    from plugsurgeon.deployment.report import DeployReport, Folded, Skipped

    long_path = "backbone.body.layer4.2.very_long_module_name_that_a_user_might_have.bn3"
    report = DeployReport(model="Net", input_shape=(1, 3, 8, 8), traced=[""],
                          folded=[Folded(f"{long_path[:-4]}.conv3", long_path, "Conv2d", "BatchNorm2d")],
                          skipped=[Skipped(f"{long_path}x", "conv output has another user " * 3)],
                          notes=["a note that goes on " * 8])
    console = Console(width=80, record=True, markup=False, emoji=False)
    monkeypatch.setattr(render, "console", console)  # the printers look it up there when they run
    deploy_commands.deploy_summary(report, verbose=True)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert _words_whole(text, [long_path, f"{long_path}x", f"{long_path[:-4]}.conv3"]) == []
    assert " ".join(text.split()).count("a note that goes on") == 8  # nothing dropped by the wrapping
