"""Double attention: an explicit gather/distribute reference with the paper's two softmax axes, batch
independence, identity at init, the recipe's placement and count on ResNet-50."""

from __future__ import annotations

import torch

import plugsurgeon as ps

DoubleAttention = ps.get_plugin("a2").factory


def _conv1x1(conv, x):
    return torch.einsum("oc,cl->ol", conv.weight[:, :, 0, 0], x) + conv.bias[:, None]


def _randomised(channels=16, **kwargs):
    block = DoubleAttention(channels, **kwargs).double()
    with torch.no_grad():
        block.reconstruct.weight.normal_()
        block.reconstruct.bias.normal_()
    return block


def _reference(block, x):
    """One sample, gather and distribute written with loops: softmax over positions to gather, over descriptors to distribute."""
    c, h, w = x.shape
    flat = x.reshape(c, h * w)
    a = _conv1x1(block.features, flat)  # c_m x L
    b = _conv1x1(block.gather_maps, flat)  # c_n x L
    v = _conv1x1(block.distribute_maps, flat)  # c_n x L
    c_m, c_n, positions = a.shape[0], b.shape[0], flat.shape[1]
    g = torch.zeros(c_m, c_n, dtype=x.dtype)
    for j in range(c_n):
        weights = torch.exp(b[j]) / torch.exp(b[j]).sum()  # attention map j over the L positions
        g[:, j] = sum(weights[i] * a[:, i] for i in range(positions))
    z = torch.zeros(c_m, positions, dtype=x.dtype)
    for i in range(positions):
        weights = torch.exp(v[:, i]) / torch.exp(v[:, i]).sum()  # attention vector at i over the c_n descriptors
        z[:, i] = sum(weights[j] * g[:, j] for j in range(c_n))
    return x + _conv1x1(block.reconstruct, z).reshape(c, h, w)


def test_matches_explicit_gather_distribute_reference():
    block = _randomised(16, feature_reduction=2, attention_reduction=4)  # c_m = 8 != c_n = 4
    assert (block.c_m, block.c_n) == (8, 4)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
        for n in range(2):
            torch.testing.assert_close(got[n], _reference(block, x[n]))


def test_uniform_attention_gathers_the_spatial_mean():
    # theta(X) = 0: every attention map is uniform over positions, so each descriptor is the mean of A;
    # any distribution then hands every position that same mean.
    block = _randomised(16)
    with torch.no_grad():
        block.gather_maps.weight.zero_()
        block.gather_maps.bias.zero_()
        x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
        mean_a = block.features(x).mean(dim=(2, 3))  # N, c_m
        g = block.descriptors(x)
        torch.testing.assert_close(g, mean_a[:, :, None].expand_as(g))
        expected = x + block.reconstruct(mean_a[:, :, None, None].expand(-1, -1, 4, 4))
        torch.testing.assert_close(block(x), expected)


def test_samples_do_not_mix():
    # an implicit-dim softmax on (N, c_n, L) normalises over the batch
    block = _randomised(16)
    x = torch.randn(3, 16, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        torch.testing.assert_close(block(x[:1]), y[:1])


def test_identity_at_init():
    block = DoubleAttention(32)
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(block(x), x)
    block(x).square().sum().backward()
    assert block.reconstruct.weight.grad.abs().sum() > 0


def test_recipe_on_resnet50_upper_stages_every_other_block():
    model = ps.load_model("resnet50")
    result = ps.apply(model, "a2", input_shape=(1, 3, 224, 224))
    sites = [e.site for e in result.report.edits]
    assert sites == ["layer3.0.relu", "layer3.2.relu", "layer3.4.relu", "layer4.0.relu", "layer4.2.relu"]

    def count(c):
        k = c // 4
        return 3 * (c * k + k) + (k * c + c)

    added = result.report.params_after - result.report.params_before
    assert added == 3 * count(1024) + 2 * count(2048) == 11_546_880
