"""Non-local block: a position-by-position reference, the (HW x HW') attention shape, identity at init, the recipe."""

from __future__ import annotations

import math

import pytest
import torch

import plugsurgeon as ps
from tests.nets import randomize_batchnorm

NonLocalBlock = ps.get_plugin("nonlocal").factory


def _conv1x1(conv, x):
    # x: C x H x W -> C' x H x W, written out so the reference shares no code with the module
    return torch.einsum("oc,chw->ohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def _maxpool2_ceil(x):
    c, h, w = x.shape
    out = x.new_empty(c, math.ceil(h / 2), math.ceil(w / 2))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].amax(dim=(1, 2))
    return out


def _reference(block, x, sub_sample):
    """The paper's non-local operation, one output position at a time, for one sample."""
    theta = _conv1x1(block.theta, x)
    phi, g = _conv1x1(block.phi, x), _conv1x1(block.g, x)
    if sub_sample:
        phi, g = _maxpool2_ceil(phi), _maxpool2_ceil(g)
    keys = [(a, b) for a in range(phi.shape[1]) for b in range(phi.shape[2])]
    y = torch.zeros_like(theta)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            weights = torch.stack([torch.exp(theta[:, i, j] @ phi[:, a, b]) for a, b in keys])
            weights = weights / weights.sum()
            y[:, i, j] = sum(wt * g[:, a, b] for wt, (a, b) in zip(weights, keys, strict=True))
    wy = _conv1x1(block.out, y)
    bn = block.bn
    wy = (wy - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    return x + wy * bn.weight[:, None, None] + bn.bias[:, None, None]


@pytest.mark.parametrize(("sub_sample", "size"), [(False, (4, 5)), (True, (5, 6)), (True, (4, 4))])
def test_matches_position_by_position_reference(sub_sample, size):
    block = randomize_batchnorm(NonLocalBlock(16, sub_sample=sub_sample)).double().eval()
    x = torch.randn(2, 16, *size, dtype=torch.float64) * 0.3
    with torch.no_grad():
        got = block(x)
        for n in range(2):
            torch.testing.assert_close(got[n], _reference(block, x[n], sub_sample))


def test_attention_is_over_positions_not_channels():
    # The copy-paste bug transposes one operand and builds a (C' x C') matrix; here C' = 8 and HW = 36.
    block = NonLocalBlock(16, sub_sample=False).eval()
    x = torch.randn(2, 16, 6, 6)
    f = block.attention(x)
    assert f.shape == (2, 36, 36)
    torch.testing.assert_close(f.sum(dim=-1), torch.ones(2, 36))
    pooled = NonLocalBlock(16).eval().attention(x)
    assert pooled.shape == (2, 36, 9)  # phi sub-sampled by 2x2 max pooling


def test_identity_at_init_and_zero_gamma_gets_a_gradient():
    block = NonLocalBlock(32)
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(block.eval()(x), x)
    assert torch.count_nonzero(block.bn.weight) == 0
    block.train()(x).square().sum().backward()
    assert block.bn.weight.grad.abs().sum() > 0


def test_samples_do_not_mix_and_far_positions_do():
    block = randomize_batchnorm(NonLocalBlock(16)).eval()
    x = torch.randn(2, 16, 8, 8)
    y = block(x)
    x2 = x.clone()
    x2[1] += 1.0
    x2[0, :, 7, 7] += 5.0  # one far corner of sample 0
    y2 = block(x2)
    assert not torch.allclose(y2[0, :, 0, 0], y[0, :, 0, 0])  # non-local: the opposite corner sees it
    x3 = x.clone()
    x3[1] += 1.0
    torch.testing.assert_close(block(x3)[0], y[0])


def test_recipe_on_resnet50_matches_the_paper_placement_and_count():
    model = ps.load_model("resnet50")
    result = ps.apply(model, "nonlocal", input_shape=(1, 3, 224, 224))
    (edit,) = result.report.edits
    assert edit.site == "layer3.4.relu"  # res4 has 6 blocks: after the 5th, right before the last
    c, inner = 1024, 512
    expected = 3 * (c * inner + inner) + (inner * c + c) + 2 * c  # theta, phi, g, W_z (with biases), BN
    assert edit.params_added == expected == 2_101_760
    assert result.report.params_after - result.report.params_before == expected
    x = torch.randn(1, 3, 96, 96)  # fully convolutional: a small input keeps the identity check fast
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)
