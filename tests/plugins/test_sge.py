"""SGE: per-group importance maps computed by hand, paper initialisation (weight 0, bias 1),
group clamping on small channel counts, and the 2 * groups parameters per module."""

from __future__ import annotations

import math

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.plugins.sge import SpatialGroupEnhance, group_count


def _by_hand(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    n, c, h, w = x.shape
    per = c // groups
    out = torch.empty_like(x)
    for b in range(n):
        for g in range(groups):
            feats = x[b, g * per : (g + 1) * per]  # per, H, W
            global_feature = feats.mean(dim=(1, 2))  # per
            importance = torch.stack([torch.dot(global_feature, feats[:, i, j]) for i in range(h) for j in range(w)])
            centred = importance - importance.mean()
            normalised = centred / torch.sqrt(centred.pow(2).mean() + eps)
            gate = torch.sigmoid(weight[g] * normalised + bias[g]).view(h, w)
            out[b, g * per : (g + 1) * per] = feats * gate
    return out


def test_matches_hand_computation():
    module = SpatialGroupEnhance(8, groups=4)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1))
        module.bias.copy_(torch.tensor([0.0, 1.0, -0.5, 0.3]).view(1, 4, 1, 1))
    x = torch.randn(2, 8, 3, 4)
    expected = _by_hand(x, 4, module.weight.view(4), module.bias.view(4))
    torch.testing.assert_close(module(x), expected)


def test_paper_initialisation_gates_by_sigmoid_of_one():
    module = SpatialGroupEnhance(256)
    assert module.groups == 64
    assert torch.equal(module.weight, torch.zeros(1, 64, 1, 1)) and torch.equal(module.bias, torch.ones(1, 64, 1, 1))
    x = torch.randn(2, 256, 7, 7)
    torch.testing.assert_close(module(x), x * (1 / (1 + math.exp(-1))))


def test_importance_is_normalised_over_space_per_group():
    module = SpatialGroupEnhance(64, groups=8)
    importance = module.importance(torch.randn(2, 64, 5, 5))
    assert importance.shape == (2, 8, 5, 5)
    torch.testing.assert_close(importance.mean(dim=(2, 3)), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(importance.pow(2).mean(dim=(2, 3)), torch.ones(2, 8), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("channels", "groups"), [(16, 16), (32, 32), (48, 48), (96, 48), (256, 64), (2048, 64)])
def test_groups_clamp_to_a_divisor(channels: int, groups: int):
    assert group_count(channels, 64) == groups
    assert SpatialGroupEnhance(channels).groups == groups


def test_constant_group_has_finite_gradient():
    module = SpatialGroupEnhance(16, groups=4)
    x = torch.zeros(1, 16, 4, 4, requires_grad=True)
    module(x).sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_recipe_parameter_count_on_resnet50():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("sge"), input_shape=(1, 3, 224, 224))
    total = sum(p.numel() for p in result.model.parameters())
    assert total - base == 16 * 2 * 64  # weight and bias per group, 16 bottlenecks
    # The paper: SGE-ResNet50 25.56M, the same as ResNet-50 at its rounding.
    assert round(total / 1e6, 2) == round(base / 1e6, 2) == 25.56
