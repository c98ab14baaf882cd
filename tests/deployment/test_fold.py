"""Conv-BN folding: torchvision models, every conv flavour, and every reason not to fold."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import plugsurgeon as ps
from tests.deployment.helpers import (
    assert_same_function,
    assert_state_equal,
    no_norms_left,
    state_of,
    types_by_path,
)
from tests.nets import SharedConvNet, randomize_batchnorm


def _count_norms(model):
    return sum(isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)) for m in model.modules())


@pytest.mark.parametrize("name", [pytest.param("mobilenet_v3_large", marks=pytest.mark.slow), "efficientnet_b0"])
def test_torchvision_models_fold_every_bn_and_match_the_unfused_eval_model(name):
    """resnet50 is checked the same way in test_acnet_deploy.py (it is the plain reference there)."""
    model = randomize_batchnorm(ps.load_model(name))
    norms = _count_norms(model)
    result = ps.deploy(model, input_shape=(1, 3, 64, 64))
    assert no_norms_left(result.model) and result.report.skipped == []
    assert len(result.report.folded) == norms
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, 3, 64, 64))


@pytest.mark.slow  # a full-size Faster R-CNN; tests/deployment/test_export_detectors.py deploys a small one by default
def test_detector_edited_in_place_deploys_part_by_part_and_keeps_its_class():
    """ACNet in the backbone and FPN of an untraceable detector: blocks reparameterized, every backbone
    BN folded, each traced part matching the eval-mode original, and the detector still a FasterRCNN."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=128)
    recipe = ps.parse_recipe("name: acnet-backbone\nsteps:\n  - {plugin: acnet, at: conv, where: {kernel: 3, include: ['backbone.*']}}\n")
    edited = randomize_batchnorm(ps.apply(model, recipe, input_shape=(1, 3, 128, 128)).model)
    result = ps.deploy(edited, input_shape=(1, 3, 128, 128))
    deployed, report = result.model, result.report
    assert type(deployed) is FasterRCNN
    assert "backbone" in report.traced and report.verification.scope == "traced parts"
    assert report.verification.passed and {p.part for p in report.verification.parts} == set(report.traced)
    assert any("NMS" in note for note in report.notes)
    assert len(report.reparameterized) == 20 and any(r.path.startswith("backbone.fpn.") for r in report.reparameterized)
    assert no_norms_left(deployed.backbone) and len(report.folded) == _count_norms(model.backbone) and report.skipped == []

    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, actual = copy.deepcopy(edited).eval().backbone(x), deployed.backbone(x)
    for level in expected:
        scale = float(expected[level].abs().max())
        torch.testing.assert_close(actual[level], expected[level], rtol=0, atol=1e-5 * scale)
    with torch.no_grad():
        detections = deployed([torch.rand(3, 100, 120)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}


class FrozenNet(nn.Module):
    """What torchvision detection backbones use with pretrained weights: FrozenBatchNorm2d."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), FrozenBatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), FrozenBatchNorm2d(8)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def test_frozen_batchnorm_folds():
    model = FrozenNet()
    generator = torch.Generator().manual_seed(0)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.copy_(torch.randn(8, generator=generator))
        bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)
        bn.weight.copy_(torch.rand(8, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(8, generator=generator))
    result = ps.deploy(model, input_shape=(1, 3, 16, 16))
    assert [f.norm_type for f in result.report.folded] == ["FrozenBatchNorm2d"] * 2
    assert no_norms_left(result.model)
    assert_same_function(model, result.model, torch.randn(2, 3, 16, 16))


LAYERS = {
    "k5-stride2-bias": (lambda: nn.Conv2d(8, 16, 5, stride=2, padding=2, bias=True), nn.BatchNorm2d(16), (2, 8, 16, 16)),
    "dilated": (lambda: nn.Conv2d(8, 16, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(16), (2, 8, 16, 16)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), (2, 8, 15, 15)),
    "grouped-reflect": (lambda: nn.Conv2d(8, 16, 3, padding=1, groups=4, padding_mode="reflect"), nn.BatchNorm2d(16), (2, 8, 16, 16)),
    "circular-asymmetric": (lambda: nn.Conv2d(8, 16, (1, 3), padding=(0, 1), padding_mode="circular"), nn.BatchNorm2d(16), (2, 8, 9, 16)),
    "padding-same": (lambda: nn.Conv2d(8, 16, 3, padding="same", bias=False), nn.BatchNorm2d(16), (2, 8, 16, 16)),
    "conv1d": (lambda: nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), (2, 8, 32)),
    "conv3d": (lambda: nn.Conv3d(8, 16, 3, padding=1, bias=False), nn.BatchNorm3d(16), (2, 8, 4, 8, 8)),
    "transposed": (lambda: nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1), nn.BatchNorm2d(16), (2, 8, 8, 8)),
    "linear-bn1d": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 16)), nn.BatchNorm1d(16), (4, 2, 4)),
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_every_conv_flavour_folds_exactly(case):
    make_layer, norm, shape = LAYERS[case]
    model = randomize_batchnorm(nn.Sequential(make_layer(), norm, nn.ReLU()), seed=3)
    result = ps.deploy(model, input_shape=shape)
    assert len(result.report.folded) == 1 and no_norms_left(result.model)
    assert isinstance(result.model[1], nn.Identity) and types_by_path(result.model[0]) == types_by_path(model[0])
    assert_same_function(model, result.model, torch.randn(shape))


class TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class SharedNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


class NormFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(self.bn(x))


class LinearOn3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(8, 8), nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.fc(x))


class BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm subclass that does more than normalise (like timm's BatchNormAct2d)."""

    def forward(self, x):
        return F.relu(super().forward(x))


class ConvNormAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class BatchStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False)

    def forward(self, x):
        return self.bn(self.conv(x))


SKIPS = {
    "shared-conv": (SharedConvNet, (2, 3, 16, 16), {"bn_a": "conv module called 2 times", "bn_b": "conv module called 2 times"}),
    "two-users": (TwoUsers, (2, 3, 16, 16), {"bn": "conv output has another user"}),
    "shared-norm": (SharedNorm, (2, 3, 16, 16), {"bn": "BatchNorm module called 2 times"}),
    "norm-first": (NormFirst, (2, 3, 16, 16), {"bn": "its input is the input of"}),
    "linear-3d": (LinearOn3d, (2, 8, 8), {"bn": "the linear output is 3-D"}),
    "own-forward": (ConvNormAct, (2, 3, 16, 16), {"bn": "BatchNormAct has its own forward"}),
    "batch-stats": (BatchStats, (2, 3, 16, 16), {"bn": "track_running_stats=False"}),
}


@pytest.mark.parametrize("case", list(SKIPS))
def test_unsafe_folds_are_skipped_with_a_reason_and_the_function_stays(case):
    make, shape, reasons = SKIPS[case]
    model = make()
    if case != "batch-stats":  # no running statistics to randomise there
        randomize_batchnorm(model, seed=4)
    before = state_of(model)
    result = ps.deploy(model, input_shape=shape)
    assert result.report.folded == []
    found = {s.path: s.reason for s in result.report.skipped}
    assert found.keys() == reasons.keys()
    for path, reason in reasons.items():
        assert reason in found[path], found[path]
    assert_same_function(model, result.model, torch.randn(shape))
    assert_state_equal(model, before)


def test_shared_conv_keeps_its_weights_and_both_norms():
    model = randomize_batchnorm(SharedConvNet())
    deployed = ps.deploy(model, input_shape=(1, 3, 16, 16)).model
    assert isinstance(deployed.bn_a, nn.BatchNorm2d) and isinstance(deployed.bn_b, nn.BatchNorm2d)
    assert torch.equal(deployed.conv.weight, model.conv.weight)
