"""ONNX export: a deployed model matches in onnxruntime; an undeployed one is refused."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import plugsurgeon as ps
from tests.nets import SharedConvNet, TinyResNet, randomize_batchnorm

ort = pytest.importorskip("onnxruntime")
SHAPE = (1, 3, 32, 32)


def test_deployed_model_matches_in_onnxruntime(tmp_path):
    deployed = ps.deploy(randomize_batchnorm(TinyResNet()), input_shape=SHAPE).model
    path = tmp_path / "tiny.onnx"
    report = ps.export_onnx(deployed, path, input_shape=SHAPE)
    assert report.passed and report.max_rel_diff < 1e-5 and report.unfused == []
    assert path.is_file() and report.size_bytes > 0 and report.opset
    # an independent run on another input
    x = torch.randn(SHAPE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = deployed(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_undeployed_acnet_model_is_refused(tmp_path):
    model = ps.apply(TinyResNet(), "acnet", input_shape=SHAPE).model
    with pytest.raises(ps.PlugsurgeonError) as caught:
        ps.export_onnx(model, tmp_path / "x.onnx", input_shape=SHAPE)
    assert "reparameterize()" in caught.value.message and "ps.deploy(model)" in caught.value.hint
    assert "allow_unfused=True" in caught.value.hint and "plugsurgeon deploy" in caught.value.cli_hint
    assert not (tmp_path / "x.onnx").exists()
    report = ps.export_onnx(model, tmp_path / "x.onnx", input_shape=SHAPE, allow_unfused=True)
    assert report.passed and any("reparameterize()" in u for u in report.unfused)


def test_undeployed_plain_model_is_refused_but_an_unfoldable_bn_is_not(tmp_path):
    with pytest.raises(ps.PlugsurgeonError, match="BatchNorm layer"):
        ps.export_onnx(TinyResNet(), tmp_path / "plain.onnx", input_shape=SHAPE)
    deployed = ps.deploy(randomize_batchnorm(SharedConvNet()), input_shape=(1, 3, 16, 16)).model
    assert ps.export_onnx(deployed, tmp_path / "shared.onnx", input_shape=(1, 3, 16, 16)).passed


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ps.PlugsurgeonError, match="onnxruntime") as caught:
        ps.export_onnx(TinyResNet(), tmp_path / "x.onnx", input_shape=SHAPE)
    assert caught.value.hint == "pip install 'plugsurgeon[onnx]'"


def test_deploy_and_export_name_their_steps(tmp_path):
    from plugsurgeon import progress

    seen: list[str] = []
    with progress.reporting(seen.append):
        deployed = ps.deploy(randomize_batchnorm(TinyResNet()), input_shape=SHAPE).model
        ps.export_onnx(deployed, tmp_path / "m.onnx", input_shape=SHAPE)
    # what the CLI's spinner shows, in order: each slow step says what it is doing
    expected = ["deploying TinyResNet", "reparameterizing", "tracing", "folding 10 BatchNorm", "verifying",
                "checking that TinyResNet is deployed", "running TinyResNet in PyTorch", "exporting TinyResNet to ONNX",
                "checking the exported graph in onnxruntime"]
    positions = [next((i for i, step in enumerate(seen) if want in step), -1) for want in expected]
    assert -1 not in positions and positions == sorted(positions), seen
