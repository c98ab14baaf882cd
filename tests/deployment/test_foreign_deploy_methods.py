"""Third-party deploy methods are called as their library calls them, and verification proves the result.

plugsurgeon's own blocks return their inference module from ``reparameterize()``; timm's change
themselves in place and return None (and timm then walks into their children), timm's ``fuse()``
returns the fused module, an Ultralytics model's ``fuse()`` rewrites the model in place, and
Ultralytics' ``RepConv.fuse_convs()`` is only safe inside that model-wide fuse.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.deployment.reparameterize import find_reparameterizable
from tests.deployment.helpers import (
    assert_same_function,
    assert_state_equal,
    no_norms_left,
    state_of,
    types_by_path,
)
from tests.nets import randomize_batchnorm

SHAPE = (1, 4, 12, 12)


def _summed(square: nn.Conv2d, point: nn.Conv2d) -> nn.Conv2d:
    fused = nn.Conv2d(square.in_channels, square.out_channels, 3, padding=1)
    fused.weight.data = square.weight.detach() + F.pad(point.weight.detach(), (1, 1, 1, 1))
    fused.bias.data = square.bias.detach() + point.bias.detach()
    return fused


class TwoBranches(nn.Module):
    """3x3 + 1x1, the smallest re-parameterizable block; subclasses choose the deploy method."""

    def __init__(self, channels=4):
        super().__init__()
        self.square, self.point = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 1)
        self.fused = None

    def forward(self, x):
        return self.fused(x) if self.fused is not None else self.square(x) + self.point(x)

    def _fuse_in_place(self):
        if self.fused is None:
            self.fused = _summed(self.square, self.point)
            del self.square, self.point


class SwitchToDeploy(TwoBranches):
    def switch_to_deploy(self):
        self._fuse_in_place()


class TimmStyle(TwoBranches):
    """Like timm's GhostBottleneckV3: its own reparameterize() in place, a child with its own method."""

    def __init__(self):
        super().__init__()
        self.inner = SwitchToDeploy()

    def forward(self, x):
        return self.inner(super().forward(x))

    def reparameterize(self):
        self._fuse_in_place()


class ReturnsFused(TwoBranches):
    """Like timm's LeViT/RepViT blocks: fuse() returns the module that replaces the block."""

    def fuse(self):
        return _summed(self.square, self.point)


def test_in_place_methods_are_called_and_children_get_their_own_turn():
    model = nn.Sequential(TimmStyle(), nn.ReLU(), ReturnsFused())
    result = ps.deploy(model, input_shape=SHAPE)
    report = result.report
    assert [(r.path, r.before, r.after, r.method, r.in_place) for r in report.reparameterized] == [
        ("0", "TimmStyle", "TimmStyle", "reparameterize()", True),
        ("0.inner", "SwitchToDeploy", "SwitchToDeploy", "switch_to_deploy()", True),
        ("2", "ReturnsFused", "Conv2d", "fuse()", False),
    ]
    assert report.left_alone == [] and any("in place" in note for note in report.notes)
    deployed = result.model
    assert isinstance(deployed[0].fused, nn.Conv2d) and isinstance(deployed[0].inner.fused, nn.Conv2d)
    assert not hasattr(deployed[0], "square") and type(deployed[2]) is nn.Conv2d
    assert report.verification.passed
    assert_same_function(model, deployed, torch.randn(2, *SHAPE[1:]))
    assert isinstance(model[0].square, nn.Conv2d) and model[0].fused is None  # the caller's model is untouched


def test_a_block_that_is_already_deployed_is_not_reported_again():
    deployed = ps.deploy(nn.Sequential(TimmStyle(), ReturnsFused()), input_shape=SHAPE).model
    again = ps.deploy(deployed, input_shape=SHAPE)
    assert again.report.reparameterized == [] and find_reparameterizable(deployed) == {}


class WrongInPlace(TwoBranches):
    def reparameterize(self):  # the classic bug: the 1x1 branch is forgotten
        self.fused = copy.deepcopy(self.square)
        del self.square, self.point


def test_a_wrong_third_party_conversion_fails_verification_and_the_callers_model_survives():
    model = nn.Sequential(WrongInPlace())
    before, types = state_of(model), types_by_path(model)
    with pytest.raises(ps.VerificationError, match="differs from the original"):
        ps.deploy(model, input_shape=SHAPE)
    assert_state_equal(model, before)
    assert types_by_path(model) == types and model[0].fused is None


class Raises(TwoBranches):
    def switch_to_deploy(self):
        del self.point  # half done, then it fails
        raise RuntimeError("cannot deploy in this configuration")


def test_a_third_party_method_that_raises_leaves_the_block_as_it_was_and_says_so():
    model = nn.Sequential(Raises(), nn.ReLU())
    result = ps.deploy(model, input_shape=SHAPE)
    [left] = result.report.left_alone
    assert (left.path, left.type, left.method) == ("0", "Raises", "switch_to_deploy()")
    assert "RuntimeError: cannot deploy" in left.reason and any("left alone" in n for n in result.report.notes)
    assert result.report.reparameterized == [] and isinstance(result.model[0].point, nn.Conv2d)
    assert_same_function(model, result.model, torch.randn(2, *SHAPE[1:]))


class RepConvLike(TwoBranches):
    """Like Ultralytics' RepConv: fuse_convs() merges the branches, and only the model's fuse()
    switches the forward to use the result."""

    def fuse_convs(self):
        self.conv = _summed(self.square, self.point)
        del self.square, self.point

    def forward_fuse(self, x):
        return self.conv(x)


class ModelWithFuse(nn.Module):
    """Like an Ultralytics model: fuse(verbose=True) rewrites the whole model in place and returns it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(RepConvLike(), nn.ReLU(), RepConvLike())
        self.verbose_calls = []

    def forward(self, x):
        return self.body(x)

    def fuse(self, verbose=True):
        self.verbose_calls.append(verbose)
        for module in self.modules():
            if isinstance(module, RepConvLike) and hasattr(module, "square"):
                module.fuse_convs()
                module.forward = module.forward_fuse
        return self


def test_a_model_wide_fuse_is_called_quietly_and_covers_its_blocks():
    model = ModelWithFuse()
    result = ps.deploy(model, input_shape=SHAPE)
    assert [(r.path, r.method, r.in_place) for r in result.report.reparameterized] == [("", "fuse()", True)]
    assert result.report.left_alone == [] and result.model.verbose_calls == [False]
    assert isinstance(result.model.body[0].conv, nn.Conv2d) and not hasattr(result.model.body[2], "square")
    assert_same_function(model, result.model, torch.randn(2, *SHAPE[1:]))


def test_a_method_that_is_unsafe_alone_is_left_alone_and_reported():
    model = nn.Sequential(RepConvLike(), nn.ReLU())
    result = ps.deploy(model, input_shape=SHAPE)
    assert [(x.path, x.method) for x in result.report.left_alone] == [("0", "fuse_convs()")]
    assert "fuse()" in result.report.left_alone[0].reason
    assert result.report.reparameterized == [] and hasattr(result.model[0], "square")
    assert_same_function(model, result.model, torch.randn(2, *SHAPE[1:]))


def _timm():
    return pytest.importorskip("timm")


def _timm_blocks():
    from timm.models.byobnet import MobileOneBlock, RepVggBlock
    from timm.models.ghostnet import GhostBottleneckV3
    from timm.models.repghost import RepGhostBottleneck

    return {
        "RepVggBlock": lambda: nn.Sequential(RepVggBlock(8, 8), RepVggBlock(8, 16, stride=2)),
        "MobileOneBlock": lambda: nn.Sequential(MobileOneBlock(8, 8, num_conv_branches=2), MobileOneBlock(8, 16, stride=2, group_size=8)),
        "GhostBottleneckV3": lambda: nn.Sequential(GhostBottleneckV3(8, 16, 8), GhostBottleneckV3(8, 24, 16, stride=2)),
        "RepGhostBottleneck": lambda: nn.Sequential(RepGhostBottleneck(8, 16, 8), RepGhostBottleneck(8, 24, 16, stride=2)),
    }


@pytest.mark.parametrize("block", ["RepVggBlock", "MobileOneBlock", "GhostBottleneckV3", "RepGhostBottleneck"])
def test_timm_blocks_deploy_as_timms_own_reparameterize_model_does(block):
    reparameterize_model = _timm().utils.model.reparameterize_model
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *_timm_blocks()[block]())
    model = randomize_batchnorm(net, seed=11).eval()
    result = ps.deploy(model, input_shape=(1, 3, 16, 16))
    report = result.report
    assert report.reparameterized and all(r.in_place for r in report.reparameterized) and report.left_alone == []
    assert report.verification.passed and report.verification.max_rel_diff < 1e-5
    assert no_norms_left(result.model) and find_reparameterizable(result.model) == {}
    reference = reparameterize_model(copy.deepcopy(model))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reference(x), rtol=0, atol=1e-5 * float(reference(x).abs().max()))
    assert_same_function(copy.deepcopy(model), result.model, x)


DEFAULT_TIMM_MODELS = ["repvgg_a0", "lcnetv2_small"]
SLOW_TIMM_MODELS = ["repghostnet_050", "repvgg_a1", "mobileone_s0", "mobileone_s1", "ghostnetv3_050", "ghostnetv3_100", "repghostnet_058", "fastvit_t8"]


def _deploys_like_timm(name: str) -> None:
    timm = _timm()
    reparameterize_model = timm.utils.model.reparameterize_model
    model = randomize_batchnorm(timm.create_model(name, pretrained=False, num_classes=10)).eval()
    result = ps.deploy(model, input_shape=(1, 3, 64, 64))
    report = result.report
    assert report.reparameterized and report.left_alone == [] and report.verification.passed
    assert find_reparameterizable(result.model) == {}
    reference = reparameterize_model(copy.deepcopy(model))
    # timm's own conversion gives the same blocks; deploy then folds the BatchNorms they left
    converted = {p for p, m in reference.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None}
    assert converted <= {p for p, m in result.model.named_modules() if isinstance(m, nn.Conv2d)}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", DEFAULT_TIMM_MODELS)
def test_timm_reparameterizable_models_deploy(name):
    _deploys_like_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_TIMM_MODELS)
def test_more_timm_reparameterizable_models_deploy(name):
    _deploys_like_timm(name)


@pytest.mark.slow
def test_ultralytics_detection_model_deploys_through_its_own_fuse(monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = randomize_batchnorm(tasks.DetectionModel("yolov8n.yaml", verbose=False))
    result = ps.deploy(model, input_shape=(1, 3, 64, 64))
    assert type(result.model) is tasks.DetectionModel
    assert [(r.path, r.method, r.in_place) for r in result.report.reparameterized] == [("", "fuse()", True)]
    assert result.report.verification.passed and no_norms_left(result.model)
    assert result.model.is_fused() and not model.is_fused()


def test_export_sees_pending_third_party_blocks_and_not_converted_ones():
    from plugsurgeon.export.onnx import unfused_parts

    model = nn.Sequential(TimmStyle(), nn.ReLU())
    assert any("train-time block" in u and "0" in u for u in unfused_parts(model, SHAPE))
    assert unfused_parts(ps.deploy(model, input_shape=SHAPE).model, SHAPE) == []


def test_a_deployed_timm_model_saves_and_loads_by_replaying_its_own_methods(tmp_path):
    _timm()
    model = randomize_batchnorm(ps.load_model("timm:lcnetv2_small"))
    deployed = ps.deploy(model, input_shape=(1, 3, 64, 64)).model
    ps.save(deployed, tmp_path / "d")
    loaded = ps.load(tmp_path / "d")
    assert types_by_path(loaded) == types_by_path(deployed)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))


class ConvUnit(nn.Module):
    """Ultralytics' Conv: conv, BN, activation; its model's fuse() folds the BN into whatever ``conv`` is."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class FoldsIntoAnyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvUnit(4), ConvUnit(4))

    def forward(self, x):
        return self.body(x)

    def fuse(self, verbose=True):  # as ultralytics.utils.torch_utils.fuse_conv_and_bn: the conv's weight scaled in place
        for unit in self.modules():
            if isinstance(unit, ConvUnit) and hasattr(unit, "bn"):
                bn = unit.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = unit.conv.bias if unit.conv.bias is not None else torch.zeros_like(bn.bias)
                unit.conv.weight.data = unit.conv.weight * scale.view(-1, 1, 1, 1)
                unit.conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
                delattr(unit, "bn")
                unit.forward = unit.forward_fuse
        return self


def _trained_acnet(model: nn.Module, shape) -> nn.Module:
    edited = ps.apply(model, {"name": "acnet", "steps": [{"plugin": "acnet", "at": "conv", "where": {"kernel": 3}}]},
                      input_shape=shape).model
    with torch.no_grad():  # as after training: the asymmetric branches are no longer zero
        for block in edited.modules():
            if type(block).__name__ == "ACBlock":
                for bn in (block.ver_bn, block.hor_bn):
                    bn.weight.uniform_(0.5, 1.5)
    return randomize_batchnorm(edited, seed=3).eval()


def test_our_blocks_convert_before_a_model_wide_fuse_reaches_them():
    """The model's fuse() would fold its BN into an ACBlock's square kernel alone (the branches left
    unscaled): our blocks become plain convs first, then the model's fuse folds into those."""
    edited = _trained_acnet(FoldsIntoAnyConv(), SHAPE)
    result = ps.deploy(edited, input_shape=SHAPE)
    assert [r.path for r in result.report.reparameterized] == ["body.0.conv", "body.1.conv", ""]
    assert result.report.verification.passed
    assert all(type(m.conv) is nn.Conv2d and not hasattr(m, "bn") for m in result.model.body)
    assert_same_function(edited, result.model, torch.randn(2, *SHAPE[1:]))


@pytest.mark.slow
def test_ultralytics_model_with_acnet_deploys(monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    edited = _trained_acnet(randomize_batchnorm(tasks.DetectionModel("yolov8n.yaml", verbose=False)), (1, 3, 64, 64))
    result = ps.deploy(edited, input_shape=(1, 3, 64, 64))
    assert result.report.verification.passed and no_norms_left(result.model)
    assert not any(type(m).__name__ == "ACBlock" for m in result.model.modules())
