"""Replace-mode plugins rebuild a conv from its weight; a conv subclass with its own forward is refused.

timm's ScaledStdConv2d standardises its weight in forward (ACNet on an NFNet was 1.15 off at init),
Conv2dSame pads from the input size (ACNet on a tf_* stem changed the output shape). Both are
nn.Conv2d subclasses, so an isinstance check let them through.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.deployment.helpers import assert_same_function, assert_state_equal, state_of
from tests.nets import randomize_batchnorm

timm_layers = pytest.importorskip("timm.layers")

SHAPE = (1, 3, 32, 32)


class HostNet(nn.Module):
    """A plain stem, then the conv under test (3x3, 8 -> 8, stride 1: every conv plugin takes it)."""

    def __init__(self, make_conv):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = make_conv()
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))


FOREIGN_CONVS = {
    "ScaledStdConv2d": lambda: timm_layers.ScaledStdConv2d(8, 8, 3, padding=1),
    "StdConv2d": lambda: timm_layers.StdConv2d(8, 8, 3, padding=1),
    "Conv2dSame": lambda: timm_layers.Conv2dSame(8, 8, 3),
}


def _conv_plugins():
    return sorted(name for name, spec in ps.catalog().items() if spec.mode == "replace" and "conv" in spec.roles)


def _recipe(plugin: str) -> ps.Recipe:
    return ps.Recipe(name=plugin, steps=[{"plugin": plugin, "at": "conv", "where": {"include": ["conv"]}}])


@pytest.mark.parametrize("conv", list(FOREIGN_CONVS))
@pytest.mark.parametrize("plugin", _conv_plugins())
def test_every_conv_replacing_plugin_refuses_a_conv_with_its_own_forward(plugin, conv):
    model = randomize_batchnorm(HostNet(FOREIGN_CONVS[conv]))
    before = state_of(model)
    with pytest.raises(ps.SiteError) as caught:
        ps.apply(model, _recipe(plugin), input_shape=SHAPE)
    message = str(caught.value)
    assert f"'conv' is a {conv} (timm.layers." in message and "forward is not nn.Conv2d's" in message, message
    assert "exclude" in caught.value.hint
    assert_state_equal(model, before)


@pytest.mark.parametrize("plugin", ["acnet", "repvgg"])
def test_a_conv_subclass_that_keeps_the_conv_forward_is_accepted_and_stays_identity(plugin):
    class NamedConv(nn.Conv2d):
        """Only a new name: the forward is nn.Conv2d's."""

    model = randomize_batchnorm(HostNet(lambda: NamedConv(8, 8, 3, padding=1)))
    edited = ps.apply(model, _recipe(plugin), input_shape=SHAPE).model
    assert type(edited.conv).__name__ != "NamedConv"
    assert_same_function(copy.deepcopy(model), edited.eval(), torch.randn(2, *SHAPE[1:]))


def test_blurpool_refuses_a_strided_conv2d_same():
    class Strided(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.down = nn.Conv2d(3, 8, 3, padding=1), timm_layers.Conv2dSame(8, 16, 3, stride=2)

        def forward(self, x):
            return self.down(torch.relu(self.stem(x)))

    recipe = ps.Recipe(name="blur", steps=[{"plugin": "blur", "at": "downsample.unit"}])
    with pytest.raises(ps.SiteError, match="Conv2dSame"):
        ps.apply(Strided(), recipe, input_shape=SHAPE)


def test_acnet_on_an_nfnet_is_refused_naming_the_weight_standardised_conv():
    timm = pytest.importorskip("timm")
    model = timm.create_model("nf_regnet_b0", pretrained=False, num_classes=10)
    with pytest.raises(ps.PlugsurgeonError) as caught:
        ps.apply(model, "acnet", input_shape=(1, 3, 64, 64))
    assert isinstance(caught.value, ps.SiteError)
    assert "ScaledStdConv2d" in str(caught.value) and "Weight Standardization" in str(caught.value)


class MixedConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.same = timm_layers.Conv2dSame(8, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.same(torch.relu(self.plain(x))))


def test_with_on_unfit_skip_the_unfit_conv_is_reported_and_the_rest_is_replaced():
    model = randomize_batchnorm(MixedConvs())
    recipe = ps.Recipe(name="acnet-skip", steps=[{"plugin": "acnet", "at": "conv", "where": {"kernel": 3}, "on_unfit": "skip"}])
    result = ps.apply(model, recipe, input_shape=SHAPE)
    assert type(result.model.plain).__name__ == "ACBlock" and type(result.model.same) is timm_layers.Conv2dSame
    assert any("skipped 'same'" in n and "Conv2dSame" in n for n in result.report.notes)
    assert_same_function(copy.deepcopy(model), result.model.eval(), torch.randn(2, *SHAPE[1:]))


@pytest.mark.slow
def test_with_on_unfit_skip_acnet_takes_the_plain_convs_of_a_tf_model_and_deploys_exactly():
    """tf_* models pad their strided convs dynamically (Conv2dSame) and their others statically: the
    step skips the former, reports them, and the rest stays identity at init and deploys exactly."""
    timm = pytest.importorskip("timm")
    model = randomize_batchnorm(timm.create_model("tf_mobilenetv3_small_minimal_100", pretrained=False, num_classes=10))
    recipe = ps.Recipe(name="acnet-skip", steps=[{"plugin": "acnet", "at": "conv", "where": {"kernel": 3}, "on_unfit": "skip"}])
    result = ps.apply(model, recipe, input_shape=(1, 3, 64, 64))
    skipped = [n for n in result.report.notes if "skipped" in n]
    same = [p for p, m in model.named_modules() if isinstance(m, timm_layers.Conv2dSame) and m.kernel_size == (3, 3)]
    assert same and len(skipped) == len(same) and all("Conv2dSame" in n for n in skipped)
    edited = randomize_batchnorm(result.model, seed=3)
    assert all(isinstance(edited.get_submodule(p), timm_layers.Conv2dSame) for p in same)
    deployed = ps.deploy(edited, input_shape=(1, 3, 64, 64))
    assert deployed.report.reparameterized and deployed.report.verification.passed
    assert_same_function(copy.deepcopy(edited), deployed.model, torch.randn(2, 3, 64, 64))
