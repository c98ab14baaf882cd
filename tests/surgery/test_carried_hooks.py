"""The caller's hooks on a replaced module are carried onto its replacement (graph.edit.carry_hooks); the check
before commit runs with hooks suspended, so a carried hook that fails on the replacement used to reach the caller
as a returned model that does not run. The check now calls the carried hooks on the replacement: such a call is
refused before anything changes, and a harmless hook is carried and still fires."""

from __future__ import annotations

import pytest
import torch
import torchvision

import plugsurgeon as ps

SHAPE = (1, 3, 64, 64)
RECIPE = {"name": "t", "steps": [{"plugin": "acnet", "at": "conv3x3", "where": {"include": ["layer1.0.conv1"]}}]}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _recomputes_the_conv(module, inputs, output):
    # A calibration hook written for nn.Conv2d: it runs the conv's own kernel call again. ACBlock has none.
    assert module._conv_forward(inputs[0], module.weight, module.bias).shape == output.shape


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_carried_hook_that_fails_on_the_replacement_is_refused_and_nothing_changes(dry_run):
    model = torchvision.models.resnet18(weights=None).eval()
    conv = model.layer1[0].conv1
    handle = conv.register_forward_hook(_recomputes_the_conv)
    model(torch.randn(SHAPE))  # the hook works on the model as it is
    before = _state(model)
    with pytest.raises(ps.PlugsurgeonError, match="hook") as refused:
        ps.apply(model, RECIPE, input_shape=SHAPE, inplace=True, dry_run=dry_run)
    assert "layer1.0.conv1" in refused.value.message and "_conv_forward" in refused.value.message
    assert "handle.remove()" in refused.value.hint
    state, types = before
    assert [type(m) for m in model.modules()] == types and model.layer1[0].conv1 is conv
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert list(conv._forward_hooks.values()) == [_recomputes_the_conv] and not model.training
    model(torch.randn(SHAPE))  # the caller's model still runs, hook included
    handle.remove()


def test_a_harmless_hook_is_carried_and_fires_after_apply():
    model = torchvision.models.resnet18(weights=None)
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, tuple(o.shape))))
    result = ps.apply(model, RECIPE, input_shape=SHAPE)
    assert type(result.model.layer1[0].conv1).__name__ == "ACBlock"
    # The check called it once on the replacement (eval mode, zeros at the traced shape).
    assert seen == [("ACBlock", (1, 64, 16, 16))]
    seen.clear()
    result.model.eval()(torch.randn(2, 3, 32, 32))
    assert seen == [("ACBlock", (2, 64, 8, 8))]
