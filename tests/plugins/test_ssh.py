"""SSH: output channels are [3x3 detection conv C/2, context 5x5 C/4, context 7x7 C/4]; the
receptive field of each part is checked with an impulse; the recipe picks the stride 8-32 levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.ssh import SSHContext, split_channels
from tests.nets import TinyFPN


def _support(channel_map: torch.Tensor) -> tuple[int, int]:
    rows = channel_map.abs().sum(dim=-1).nonzero()
    cols = channel_map.abs().sum(dim=-2).nonzero()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize(("channels", "widths"), [(16, (8, 4, 4)), (18, (9, 4, 5)), (256, (128, 64, 64))])
def test_channel_composition(channels, widths):
    assert split_channels(channels) == widths
    module = SSHContext(channels)
    assert module.detect[0].out_channels == widths[0]
    assert module.stem[0].out_channels == channels // 2
    assert module.context5[0].out_channels == widths[1]
    assert (module.context7_1[0].out_channels, module.context7_2[0].out_channels) == (widths[2], widths[2])
    assert module(torch.randn(1, channels, 6, 6)).shape == (1, channels, 6, 6)


def test_output_is_the_concatenation_of_the_three_parts():
    module = SSHContext(16).eval()
    x = torch.randn(2, 16, 9, 9)
    relu = torch.relu
    stem = relu(module.stem(x))
    expected = relu(torch.cat([module.detect(x), module.context5(stem), module.context7_2(relu(module.context7_1(stem)))], 1))
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_receptive_fields_are_3_5_and_7(batch_norm):
    module = SSHContext(16, batch_norm=batch_norm).eval()
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    x = torch.zeros(1, 16, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = module(x)[0]
    d, f, s = split_channels(16)
    assert _support(out[:d].sum(0)) == (3, 3)
    assert _support(out[d : d + f].sum(0)) == (5, 5)
    assert _support(out[d + f :].sum(0)) == (7, 7)


def test_recipe_takes_the_pyramid_levels_at_strides_8_to_32():
    result = ps.apply(TinyFPN(), "ssh", input_shape=(1, 3, 64, 64))
    # TinyFPN's levels are at strides 4, 8, 16 (stages 2-4): SSH's M1-M3 strides keep the last two.
    assert [(e.site, e.stage) for e in result.report.edits] == [("smooth.2", 4), ("smooth.1", 3)]
    out = result.model.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p3": (1, 16, 16, 16), "p4": (1, 16, 8, 8), "p5": (1, 16, 4, 4)}
