"""RFB: the branches' receptive fields (1x1 + 3x3 d1, + 3x3 + 3x3 d3, + two 3x3 + 3x3 d5) measured
with an impulse, the channel widths, the 0.1-scaled residual with its final ReLU, what zero init
does at non-negative and at signed sites, and the RFB Net recipe on ResNet-50."""

from __future__ import annotations

import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.rfb import RFB


def _support(channel_map: torch.Tensor) -> tuple[int, int]:
    rows = channel_map.abs().sum(dim=-1).nonzero()
    cols = channel_map.abs().sum(dim=-2).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def positive_impulse_supports(module: nn.Module, channels: int, size: int = 41) -> list[tuple[int, int]]:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.01)
    module.eval()
    x = torch.zeros(1, channels, size, size)
    x[:, :, size // 2, size // 2] = 1.0
    with torch.no_grad():
        return [_support(branch(x)[0].sum(0)) for branch in module.branches]


def test_branch_receptive_fields_follow_dilations_1_3_5():
    # 3x3 d1 -> 3; 3x3 then 3x3 d3 -> 3 + 6 = 9; two 3x3 (the 5x5) then 3x3 d5 -> 5 + 10 = 15.
    assert positive_impulse_supports(RFB(32), 32) == [(3, 3), (9, 9), (15, 15)]
    assert positive_impulse_supports(RFB(32, dilations=(1, 2, 3)), 32) == [(3, 3), (7, 7), (11, 11)]


def test_channel_widths():
    module = RFB(256)  # i = 256 / 8 = 32
    outs = [[m.out_channels for m in branch.modules() if isinstance(m, nn.Conv2d)] for branch in module.branches]
    assert outs == [[64, 64], [32, 64, 64], [32, 48, 64, 64]]
    assert (module.project[0].in_channels, module.project[0].out_channels) == (192, 256)
    assert [m.dilation for m in module.branches[2].modules() if isinstance(m, nn.Conv2d)][-1] == (5, 5)
    assert RFB(16)(torch.randn(1, 16, 4, 4)).shape == (1, 16, 4, 4)


def test_scaled_residual_with_final_relu():
    module = RFB(32, zero_init=False).eval()
    x = torch.randn(2, 32, 9, 9)
    torch.testing.assert_close(module(x), torch.relu(x + 0.1 * module.residual(x)))
    assert (module(x) >= 0).all()


def test_zero_init_is_the_identity_only_on_non_negative_inputs():
    module = RFB(32).eval()
    signed = torch.randn(2, 32, 9, 9)
    assert torch.equal(module(signed.relu()), signed.relu())  # after a ReLU: exactly x
    assert torch.equal(module(signed), signed.relu())  # elsewhere: relu(x), not x
    assert not ps.get_plugin("rfb").identity_at_init


def test_rfb_net_recipe_on_resnet50():
    model = ps.load_model("resnet50").eval()
    result = ps.apply(model, "rfb", input_shape=(1, 3, 224, 224))
    placed = [(e.plugin, e.site, e.stage, e.channels, e.params_added) for e in result.report.edits]
    assert placed == [
        ("rfb_s", "layer2.3.relu", 3, 512, 1_238_848),
        ("rfb", "layer3.5.relu", 4, 1024, 4_044_672),
        ("rfb", "layer4.2.relu", 5, 2048, 16_166_656),
    ]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # every site is a post-ReLU stage output, so zero init is exactly the identity
        assert torch.equal(result.model.eval()(x), model(x))
