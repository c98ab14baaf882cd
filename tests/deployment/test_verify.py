"""Verification catches a wrong conversion, the caller's model survives it, and the protocol is generic."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.acnet import ACBlock
from tests.deployment.helpers import (
    assert_same_function,
    assert_state_equal,
    no_norms_left,
    state_of,
    types_by_path,
)
from tests.nets import TinyResNet, randomize_batchnorm

SHAPE = (1, 3, 32, 32)


def _acnet_tiny():
    return randomize_batchnorm(ps.apply(TinyResNet(), "acnet", input_shape=SHAPE).model, seed=5)


def test_a_wrong_reparameterization_raises_and_the_callers_model_is_untouched(monkeypatch):
    model = _acnet_tiny()
    before, types, training = state_of(model), types_by_path(model), model.training
    correct = ACBlock.reparameterize

    def forgets_the_branches(self):  # the classic bug: the asymmetric branches are dropped
        conv = correct(self)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
        return conv

    monkeypatch.setattr(ACBlock, "reparameterize", forgets_the_branches)
    with pytest.raises(ps.VerificationError, match="differs from the original") as caught:
        ps.deploy(model, input_shape=SHAPE)
    assert "unchanged" in str(caught.value) and "ACBlock" in caught.value.hint
    assert_state_equal(model, before)
    assert types_by_path(model) == types and model.training == training


def test_reparameterize_must_return_a_module(monkeypatch):
    model = _acnet_tiny()
    monkeypatch.setattr(ACBlock, "reparameterize", lambda self: self.weight)
    with pytest.raises(ps.PlugsurgeonError, match="not an nn.Module"):
        ps.deploy(model, input_shape=SHAPE)


class RepToy(nn.Module):
    """Not a catalog plugin: a 3x3 and a 1x1 conv summed, with the same one-method protocol."""

    def __init__(self, channels):
        super().__init__()
        self.square, self.point = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return self.square(x) + self.point(x)

    def reparameterize(self):
        fused = nn.Conv2d(self.square.in_channels, self.square.out_channels, 3, padding=1)
        fused.weight.data = self.square.weight.detach() + F.pad(self.point.weight.detach(), (1, 1, 1, 1))
        fused.bias.data = self.square.bias.detach() + self.point.bias.detach()
        return fused


def test_any_module_with_reparameterize_is_converted_then_its_bn_folds():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), RepToy(8), nn.BatchNorm2d(8)))
    result = ps.deploy(model, input_shape=(1, 3, 16, 16))
    assert [(r.path, r.before, r.after) for r in result.report.reparameterized] == [("3", "RepToy", "Conv2d")]
    assert [(f.layer, f.norm) for f in result.report.folded] == [("0", "1"), ("3", "4")]
    assert no_norms_left(result.model) and isinstance(result.model[3], nn.Conv2d)
    assert_same_function(model, result.model, torch.randn(2, 3, 16, 16))


class VAEHead(nn.Module):
    """A VAE's reparameterization trick shares the name, not the protocol: it takes arguments."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        mu, logvar = self.conv(x).chunk(2, dim=1)
        return mu + 0 * logvar

    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def test_a_reparameterize_with_arguments_is_not_the_protocol():
    model = nn.Sequential(VAEHead())
    result = ps.deploy(model, input_shape=(1, 3, 8, 8))
    assert result.report.reparameterized == [] and isinstance(result.model[0], VAEHead)


def test_without_verification_the_report_says_so_and_still_counts():
    result = ps.deploy(_acnet_tiny(), input_shape=SHAPE, verify=False)
    report = result.report
    assert report.verification is None
    assert report.flops_before > report.flops_after > 0 and report.params_before > report.params_after
    json.dumps(report.to_dict())


def test_report_serialises_with_verification():
    data = ps.deploy(randomize_batchnorm(TinyResNet()), input_shape=SHAPE).report.to_dict()
    text = json.loads(json.dumps(data))
    assert text["verification"]["passed"] is True and text["eval_mode"] is True
    assert len(text["folded"]) == 10


def test_bad_arguments_are_user_errors():
    with pytest.raises(ps.PlugsurgeonError, match="expected a torch.nn.Module"):
        ps.deploy("resnet50")
    with pytest.raises(ps.PlugsurgeonError, match="non-negative"):
        ps.deploy(TinyResNet(), input_shape=SHAPE, atol=-1)


class DropsAnOutputWhenFused(nn.Module):
    """Like an end-to-end YOLO: eval returns the prediction and a training-only auxiliary output, and the
    model's own in-place ``fuse()`` removes the auxiliary head, so the fused model returns less."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.aux = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1)

    def fuse(self):
        del self.aux
        self.aux = None
        return self

    def forward(self, x):
        y = self.conv(x)
        return y if self.aux is None else (y, self.aux(y))


def test_a_deploy_method_that_changes_what_the_model_returns_is_named_not_reported_as_a_difference():
    model = DropsAnOutputWhenFused()
    with pytest.raises(ps.VerificationError) as caught:
        ps.deploy(model, input_shape=(1, 3, 8, 8))
    message, hint = caught.value.message, caught.value.hint
    assert "returns 1 tensors where the original returns 2" in message and "inf" not in message
    assert "DropsAnOutputWhenFused.fuse()" in hint
    assert model.aux is not None  # the caller's model still has its head
