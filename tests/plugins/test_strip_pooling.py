"""Strip pooling: H x 1 and 1 x W average pools feed the 3x1 and 1x3 convs respectively (a swap is
caught), the channel reduction comes first, and the recipe places SPMs as the authors' code."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.strip_pooling import StripPooling


def _randomise_bn(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_mean, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return module.eval()


def test_strips_have_the_right_shapes_and_kernels():
    module = StripPooling(64)
    assert module.reduce[0].out_channels == 16  # C/4
    assert module.conv_h.kernel_size == (3, 1) and module.conv_w.kernel_size == (1, 3)
    rows, cols = module.strips(torch.randn(2, 64, 6, 10))
    assert rows.shape == (2, 16, 6, 1) and cols.shape == (2, 16, 1, 10)


def test_matches_reference_with_explicit_pools():
    module = _randomise_bn(StripPooling(32))
    x = torch.randn(2, 32, 6, 9)
    r = module.reduce(x)
    rows = F.avg_pool2d(r, kernel_size=(1, 9))  # H x 1: each row averaged over the width
    cols = F.avg_pool2d(r, kernel_size=(6, 1))  # 1 x W: each column averaged over the height
    y_h = module.bn_h(F.conv2d(rows, module.conv_h.weight, padding=(1, 0)))
    y_w = module.bn_w(F.conv2d(cols, module.conv_w.weight, padding=(0, 1)))
    y = torch.relu(y_h.expand(-1, -1, 6, 9) + y_w.expand(-1, -1, 6, 9))
    expected = x * torch.sigmoid(module.fuse(y))
    torch.testing.assert_close(module(x), expected)


def test_row_strip_conv_mixes_neighbouring_rows():
    module = _randomise_bn(StripPooling(16))
    with torch.no_grad():
        module.conv_w.weight.zero_()
    x = torch.randn(1, 16, 8, 8)
    rows, _ = module.strips(x)
    x2 = x.clone()
    x2[:, :, 5] = torch.randn(16, 8)  # change row 5 only
    rows2, _ = module.strips(x2)
    changed = (rows2 - rows).abs().amax(dim=(0, 1, 3)) > 1e-6
    assert changed.tolist() == [False, False, False, False, True, True, True, False]  # rows 4-6: the 3-tap conv


def test_recipe_places_modules_as_the_authors_code():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("strip_pooling"), input_shape=(1, 3, 224, 224))
    assert [e.module for e in result.report.edits] == [
        "layer1.2.strip_pooling",
        "layer2.3.strip_pooling",
        "layer3.5.strip_pooling",
        "layer4.0.strip_pooling",
        "layer4.1.strip_pooling",
        "layer4.2.strip_pooling",
    ]

    def per_module(c):
        m = c // 4
        return c * m + 2 * m + 2 * (3 * m * m + 2 * m) + m * c + c

    expected = sum(per_module(c) for c in (256, 512, 1024, 2048, 2048, 2048))
    assert sum(p.numel() for p in result.model.parameters()) - base == expected == 12_234_112
