"""Criss-cross attention: a brute-force reference with a full HW x HW masked attention, the centre
counted once, shared weights across the R = 2 passes, identity at init, the recipe."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps

CrissCrossAttention = ps.get_plugin("ccnet").factory


def _criss_cross_mask(h, w):
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return (rows[:, None] == rows[None, :]) | (cols[:, None] == cols[None, :])  # (HW, HW), diagonal once


def _reference_step(module, x):
    """Full (HW x HW) attention restricted to each position's row and column by a mask."""
    n, c, h, w = x.shape
    q = module.query(x).flatten(2)  # N, C', HW
    k = module.key(x).flatten(2)
    v = module.value(x).flatten(2)  # N, C, HW
    energy = torch.einsum("ncu,ncv->nuv", q, k)
    energy = energy.masked_fill(~_criss_cross_mask(h, w), float("-inf"))
    attention = energy.softmax(dim=-1)  # each row has exactly H + W - 1 non-zero weights
    out = torch.einsum("nuv,ncv->ncu", attention, v).reshape(n, c, h, w)
    return x + module.gamma * out


def _randomised(channels=16, **kwargs):
    module = CrissCrossAttention(channels, **kwargs).double()
    with torch.no_grad():
        module.gamma.fill_(0.7)
    return module


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (6, 3)])
def test_one_pass_matches_brute_force_masked_attention(size):
    module = _randomised(recurrence=1)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference_step(module, x))


def test_recurrence_applies_the_same_weights_twice():
    module = _randomised()
    assert module.recurrence == 2
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference_step(module, _reference_step(module, x)))
    assert sum(p.numel() for p in module.parameters()) == 2 * (16 * 2 + 2) + (16 * 16 + 16) + 1  # one set of weights


def test_path_weights_sum_to_one_with_the_centre_counted_once():
    module = _randomised(recurrence=1)
    x = torch.randn(1, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        column, row = module.attention(x)
        assert column.shape == (1, 5, 6, 5) and row.shape == (1, 5, 6, 6)
        torch.testing.assert_close(column.sum(-1) + row.sum(-1), torch.ones(1, 5, 6, dtype=torch.float64))
        # the centre's weight lives in the row part only
        assert torch.all(torch.diagonal(column, dim1=1, dim2=3) == 0)
        q, k = module.query(x)[0], module.key(x)[0]
        i, j = 2, 3
        energies = [q[:, i, j] @ k[:, i, b] for b in range(6)] + [q[:, i, j] @ k[:, a, j] for a in range(5) if a != i]
        z = torch.logsumexp(torch.stack(energies), 0)
        torch.testing.assert_close(row[0, i, j, j], torch.exp(q[:, i, j] @ k[:, i, j] - z))


def test_identity_at_init_and_gamma_learns():
    module = CrissCrossAttention(32)
    assert module.gamma.item() == 0.0
    x = torch.randn(2, 32, 7, 7)
    torch.testing.assert_close(module(x), x)
    module(x).square().sum().backward()
    assert module.gamma.grad.abs().item() > 0


def test_recipe_on_resnet50_backbone():
    model = ps.load_model("resnet50")
    result = ps.apply(model, "ccnet", input_shape=(1, 3, 224, 224))
    (edit,) = result.report.edits
    assert edit.role == "backbone" and edit.site == "layer4.2.relu"
    c, inner = 2048, 256
    assert edit.params_added == 2 * (c * inner + inner) + (c * c + c) + 1 == 5_245_441
