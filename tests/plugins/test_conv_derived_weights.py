"""A conv under the hook-based torch.nn.utils.weight_norm / spectral_norm holds weight_g and weight_v
(or weight_orig) as Parameters and recomputes a plain ``weight`` tensor in a forward pre-hook. A
plugin that replaces the conv cannot carry that over: it is refused, in the plan as in apply, rather
than returning a model that fails at its first forward (it did: 'ACBlock' object has no attribute
'weight_g')."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import spectral_norm, weight_norm

import plugsurgeon as ps
from plugsurgeon.errors import SiteError
from tests.slow import slow_except

SHAPE = (1, 3, 16, 16)
NORMS = {"weight_norm": weight_norm, "spectral_norm": spectral_norm}


class Net(nn.Module):
    def __init__(self, wrap) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = wrap(nn.Conv2d(8, 8, 3, padding=1))
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(torch.relu(self.stem(x))))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch deprecates the hook-based weight_norm
@pytest.mark.parametrize(
    ("recipe", "norm", "ran"),
    slow_except(
        itertools.product(["acnet", "repvgg"], ["weight_norm", "spectral_norm"], ["after a forward", "fresh"]),
        default=[("acnet", "weight_norm", "after a forward"), ("repvgg", "spectral_norm", "fresh")],
    ),
)
def test_replacing_a_conv_under_hook_based_norm_is_refused_by_plan_and_apply(recipe, norm, ran):
    model = Net(NORMS[norm]).eval()
    x = torch.randn(SHAPE)
    if ran == "after a forward":  # weight becomes a leaf tensor: the model can be copied, and was edited
        with torch.no_grad():
            model(x)
    expected = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for call in (ps.plan, ps.apply):
        with pytest.raises(SiteError, match="'conv' is a Conv2d whose weight is not a Parameter but computed") as refused:
            call(model, recipe, input_shape=SHAPE)
        assert type(model.conv._forward_pre_hooks[next(iter(model.conv._forward_pre_hooks))]).__name__ in str(refused.value)
        assert "remove_weight_norm" in refused.value.hint
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # the caller's model, hook included, as it was


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_step_that_skips_unfit_sites_skips_the_normed_conv_and_the_model_runs():
    model = Net(weight_norm).eval()
    with torch.no_grad():
        model(torch.randn(SHAPE))
    recipe = ps.Recipe(name="acnet-skip", steps=[ps.Step(plugin="acnet", at="conv", on_unfit="skip")])
    result = ps.apply(model, recipe, input_shape=SHAPE)
    assert type(result.model.conv).__name__ == "Conv2d" and type(result.model.stem).__name__ == "ACBlock"
    result.model(torch.randn(SHAPE))
