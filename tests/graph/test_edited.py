"""An edited block stays an instance of its own class, and a framework's switch to another forward keeps the edit."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.nets import TinyResNet, randomize_batchnorm

SHAPE = (1, 3, 32, 32)


class ConvUnit(nn.Module):
    """Ultralytics' Conv: its framework's fuse() folds ``bn`` into ``conv``, deletes it and switches to forward_fuse."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()
        self.f, self.i = -1, 0  # plain attributes a framework reads

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))

    def describe(self) -> str:
        return f"unit {self.i}"


class ScaledFuse(ConvUnit):
    """A fused forward that is not the forward without its BN: no edited form can be derived from the edit."""

    def forward_fuse(self, x):
        return self.act(self.conv(x) * 2)


class Units(nn.Module):
    def __init__(self, unit: type[ConvUnit] = ConvUnit) -> None:
        super().__init__()
        self.stem = unit(3, 8, 2)
        self.down = unit(8, 16, 2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.head(self.down(self.stem(x)))

    def fuse(self):  # as an Ultralytics model's fuse()
        for unit in self.modules():
            if isinstance(unit, ConvUnit) and hasattr(unit, "bn"):
                unit.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(unit.conv, unit.bn)
                delattr(unit, "bn")
                unit.forward = unit.forward_fuse
        return self


SE_AT_STAGES = {"name": "se_stages", "steps": [{"plugin": "se", "at": "stage"}]}


def _edited(model: nn.Module) -> nn.Module:
    edited = ps.apply(randomize_batchnorm(model).eval(), SE_AT_STAGES, input_shape=SHAPE).model.eval()
    with torch.no_grad():  # SE moved off its initial state, so a lost SE shows in the output
        for name, param in edited.named_parameters():
            if ".se." in name:
                param.add_(torch.randn_like(param) * 0.2)
    return edited


def test_an_edited_block_keeps_its_class_attributes_and_methods():
    model = Units()
    edited = _edited(model)
    unit = edited.down
    assert isinstance(unit, ConvUnit) and type(unit) is not ConvUnit and type(unit).__name__ == "ConvUnit"
    assert (unit.f, unit.i, unit.describe()) == (-1, 0, "unit 0")
    assert "self.se(" in ps.edited_source(unit) and ps.edited_source(model.down) is None
    assert type(edited) is Units  # modules without a site keep their exact class


def test_the_callers_hooks_on_an_edited_block_keep_firing():
    model = TinyResNet().eval()
    seen = []
    handle = model.layer1[0].register_forward_hook(lambda module, args, output: seen.append(output.shape))
    ps.apply(model, {"name": "se", "steps": [{"plugin": "se", "at": "residual.branch"}]}, input_shape=SHAPE, inplace=True)
    model(torch.randn(SHAPE))
    assert seen == [torch.Size([1, 16, 8, 8])]
    handle.remove()  # the caller's handle still refers to the edited block's table
    model(torch.randn(SHAPE))
    assert len(seen) == 1


def test_the_frameworks_fuse_switches_to_the_edited_fused_forward():
    edited = _edited(Units())
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        expected = edited(x)
        fused = copy.deepcopy(edited).fuse()
        assert not hasattr(fused.down, "bn") and "se" in dict(fused.down.named_children())
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-4)
        reloaded = pickle.loads(pickle.dumps(edited)).fuse()  # the fused form pickles with the class
        torch.testing.assert_close(reloaded(x), expected, atol=1e-5, rtol=1e-4)


def test_a_switch_that_would_drop_the_edit_is_refused():
    edited = _edited(Units(ScaledFuse))
    with pytest.raises(ps.PlugsurgeonError, match="would replace the forward plugsurgeon edited"):
        edited.down.forward = edited.down.forward_fuse
    edited.down.forward = edited.down.forward  # wrapping the edited forward itself stays possible


def test_pickled_blocks_share_a_class_and_compute_the_same():
    model = randomize_batchnorm(TinyResNet()).eval()
    edited = ps.apply(model, {"name": "cbam", "steps": [{"plugin": "cbam", "at": "residual.branch"}]}, input_shape=SHAPE).model.eval()
    x = torch.randn(2, *SHAPE[1:])
    reloaded = pickle.loads(pickle.dumps(edited))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), edited(x))
    # Blocks with the same generated forward share one rebuilt class (layer1.1 and layer2.1 have no shortcut).
    assert type(reloaded.layer1[1]) is type(reloaded.layer2[1]) and isinstance(reloaded.layer1[1], type(model.layer1[1]))
    assert type(copy.deepcopy(reloaded).layer1[1]) is type(reloaded.layer1[1])
