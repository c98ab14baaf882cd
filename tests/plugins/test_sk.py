"""SK unit: the selection is a softmax across paths per channel, the dilated path is a real dilation-2
conv with the right padding, and SKNet-50's parameter count comes out of the recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.sk import SKConv
from tests.nets import randomize_batchnorm


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_matches_hand_computed_unit():
    source = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    block = randomize_batchnorm(SKConv(source)).eval()
    with torch.no_grad():
        for p in (block.fc.weight, block.select.weight):
            p.normal_(0, 0.3)
    x = torch.randn(2, 64, 9, 9)
    w2 = block.dilated[0].weight
    assert w2.shape == (64, 64 // 32, 3, 3)  # paper: 32 groups on the new path
    u1 = F.relu(_bn(F.conv2d(x, source.weight, padding=1), block.bn[0]))
    u2 = F.relu(_bn(F.conv2d(x, w2, padding=2, dilation=2, groups=32), block.bn[1]))
    s = (u1 + u2).mean(dim=(2, 3))
    z = F.relu(F.batch_norm(s @ block.fc.weight.T, block.fc_bn.running_mean, block.fc_bn.running_var,
                            block.fc_bn.weight, block.fc_bn.bias, False, 0.0, block.fc_bn.eps))
    logits = z @ block.select.weight.T  # (N, 2C): path A's FC, then path B's
    a, b = logits[:, :64], logits[:, 64:]
    wa = a.exp() / (a.exp() + b.exp())  # Eq. 5: softmax across the two paths, channel by channel
    want = wa[:, :, None, None] * u1 + (1 - wa)[:, :, None, None] * u2
    with torch.no_grad():
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


def test_attention_sums_to_one_across_paths_for_every_channel():
    block = SKConv(nn.Conv2d(32, 32, 3, padding=1), paths=3).train()
    with torch.no_grad():
        block.select.weight.normal_(0, 1.0)
        a = block.attention(block.split(torch.randn(4, 32, 8, 8)))
    assert a.shape == (4, 3, 32)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(4, 32))
    assert not torch.allclose(a.sum(dim=2), torch.ones(4, 3))  # not a softmax over channels


def test_keeps_the_replaced_conv_and_its_geometry():
    source = nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, bias=True, padding_mode="reflect")
    block = SKConv(source)
    assert block.weight is source.weight and block.bias is source.bias
    assert block.dilated[0].dilation == (4, 4) and block.dilated[0].padding == (4, 4)
    x = torch.randn(2, 16, 15, 15)
    assert block(x).shape == source(x).shape
    assert set(block.state_dict()) >= {"weight", "bias"}


@pytest.mark.parametrize(("cin", "cout", "groups"), [(64, 64, 32), (16, 16, 16), (3, 16, 1), (48, 96, 24)])
def test_groups_clamp_to_a_divisor_of_the_channels(cin, cout, groups):
    assert SKConv(nn.Conv2d(cin, cout, 3, padding=1)).path_groups == groups


def test_rejects_a_1x1_conv():
    with pytest.raises(ValueError, match="kernel: 3"):
        SKConv(nn.Conv2d(8, 8, 1))


def test_recipe_on_resnext50_gives_sknet50_parameter_count():
    # SKNet-50 (Table 2 of the paper) is ResNeXt-50 32x4d with SK units: 27.5M parameters.
    report = ps.apply(ps.load_model("resnext50_32x4d"), "sk", input_shape=(1, 3, 224, 224), dry_run=True).report
    assert len(report.edits) == 16
    assert round(report.params_after / 1e6, 1) == 27.5
