"""Self-calibrated conv against the paper's equations, step by step; stride in K4 and K1 only; the
parameter count of the replaced conv; SCNet-50's count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.scconv import SCConv
from tests.nets import randomize_batchnorm


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_matches_the_papers_equations():
    block = randomize_batchnorm(SCConv(nn.Conv2d(16, 16, 3, padding=1, bias=False))).eval()
    x = torch.randn(2, 16, 12, 12)
    x1, x2 = x[:, :8], x[:, 8:]
    t1 = F.avg_pool2d(x1, kernel_size=4, stride=4)  # AvgPool_r, r = 4: 12x12 -> 3x3
    x1p = F.interpolate(_bn(F.conv2d(t1, block.k2.weight, padding=1), block.k2_bn), size=(12, 12), mode="bilinear")
    y1p = _bn(F.conv2d(x1, block.k3.weight, padding=1), block.k3_bn) * torch.sigmoid(x1 + x1p)
    y1 = F.conv2d(y1p, block.k4.weight, padding=1)
    y2 = F.conv2d(x2, block.k1.weight, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.cat([y1, y2], dim=1), atol=1e-5, rtol=1e-5)


def test_the_gate_uses_average_pooling_and_the_identity():
    block = SCConv(nn.Conv2d(8, 8, 3, padding=1)).eval()
    with torch.no_grad():
        nn.init.zeros_(block.k2.weight)  # K2 * T1 = BN(0) = 0: the gate is sigmoid(X1) alone
        x1 = torch.randn(1, 4, 8, 8)
        torch.testing.assert_close(block.calibration(x1), torch.sigmoid(x1))
        block.k2.weight[:, :, 1, 1] = torch.eye(4)  # K2 = identity: Up(AvgPool(X1)) joins X1
        pooled = x1.view(1, 4, 2, 4, 2, 4).mean(dim=(3, 5))
        want = torch.sigmoid(x1 + F.interpolate(pooled / (1 + 1e-5) ** 0.5, size=(8, 8), mode="bilinear"))
        torch.testing.assert_close(block.calibration(x1), want)


def test_stride_goes_to_k4_and_k1_and_the_shape_matches():
    source = nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
    block = SCConv(source)
    assert block.k2.stride == block.k3.stride == (1, 1)
    assert block.k4.stride == block.k1.stride == (2, 2)
    x = torch.randn(2, 32, 15, 15)
    assert block(x).shape == source(x).shape


def test_same_parameter_count_as_the_replaced_conv():
    source = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    convs = (SCConv(source).k1, SCConv(source).k2, SCConv(source).k3, SCConv(source).k4)
    assert sum(c.weight.numel() for c in convs) == source.weight.numel()


@pytest.mark.parametrize(("cin", "cout", "size"), [(3, 16, 9), (16, 16, 2), (17, 33, 5)])
def test_odd_channels_and_maps_smaller_than_the_pooling_rate(cin, cout, size):
    source = nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(2, cin, size, size)
    assert SCConv(source)(x).shape == source(x).shape


def test_recipe_on_resnet50_gives_scnet50_parameter_count():
    # SCNet-50: 25.6M, as ResNet-50 (the paper: no extra parameters).
    report = ps.apply(ps.load_model("resnet50"), "scconv", input_shape=(1, 3, 224, 224), dry_run=True).report
    assert len(report.edits) == 16
    assert round(report.params_after / 1e6, 1) == 25.6
