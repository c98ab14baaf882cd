"""Split attention: the r-softmax runs across the radix for every channel (the copy-paste bug is a softmax
over the wrong axis), the splits are the replaced conv cut by input slices, and ResNeSt-50's count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.splat import SplitAttentionConv
from tests.nets import randomize_batchnorm


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("groups", [1, 4])
def test_attention_weights_sum_to_one_across_the_radix_for_each_channel(groups):
    block = SplitAttentionConv(nn.Conv2d(48, 48, 3, padding=1, groups=groups), radix=3).train()
    with torch.no_grad():
        block.fc2.weight.normal_(0, 1.0)
        a = block.attention(block.split(torch.randn(4, 48, 8, 8)))
    assert a.shape == (4, groups, 3, 48 // groups)
    torch.testing.assert_close(a.sum(dim=2), torch.ones(4, groups, 48 // groups))
    assert not torch.allclose(a.sum(dim=3), torch.ones(4, groups, 3))  # not a softmax over channels


def test_matches_hand_computed_block():
    source = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    block = randomize_batchnorm(SplitAttentionConv(source)).eval()
    with torch.no_grad():
        block.fc1.weight.normal_(0, 0.2)
        block.fc2.weight.normal_(0, 0.2)
    assert block.fc1.out_channels == 32  # max(64 * 2 / 4, 32)
    x = torch.randn(2, 64, 8, 8)
    w = source.weight
    # Radix 2, cardinality 1: split r reads input channels [32 r, 32 r + 32) with the matching kernel slice.
    splits = torch.cat([F.conv2d(x[:, :32], w[:, :32], padding=1), F.conv2d(x[:, 32:], w[:, 32:], padding=1)], dim=1)
    splits = F.relu(_bn(splits, block.bn0))
    u0, u1 = splits[:, :64], splits[:, 64:]
    gap = (u0 + u1).mean(dim=(2, 3))
    z = F.relu(_bn((gap @ block.fc1.weight[:, :, 0, 0].T)[:, :, None, None], block.bn1))[:, :, 0, 0]
    logits = z @ block.fc2.weight[:, :, 0, 0].T + block.fc2.bias
    a0, a1 = logits[:, :64], logits[:, 64:]
    w0 = a0.exp() / (a0.exp() + a1.exp())
    want = w0[:, :, None, None] * u0 + (1 - w0)[:, :, None, None] * u1
    with torch.no_grad():
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("groups", "stride", "bias"), [(1, 1, False), (4, 2, True)])
def test_splits_of_a_group_sum_to_the_replaced_conv(groups, stride, bias):
    source = nn.Conv2d(16, 24, 3, stride=stride, padding=1, groups=groups, bias=bias)
    block = SplitAttentionConv(source)
    assert block.weight is source.weight and block.cardinality == groups
    x = torch.randn(2, 16, 9, 9)
    kernel, b = block.split_kernel()
    u = F.conv2d(x, kernel, b, stride, 1, 1, groups * 2)
    summed = u.view(2, groups, 2, 24 // groups, *u.shape[-2:]).sum(dim=2).reshape(2, 24, *u.shape[-2:])
    with torch.no_grad():
        torch.testing.assert_close(summed, source(x), atol=1e-5, rtol=1e-5)
        assert block(x).shape == source(x).shape


def test_radix_one_is_a_sigmoid_gate():
    block = SplitAttentionConv(nn.Conv2d(16, 16, 3, padding=1), radix=1).eval()
    with torch.no_grad():
        nn.init.zeros_(block.fc2.weight)
        nn.init.zeros_(block.fc2.bias)
        x = torch.randn(2, 16, 6, 6)
        u = block.split(x)
        torch.testing.assert_close(block(x), 0.5 * u[:, 0, 0])


def test_rejects_input_channels_the_radix_cannot_split():
    with pytest.raises(ValueError, match="radix=2"):
        SplitAttentionConv(nn.Conv2d(3, 16, 3, padding=1))


def test_recipe_on_resnet50_gives_resnest50_parameter_count():
    # ResNeSt-50 (2s1x64d): 27.5M. Its deep stem adds ~19k parameters more; both round to 27.5M.
    report = ps.apply(ps.load_model("resnet50"), "splat", input_shape=(1, 3, 224, 224), dry_run=True).report
    assert len(report.edits) == 16
    assert round(report.params_after / 1e6, 1) == 27.5
