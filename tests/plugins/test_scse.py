"""scSE: cSE with the paper's C/2 hidden layer and sSE with a 1x1 conv to one map, computed by hand,
combined by addition (the MICCAI paper) or max-out / product (options)."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.plugins.scse import SCSE


def _gates_by_hand(module: SCSE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = x.mean(dim=(2, 3))
    hidden = torch.clamp(z @ module.fc1.weight.T + module.fc1.bias, min=0)
    channel = torch.sigmoid(hidden @ module.fc2.weight.T + module.fc2.bias)  # N, C
    q = torch.einsum("c,nchw->nhw", module.spatial.weight.view(-1), x) + module.spatial.bias
    return channel[:, :, None, None], torch.sigmoid(q)[:, None]


def test_structure_follows_the_paper():
    module = SCSE(64)
    assert (module.fc1.in_features, module.fc1.out_features, module.fc2.out_features) == (64, 32, 64)  # C -> C/2 -> C
    assert module.spatial.kernel_size == (1, 1) and module.spatial.out_channels == 1


@pytest.mark.parametrize("fusion", ["add", "max", "mul"])
def test_matches_hand_computation(fusion: str):
    module = SCSE(32, fusion=fusion)
    x = torch.randn(2, 32, 5, 7)
    channel, spatial = _gates_by_hand(module, x)
    assert channel.shape == (2, 32, 1, 1) and spatial.shape == (2, 1, 5, 7)
    a, b = x * channel, x * spatial
    expected = {"add": a + b, "max": torch.maximum(a, b), "mul": a * b}[fusion]
    torch.testing.assert_close(module(x), expected)


def test_spatial_gate_varies_over_positions_only():
    module = SCSE(16)
    with torch.no_grad():
        module.fc2.weight.zero_()
        module.fc2.bias.fill_(-100.0)  # channel gate ~ 0: only sSE remains
    x = torch.randn(1, 16, 4, 4)
    ratio = module(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one value per position, shared by channels


def test_rejects_unknown_fusion():
    with pytest.raises(ValueError):
        SCSE(16, fusion="concat")


def test_recipe_on_resnet50():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("scse"), input_shape=(1, 3, 224, 224))
    assert len(result.report.edits) == 16
    # per block: cSE 2 * C * C/2 + C/2 + C, sSE C + 1 -> C^2 + 2.5 C + 1
    expected = sum(n * (c * c + c // 2 + c + c + 1) for n, c in ((3, 256), (4, 512), (6, 1024), (3, 2048)))
    assert sum(p.numel() for p in result.model.parameters()) - base == expected == 20_157_328
