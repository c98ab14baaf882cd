"""ASPP: the atrous branches sample at +-rate (hand-placed impulse), image pooling broadcasts the
pooled vector, five branches concatenated and projected back to C, rates larger than the map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import plugsurgeon as ps
from tests.nets import randomize_batchnorm

ASPP = ps.get_plugin("aspp").factory


def test_atrous_branches_sample_at_their_rate():
    # An impulse at the centre of a 31x31 map: a 3x3 conv with dilation r answers exactly at the nine
    # points centre + {-r, 0, r}^2. A missing dilation, or padding that shifts the grid, moves them.
    aspp = ASPP(16, branch_channels=8).eval()
    x = torch.zeros(1, 16, 31, 31)
    x[0, :, 15, 15] = 1.0
    for branch, rate in zip(aspp.branches[1:4], (6, 12, 18), strict=True):
        conv = branch[0]
        assert conv.dilation == (rate, rate) and conv.kernel_size == (3, 3)
        response = conv(x)[0].abs().sum(0)
        hits = {(int(i), int(j)) for i, j in torch.nonzero(response > 0)}
        expected = {(15 + a, 15 + b) for a in (-rate, 0, rate) for b in (-rate, 0, rate) if 0 <= 15 + a < 31 and 0 <= 15 + b < 31}
        assert hits == expected, rate


def test_rates_larger_than_the_map_reduce_to_the_centre_tap():
    # ResNet-50 at 224x224 ends in 7x7 maps; with rate 12 every off-centre tap reads zero padding.
    aspp = ASPP(16, branch_channels=8).double().eval()
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64)
    conv = aspp.branches[2][0]
    centre = conv.weight[:, :, 1:2, 1:2]
    torch.testing.assert_close(conv(x), F.conv2d(x, centre))
    assert aspp(x).shape == x.shape


def test_image_pooling_broadcasts_the_pooled_vector():
    aspp = randomize_batchnorm(ASPP(16, branch_channels=8)).double().eval()
    pooling = aspp.branches[4]
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    conv, bn = pooling.conv[0], pooling.conv[1]
    mean = x.mean(dim=(2, 3))
    z = mean @ conv.weight[:, :, 0, 0].T
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = z.clamp_min(0)[:, :, None, None].expand(-1, -1, 5, 6)
    torch.testing.assert_close(pooling(x), expected)


def test_five_branches_concatenated_and_projected_back_to_the_input_channels():
    aspp = randomize_batchnorm(ASPP(32, branch_channels=16)).double().eval()
    assert len(aspp.branches) == 5
    assert [b[0].kernel_size if not hasattr(b, "pool") else "pool" for b in aspp.branches] == [(1, 1), (3, 3), (3, 3), (3, 3), "pool"]
    assert aspp.project[0].in_channels == 5 * 16 and aspp.project[0].out_channels == 32
    x = torch.randn(2, 32, 9, 9, dtype=torch.float64)
    concatenated = torch.cat([b(x) for b in aspp.branches], dim=1)
    torch.testing.assert_close(aspp(x), aspp.project(concatenated))
    assert aspp(x).shape == x.shape


def test_parameter_count_on_a_resnet50_backbone_map():
    with torch.device("meta"):
        aspp = ASPP(2048)
    c, b = 2048, 256
    expected = (c * b + 2 * b) * 2 + 3 * (9 * c * b + 2 * b) + (5 * b * c + 2 * c)  # 1x1, pool, 3 atrous, projection
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[0].out_channels == 2048  # the paper's 256 per branch
    assert sum(p.numel() for p in aspp.parameters()) == expected == 17_832_448
    assert not ps.get_plugin("aspp").identity_at_init
