"""``ps.plan``/``ps.apply`` on a model whose forward draws random numbers in Python (a block skipped at random in
train mode): fx records the branch one draw chose, so the sites a plan edits can change with the seed, and the
edited forward would keep that one branch. A second trace from another seed finds it: a plan whose chosen sites
differ is refused, a difference elsewhere is a note. A model that draws nothing is traced once, and the caller's
random state is never changed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.graph import trace as trace_module

SHAPE = (1, 3, 32, 32)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class LayerDropNet(nn.Module):
    """Blocks dropped at random in train mode by the loop that runs them (LayerDrop): the blocks' own
    forwards are plain, so surgery may edit them; which of them a trace sees depends on the draws."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([Block() for _ in range(8)])

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            if self.training and torch.rand(1).item() < 0.5:
                continue
            x = block(x)
        return x.mean((2, 3))


def _recipe(**step):
    return {"name": "t", "steps": [step]}


@pytest.fixture
def traces(monkeypatch):
    """How many times a model is traced (every ps.trace goes through one _PartTracer.run)."""
    count = [0]
    run = trace_module._PartTracer.run

    def counted(self):
        count[0] += 1
        return run(self)

    monkeypatch.setattr(trace_module._PartTracer, "run", counted)
    return count


def test_a_plan_on_seed_dependent_sites_is_refused_and_the_callers_state_kept(traces):
    model = LayerDropNet()  # train mode: each block skipped with probability 1/2
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with pytest.raises(ps.SiteError, match="depend on the random seed") as refused:
        ps.plan(model, _recipe(plugin="se", at="residual.branch"), input_shape=SHAPE)
    assert traces[0] == 2
    assert torch.equal(state, torch.random.get_rng_state())  # neither trace moved the caller's generator
    assert "model.eval()" in refused.value.hint and "--" not in refused.value.hint  # Python terms
    # The same for apply, and the caller's model is left as it was.
    with pytest.raises(ps.SiteError, match="depend on the random seed"):
        ps.apply(model, _recipe(plugin="se", at="residual.branch"), input_shape=SHAPE, inplace=True)
    assert not any(name.endswith("se") for name, _ in model.named_modules()) and model.training
    assert torch.equal(state, torch.random.get_rng_state())


def test_a_seed_dependence_away_from_the_plan_is_a_note(traces):
    model = LayerDropNet()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    # The stem is traced the same whatever the draws; the blocks' sites are not.
    traced = ps.trace(model, SHAPE)
    planned = ps.plan(model, _recipe(plugin="acnet", at="conv", where={"include": ["stem"]}), traced=traced)
    assert traces[0] == 2 and torch.equal(state, torch.random.get_rng_state())
    ps.plan(model, _recipe(plugin="acnet", at="conv", where={"include": ["stem"]}), traced=traced)
    assert traces[0] == 2  # the second trace of a trace is made once (a sweep plans many recipes on one trace)
    result = ps.apply_plan(planned)  # (its new modules' weights are drawn from the caller's generator, as any module's)
    assert [e.site for e in result.report.edits] == ["stem"]
    assert any("depend on the random seed" in note and "blocks." in note for note in result.report.notes), result.report.notes


def test_a_model_that_draws_nothing_is_traced_once(traces):
    model = LayerDropNet().eval()
    result = ps.apply(model, _recipe(plugin="se", at="residual.branch"), input_shape=SHAPE)
    assert traces[0] == 1 and len(result.report.edits) == 8
    assert not any("random seed" in note for note in result.report.notes)
    # A trace passed in records that it drew nothing: no second trace either.
    traced = ps.trace(model, SHAPE)
    ps.plan(model, _recipe(plugin="se", at="residual.branch"), traced=traced)
    assert traces[0] == 2


def test_a_trace_records_its_draws_and_leaves_the_callers_state():
    model = LayerDropNet()
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    assert ps.trace(model, SHAPE).drew_random
    assert not ps.trace(model.eval(), SHAPE).drew_random
    assert torch.equal(state, torch.random.get_rng_state())


def test_the_command_line_refuses_it_in_flags(monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    from plugsurgeon.cli.app import app

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    result = CliRunner().invoke(app, ["apply", "tests.surgery.test_seeds:LayerDropNet", "--recipe", "se", "--input-shape", "1,3,32,32"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "depend on the random seed" in text and "where: {exclude: [...]}" in text and "model.eval()" not in text
