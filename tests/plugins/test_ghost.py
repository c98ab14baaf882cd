"""Ghost module: the output is [intrinsic maps, ghosts of them] trimmed to the replaced conv's channels,
each ghost made by a depthwise kernel from its own intrinsic map; Ghost-ResNet-50's parameter count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.ghost import GhostModule
from tests.nets import randomize_batchnorm


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize(("cout", "ratio"), [(16, 2), (15, 2), (16, 3)])
def test_output_is_intrinsic_maps_then_their_ghosts(cout, ratio):
    source = nn.Conv2d(8, cout, 3, padding=1, bias=False)
    block = randomize_batchnorm(GhostModule(source, ratio=ratio)).eval()
    m = -(-cout // ratio)
    assert block.primary.out_channels == m and block.cheap.out_channels == m * (ratio - 1)
    x = torch.randn(2, 8, 7, 7)
    intrinsic = F.relu(_bn(F.conv2d(x, block.primary.weight, padding=1), block.primary_bn))
    ghosts = []
    for j in range(m * (ratio - 1)):  # ghost j comes from intrinsic map j // (ratio - 1) alone
        source_map = intrinsic[:, j // (ratio - 1) : j // (ratio - 1) + 1]
        ghosts.append(F.conv2d(source_map, block.cheap.weight[j : j + 1], padding=1))
    ghosts = F.relu(_bn(torch.cat(ghosts, dim=1), block.cheap_bn))
    with torch.no_grad():
        out = block(x)
        assert out.shape == (2, cout, 7, 7)
        torch.testing.assert_close(out[:, :m], intrinsic, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, m:], ghosts[:, : cout - m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conv", [dict(kernel_size=1, stride=2), dict(kernel_size=7, stride=2, padding=3),
                                  dict(kernel_size=3, padding=2, dilation=2, groups=4)])
def test_keeps_the_replaced_conv_geometry(conv):
    source = nn.Conv2d(16, 32, **conv)
    block = GhostModule(source)
    assert block.primary.kernel_size == source.kernel_size and block.primary.stride == source.stride
    x = torch.randn(2, 16, 13, 13)
    assert block(x).shape == source(x).shape


def test_about_half_the_parameters():
    source = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    block = GhostModule(source)
    convs = block.primary.weight.numel() + block.cheap.weight.numel()
    assert convs == 32 * 64 * 9 + 32 * 9
    assert 0.5 < convs / source.weight.numel() < 0.51


def test_recipe_on_resnet50_matches_ghost_resnet50():
    report = ps.apply(ps.load_model("resnet50"), "ghost", input_shape=(1, 3, 224, 224), dry_run=True).report
    assert len(report.edits) == 53  # every conv of ResNet-50
    assert round(report.params_after / 1e6, 1) == 14.0
    # The paper (Table 5: 13.0M) also makes the classifier, a 1x1 conv there, a Ghost module:
    linear = 2048 * 1000 + 1000
    ghost_classifier = 2048 * 500 + 500 * 9 + 2 * (2 * 500) + 1000  # primary, cheap op, their BNs, bias
    assert round((report.params_after - linear + ghost_classifier) / 1e6, 1) == 13.0
