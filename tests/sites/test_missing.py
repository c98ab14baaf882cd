"""When a model has no sites of a role, the refusal says what the trace holds instead: residual merges on
N,H,W,C maps (counted), modules torch.fx could not trace (with fx's reason), not just "has no sites".

The toy nets are built so the answer is known by construction: BLOCKS residual blocks, in channels-last code or
behind data-dependent control flow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.sites.missing import why_no_sites

BLOCKS = 3


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt-style block written in N,H,W,C: norm and MLP over the last axis, added to its input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class ChannelsLastNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(*[ChannelsLastBlock(16) for _ in range(BLOCKS)])
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        return self.head(self.blocks(x).mean((1, 2)))


class BranchingBlock(nn.Module):
    """A residual block fx cannot trace: its forward branches on the data."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        if y.mean() > 10:
            y = y * 0.5
        return torch.relu(x + y)


class BranchingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[BranchingBlock(8) for _ in range(BLOCKS)])
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


SHAPE = (1, 3, 32, 32)


def test_channels_last_residual_merges_are_counted_in_the_refusal():
    traced = ps.trace(ChannelsLastNet(), SHAPE)
    assert ps.find_sites(traced, "residual.branch") == []
    why = why_no_sites(traced, "residual.branch")
    assert why is not None and f"{BLOCKS} residual merges found on N,H,W,C" in why
    with pytest.raises(ps.SiteError) as refused:
        ps.apply(ChannelsLastNet(), "se", input_shape=SHAPE)
    assert f"{BLOCKS} residual merges found on N,H,W,C" in str(refused.value)
    assert "N,C,H,W" in str(refused.value)
    assert why_no_sites(traced, "downsample.conv") is None  # another role: nothing to say


def test_untraceable_blocks_give_fx_reason_in_the_refusal():
    traced = ps.trace(BranchingNet(), SHAPE)
    assert ps.find_sites(traced, "residual.branch") == []
    assert {path for path, _reason in traced.untraced} == {f"blocks.{i}" for i in range(BLOCKS)}
    with pytest.raises(ps.SiteError) as refused:
        ps.apply(BranchingNet(), "se", input_shape=SHAPE)
    message = str(refused.value)
    assert f"could not trace inside {BLOCKS} modules" in message and "'blocks.0'" in message
    assert traced.untraced[0][1] in message  # fx's own reason, as the trace holds it


@pytest.mark.slow
def test_mambaout_residual_merges_are_counted():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mambaout_femto", pretrained=False)
    blocks = sum(1 for m in model.modules() if type(m).__name__ == "GatedConvBlock")  # timm's residual block
    traced = ps.trace(model, (1, 3, 64, 64))
    assert ps.find_sites(traced, "residual.branch") == []
    why = why_no_sites(traced, "residual")
    assert why is not None and why.startswith(f"{blocks} residual merges found on N,H,W,C")


def test_sites_command_says_why_it_lists_none(monkeypatch):
    from typer.testing import CliRunner

    from plugsurgeon.cli.app import app

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    result = CliRunner().invoke(app, ["sites", "tests.sites.test_missing:ChannelsLastNet", "--kind", "residual.branch",
                                      "--input-shape", "1,3,32,32"])
    assert result.exit_code == 0, result.output
    assert f"{BLOCKS} residual merges found on N,H,W,C" in " ".join(result.output.split())
