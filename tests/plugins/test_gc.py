"""GC block: softmax over spatial positions (not channels), LayerNorm transform, zero-initialised and
added, so it is the identity at init; GC-ResNet50 (r=16, c3-c5) parameter count."""

from __future__ import annotations

import torch

import plugsurgeon as ps
from plugsurgeon.plugins.gc import GlobalContext


def _trained_like(module: GlobalContext) -> GlobalContext:
    torch.nn.init.normal_(module.transform[-1].weight, std=0.1)
    torch.nn.init.normal_(module.transform[-1].bias, std=0.1)
    return module


def test_softmax_is_over_positions():
    module = GlobalContext(32)
    x = torch.randn(2, 32, 5, 6)
    weights = module.attention(x)
    assert weights.shape == (2, 1, 30)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 1))


def test_context_is_attention_weighted_sum_by_hand():
    module = GlobalContext(16)
    x = torch.randn(2, 16, 4, 5)
    wk = module.key.weight.view(16)
    logits = torch.einsum("c,nchw->nhw", wk, x).reshape(2, 20)
    weights = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    expected = torch.einsum("ncp,np->nc", x.reshape(2, 16, 20), weights)
    torch.testing.assert_close(module.context(x).view(2, 16), expected)


def test_attention_pooling_picks_the_salient_position():
    module = GlobalContext(16)
    with torch.no_grad():
        module.key.weight.zero_()
        module.key.weight[0, 0] = 50.0  # logits = 50 * channel 0
    x = torch.randn(1, 16, 4, 4)
    x[0, 0] = 0.0
    x[0, 0, 2, 3] = 1.0  # the one position that wins the softmax
    torch.testing.assert_close(module.context(x).view(16), x[0, :, 2, 3], atol=1e-6, rtol=1e-5)


def test_transform_and_fusion_by_hand():
    module = _trained_like(GlobalContext(64, reduction=16)).eval()
    conv1, norm, _relu, conv2 = module.transform
    assert conv1.out_channels == 8  # C/r = 4, clamped to at least 8
    assert tuple(norm.normalized_shape) == (conv1.out_channels, 1, 1)
    x = torch.randn(2, 64, 6, 6)
    ctx = module.context(x).view(2, 64)
    hidden = ctx @ conv1.weight.view(conv1.out_channels, 64).T + conv1.bias
    hidden = (hidden - hidden.mean(1, keepdim=True)) / torch.sqrt(hidden.var(1, unbiased=False, keepdim=True) + norm.eps)
    hidden = torch.relu(hidden * norm.weight.view(-1) + norm.bias.view(-1))
    delta = hidden @ conv2.weight.view(64, -1).T + conv2.bias
    torch.testing.assert_close(module(x), x + delta[:, :, None, None])


def test_identity_at_init():
    module = GlobalContext(256)
    assert torch.count_nonzero(module.transform[-1].weight) == 0
    x = torch.randn(2, 256, 7, 7)
    assert torch.equal(module(x), x)


def test_recipe_parameter_count_on_resnet50():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("gc"), input_shape=(1, 3, 224, 224))
    assert [e.module.split(".")[0] for e in result.report.edits] == ["layer2"] * 4 + ["layer3"] * 6 + ["layer4"] * 3
    total = sum(p.numel() for p in result.model.parameters())
    assert total - base == 2_521_728
    # GCNet reports GC-ResNet50 (r=16, c3-c5) at 28.08M parameters.
    assert round(total / 1e6, 2) == 28.08
