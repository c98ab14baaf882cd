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
