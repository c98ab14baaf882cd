"""A forward that draws random numbers in Python (a block skipped at random in train mode) is traced along the
branch its draw chose: the sites then change with the seed. Two traces from different seeds must be compared and
the disagreement reported, not one of them shown as the model's sites."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugsurgeon.sites.seeds import seed_note, trace_checking_seeds

SHAPE = (1, 3, 32, 32)


class RandomlySkipped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if self.training and torch.rand(1).item() < 0.5:
            return x
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class StochasticDepthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[RandomlySkipped() for _ in range(8)])

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def test_seed_dependent_sites_are_detected_and_the_callers_random_state_kept():
    model = StochasticDepthNet()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    _traced, differing = trace_checking_seeds(model, SHAPE)
    assert torch.equal(state, torch.random.get_rng_state())
    # 8 blocks each kept with probability 1/2 under two seeds: they agree on all with probability 2**-8.
    assert any(entry.startswith("residual.branch blocks.") for entry in differing), differing
    note = seed_note(differing)
    assert note is not None and "random seed" in note and "eval mode" in note


def test_a_model_without_draws_is_traced_once_and_stable():
    model = StochasticDepthNet().eval()
    _traced, differing = trace_checking_seeds(model, SHAPE)
    assert differing == [] and seed_note(differing) is None


def test_sites_command_reports_seed_dependent_sites(monkeypatch):
    from typer.testing import CliRunner

    from plugsurgeon.cli.app import app

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    result = CliRunner().invoke(app, ["sites", "tests.sites.test_seeds:StochasticDepthNet", "--input-shape", "1,3,32,32"])
    assert result.exit_code == 0, result.output
    assert "depend on the random seed" in " ".join(result.output.split())
