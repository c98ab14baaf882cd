"""RFB-s: four branches with 1x3 / 3x1 factorised kernels and dilations 1, 3, 3, 5, measured with an
impulse (non-square receptive fields in the middle branches), widths, and the recipe on ResNet-50."""

from __future__ import annotations

import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.rfb_s import RFBSmall
from tests.plugins.test_rfb import positive_impulse_supports


def test_branch_receptive_fields():
    # 3x3 d1 -> 3x3; 3x1 then 3x3 d3 -> 9 rows x 7 cols; 1x3 then d3 -> 7 x 9; 1x3, 3x1, then d5 -> 13 x 13.
    assert positive_impulse_supports(RFBSmall(32), 32) == [(3, 3), (9, 7), (7, 9), (13, 13)]


def test_channel_widths_and_kernels():
    module = RFBSmall(64)  # i = 64 / 4 = 16
    convs = [[m for m in branch.modules() if isinstance(m, nn.Conv2d)] for branch in module.branches]
    assert [[c.out_channels for c in b] for b in convs] == [[16, 16], [16, 16, 16], [16, 16, 16], [8, 12, 16, 16]]
    assert [[c.kernel_size for c in b] for b in convs][1:] == [
        [(1, 1), (3, 1), (3, 3)], [(1, 1), (1, 3), (3, 3)], [(1, 1), (1, 3), (3, 1), (3, 3)]]
    assert [b[-1].dilation for b in convs] == [(1, 1), (3, 3), (3, 3), (5, 5)]
    assert (module.project[0].in_channels, module.project[0].out_channels) == (64, 64)
    assert RFBSmall(16)(torch.randn(1, 16, 4, 4)).shape == (1, 16, 4, 4)


def test_scaled_residual_and_zero_init():
    x = torch.randn(2, 32, 9, 9)
    module = RFBSmall(32, zero_init=False).eval()
    torch.testing.assert_close(module(x), torch.relu(x + 0.1 * module.residual(x)))
    zero = RFBSmall(32).eval()
    assert torch.equal(zero(x.relu()), x.relu()) and torch.equal(zero(x), x.relu())


def test_recipe_on_resnet50_takes_the_stride_8_stage():
    model = ps.load_model("resnet50").eval()
    result = ps.apply(model, "rfb_s", input_shape=(1, 3, 224, 224))
    assert [(e.site, e.stage, e.channels) for e in result.report.edits] == [("layer2.3.relu", 3, 512)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), model(x))
