"""BatchNorm + activation layers (timm's BatchNormAct2d) fold into the conv before them, keeping the
activation; a module instance is counted by identity, whatever names its call sites give it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.deployment.helpers import assert_same_function, assert_state_equal, no_norms_left, state_of
from tests.nets import randomize_batchnorm

timm = pytest.importorskip("timm")
from timm.layers import BatchNormAct2d, Conv2dSame, StdConv2d  # noqa: E402

SHAPE = (1, 3, 16, 16)


def _with_act(norm: BatchNormAct2d, act: nn.Module) -> BatchNormAct2d:
    norm.act = act
    return norm


class NormActNet(nn.Module):
    """Three timm norm + act flavours behind plain convs, as timm's ConvNormAct builds them."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.bn2 = _with_act(BatchNormAct2d(8, drop_layer=nn.Dropout), nn.PReLU(8))  # an activation with a weight
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1, bias=False), BatchNormAct2d(16, apply_act=False)

    def forward(self, x):
        return self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))


def _randomized(model: nn.Module) -> nn.Module:
    randomize_batchnorm(model, seed=7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(-0.5, 0.5)
    return model


def test_batchnormact_folds_and_keeps_drop_and_act_under_its_name():
    model = _randomized(NormActNet())
    before = state_of(model)
    result = ps.deploy(model, input_shape=SHAPE)
    deployed, report = result.model, result.report

    assert [(f.layer, f.norm, f.norm_type, f.kept) for f in report.folded] == [
        ("conv1", "bn1", "BatchNormAct2d", ["act"]),
        ("conv2", "bn2", "BatchNormAct2d", ["drop", "act"]),
        ("conv3", "bn3", "BatchNormAct2d", []),
    ]
    assert report.skipped == [] and no_norms_left(deployed)
    assert isinstance(deployed.bn1, nn.Sequential) and isinstance(deployed.bn1.act, nn.SiLU)
    assert list(deployed.bn2._modules) == ["drop", "act"] and isinstance(deployed.bn3, nn.Identity)
    # the activation's weight keeps its key; the folded norm's keys are gone as for a plain BatchNorm
    keys = set(deployed.state_dict())
    assert "bn2.act.weight" in keys and not any(k.startswith("bn1.") for k in keys)
    assert torch.equal(deployed.bn2.act.weight, model.bn2.act.weight)

    assert report.verification.passed and report.verification.max_rel_diff < 1e-5
    assert_same_function(copy.deepcopy(model), deployed, torch.randn(4, *SHAPE[1:]))
    assert_state_equal(model, before)


class ActOnTop(BatchNormAct2d):
    """A subclass that changes the forward: its formula is unknown, so it must not fold."""

    def forward(self, x):
        return super().forward(x) * 2


class SharedNormAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), BatchNormAct2d(8)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


class OwnForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), ActOnTop(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class StandardisedConv(nn.Module):
    """Weight standardisation would undo a scale folded into the weight."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = StdConv2d(3, 8, 3, padding=1), BatchNormAct2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize(("make", "reason"), [
    (SharedNormAct, "BatchNorm module called 2 times"),
    (OwnForward, "ActOnTop has its own forward"),
    (StandardisedConv, "StdConv2d with its own forward"),
], ids=["shared", "own-forward", "std-conv"])
def test_norm_act_layers_that_cannot_fold_stay_with_a_reason(make, reason):
    model = _randomized(make())
    result = ps.deploy(model, input_shape=SHAPE)
    assert result.report.folded == []
    assert [s.path for s in result.report.skipped] == ["bn"] and reason in result.report.skipped[0].reason
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, *SHAPE[1:]))


def test_a_norm_after_conv2d_same_folds_because_its_padding_is_on_the_input():
    model = _randomized(nn.Sequential(Conv2dSame(3, 8, 3, stride=2), BatchNormAct2d(8, act_layer=nn.Hardswish)))
    result = ps.deploy(model, input_shape=(1, 3, 15, 15))  # odd size: TF 'SAME' pads asymmetrically
    assert [f.layer_type for f in result.report.folded] == ["Conv2dSame"] and no_norms_left(result.model)
    assert type(result.model[0]) is Conv2dSame
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, 3, 15, 15))


class AliasedConv(nn.Module):
    """One conv instance under two names: call sites may name it either way, it is one module."""

    def __init__(self, called_twice: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.alias = self.conv
        self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.called_twice = called_twice

    def forward(self, x):
        y = self.bn_a(self.conv(x))
        return y + self.bn_b(self.alias(x)) if self.called_twice else y


def test_a_conv_called_through_two_names_is_counted_once_per_instance():
    model = randomize_batchnorm(AliasedConv(called_twice=True), seed=2)
    result = ps.deploy(model, input_shape=SHAPE)
    assert result.report.folded == []
    assert {s.path: "conv module called 2 times" in s.reason for s in result.report.skipped} == {"bn_a": True, "bn_b": True}
    assert torch.equal(result.model.conv.weight, model.conv.weight)
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, *SHAPE[1:]))


def test_a_conv_registered_under_two_names_and_called_once_is_replaced_under_both():
    model = randomize_batchnorm(AliasedConv(called_twice=False), seed=3)
    result = ps.deploy(model, input_shape=SHAPE)
    assert [f.norm for f in result.report.folded] == ["bn_a"]
    deployed = result.model
    assert deployed.alias is deployed.conv and not torch.equal(deployed.conv.weight, model.conv.weight)
    assert_same_function(copy.deepcopy(model), deployed, torch.randn(2, *SHAPE[1:]))


TIMM_NORM_ACT_MODELS = ["tf_mobilenetv3_small_minimal_100", "lcnet_050"]


@pytest.mark.parametrize("name", TIMM_NORM_ACT_MODELS)
def test_timm_models_built_on_batchnormact_fold_every_norm(name):
    """Before, every BatchNormAct2d stayed ("not called in the traced forward")."""
    model = randomize_batchnorm(timm.create_model(name, pretrained=False, num_classes=10))
    norms = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    result = ps.deploy(model, input_shape=(1, 3, 64, 64))
    assert norms and len(result.report.folded) == norms and result.report.skipped == []
    assert no_norms_left(result.model)
    assert result.report.verification.passed
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, 3, 64, 64))


class ReadsNormTensors(nn.Module):
    """Uses the BatchNorm's tensors without calling the module: nothing to fold, and the reason says so."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        bn = self.bn
        return torch.nn.functional.batch_norm(self.conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_a_norm_whose_tensors_are_read_directly_is_skipped_with_that_reason():
    model = randomize_batchnorm(ReadsNormTensors(), seed=4)
    result = ps.deploy(model, input_shape=SHAPE)
    [skipped] = result.report.skipped
    assert skipped.path == "bn" and "reads its tensors directly" in skipped.reason
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, *SHAPE[1:]))


def test_frozen_batchnormact_folds_when_traced_as_one_layer(monkeypatch):
    """timm's FrozenBatchNormAct2d (timm.layers.freeze_batch_norm_2d) is one layer when the tracer
    keeps it whole; timm marks it with register_notrace_module, which the tracer may not read yet."""
    from timm.layers import FrozenBatchNormAct2d, freeze_batch_norm_2d

    from plugsurgeon.graph import trace as trace_module

    monkeypatch.setattr(trace_module, "_extra_leaf_types", trace_module._extra_leaf_types | {FrozenBatchNormAct2d})
    model = freeze_batch_norm_2d(_randomized(NormActNet()))
    assert [type(m).__name__ for m in (model.bn1, model.bn2, model.bn3)] == ["FrozenBatchNormAct2d"] * 3
    result = ps.deploy(model, input_shape=SHAPE)
    assert [(f.norm, f.norm_type, f.kept) for f in result.report.folded] == [
        ("bn1", "FrozenBatchNormAct2d", ["act"]), ("bn2", "FrozenBatchNormAct2d", ["drop", "act"]), ("bn3", "FrozenBatchNormAct2d", [])]
    assert no_norms_left(result.model)
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, *SHAPE[1:]))
