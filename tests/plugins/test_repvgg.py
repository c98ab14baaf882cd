"""RepVGG block: the branches are what the paper says (checked by hand), the block is the replaced conv
at init, and reparameterize() gives one conv computing the same function (random BN statistics)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugsurgeon.plugins.repvgg import RepVGGBlock
from tests.nets import randomize_batchnorm


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_branches_match_hand_computation():
    source = nn.Conv2d(8, 8, 3, padding=1, bias=True)
    block = randomize_batchnorm(RepVGGBlock(source)).eval()
    x = torch.randn(2, 8, 7, 7)
    want = F.conv2d(x, source.weight, source.bias, padding=1) + _bn(F.conv2d(x, block.pointwise.weight), block.pointwise_bn) + _bn(x, block.identity_bn)
    with torch.no_grad():
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("cin", "cout", "conv", "requested", "expected"),
    [
        (8, 8, dict(padding=1), True, True),
        (8, 8, dict(padding=1, stride=2), True, False),
        (8, 16, dict(padding=1), True, False),
        (8, 8, dict(padding=2, dilation=2), True, True),
        (8, 8, dict(padding=1), False, False),
        (8, 8, dict(padding=0), True, False),  # valid padding: the identity would not align
    ],
)
def test_identity_branch_only_when_shapes_allow(cin, cout, conv, requested, expected):
    block = RepVGGBlock(nn.Conv2d(cin, cout, 3, **conv), identity=requested)
    assert (block.identity_bn is not None) == expected


def test_identity_at_init_keeps_the_replaced_conv():
    source = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    block = RepVGGBlock(source)
    assert block.weight is source.weight
    x = torch.randn(2, 8, 6, 6)
    for mode in (block.train, block.eval):
        mode()
        with torch.no_grad():
            torch.testing.assert_close(block(x), source(x))


@pytest.mark.parametrize(
    ("cin", "cout", "conv"),
    [
        (8, 8, dict(padding=1)),
        (8, 8, dict(padding=1, stride=2)),
        (8, 12, dict(padding=1, bias=True)),
        (8, 8, dict(padding=1, groups=4)),
        (8, 8, dict(padding=1, groups=8)),
        (8, 16, dict(padding=1, groups=4, stride=2)),
        (8, 8, dict(padding=2, dilation=2, groups=2)),
        (8, 8, dict(padding=1, padding_mode="reflect")),
        (8, 8, dict(kernel_size=5, padding=2)),
    ],
    ids=["s1", "s2", "wider-bias", "g4", "depthwise", "g4-s2", "dilated", "reflect", "5x5"],
)
def test_reparameterize_is_exact(cin, cout, conv):
    conv = {"kernel_size": 3, "bias": False, **conv}
    block = randomize_batchnorm(RepVGGBlock(nn.Conv2d(cin, cout, **conv)), seed=1).eval()
    assert block.pointwise_bn.weight.abs().min() > 0  # the random statistics reach every branch
    fused = block.reparameterize()
    assert isinstance(fused, nn.Conv2d) and not fused.training
    assert fused.weight.shape == block.weight.shape and fused.stride == block.stride and fused.groups == block.groups
    x = torch.randn(2, cin, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)


def test_reparameterize_is_exact_in_double():
    block = randomize_batchnorm(RepVGGBlock(nn.Conv2d(16, 16, 3, padding=1, groups=2).double())).eval()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block.reparameterize()(x), block(x), atol=1e-12, rtol=1e-12)
