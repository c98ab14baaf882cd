"""SEB: the lower-level (lateral) feature is multiplied by 1 + the bilinearly upsampled 3x3 conv of
the higher level; hand-computed bilinear values, exact identity at init, and the wiring on TinyFPN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import plugsurgeon as ps
from plugsurgeon.plugins.seb import SemanticEmbeddingBranch
from tests.nets import TinyFPN, randomize_batchnorm


def _centre_tap(module: SemanticEmbeddingBranch, value: float = 1.0) -> None:
    """conv(high) = value * high, channel by channel (output channels beyond the input's get 0)."""
    with torch.no_grad():
        module.conv.weight.zero_()
        for c in range(min(module.conv.out_channels, module.conv.in_channels)):
            module.conv.weight[c, c, 1, 1] = value


def test_identity_at_init_is_exact():
    module = SemanticEmbeddingBranch(16, 32)
    x, high = torch.randn(2, 16, 13, 13), torch.randn(2, 32, 7, 7)
    assert torch.equal(module(x, high), x)


def test_multiplier_is_the_upsampled_high_level_feature_hand_computed():
    module = SemanticEmbeddingBranch(1, 1)
    _centre_tap(module)
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    high = torch.tensor([[[[a, b], [c, d]]]])
    # Bilinear 2 -> 4, align_corners=False: source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    row = lambda p, q: [p, 0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q, q]  # noqa: E731
    top, bottom = row(a, b), row(c, d)
    up = torch.tensor([row(top[j], bottom[j]) for j in range(4)]).T[None, None]
    x = torch.arange(16.0).reshape(1, 1, 4, 4) + 1
    torch.testing.assert_close(module(x, high), x * (1 + up))
    # It is the high-level map that is upsampled and multiplied, not x with itself.
    torch.testing.assert_close(module.embedding(high, (4, 4)), 1 + up)


def test_nearest_mode_and_odd_sizes():
    module = SemanticEmbeddingBranch(16, 8, mode="nearest")
    _centre_tap(module, 0.5)
    x, high = torch.randn(1, 16, 25, 25), torch.randn(1, 8, 13, 13)
    pad = torch.zeros(1, 8, 13, 13)
    high16 = torch.cat([high, pad], 1)
    expected = x * (1 + F.interpolate(0.5 * high16, size=(25, 25), mode="nearest"))
    torch.testing.assert_close(module(x, high), expected)


def test_recipe_on_tiny_fpn_multiplies_the_lateral_by_the_top_down_input():
    host = randomize_batchnorm(TinyFPN()).eval()
    x = torch.randn(2, 3, 64, 64)
    result = ps.apply(host, "seb", input_shape=(2, 3, 64, 64))
    edited = result.model.eval()
    assert [(e.site, e.module) for e in result.report.edits] == [("lateral.1", "seb"), ("lateral.0", "seb_1")]
    before, after = host(x), edited(x)
    assert all(torch.equal(before[k], after[k]) for k in before)

    seen = {}
    edited.seb.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    edited(x)
    c4 = host.c4(host.c3(host.stem(x)))
    lateral, top = host.lateral[1](c4), host.lateral[2](host.c5(c4))
    assert torch.equal(seen["args"][0], lateral) and torch.equal(seen["args"][1], top)  # extra = top-down input before upsampling

    # A trained-looking conv changes P4 exactly by the product.
    _centre_tap(edited.seb, 0.5)
    p4 = edited(x)["p4"]
    merged = lateral * (1 + F.interpolate(0.5 * top, size=(8, 8), mode="bilinear", align_corners=False)) + F.interpolate(top, size=(8, 8))
    torch.testing.assert_close(p4, host.smooth[1](merged))
