"""The search: a known optimum found, the Pareto front exact, failures recorded, a stopped study resumed."""

import itertools

import pytest

import plugsurgeon as ps
from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.sweep.study import sweep
from tests.sweep.tiny import (
    WEIGHTS,
    FourStages,
    one_thread,  # noqa: F401 - the fixture, used below
    score,
    stages_with,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 3, 32, 32)
SPACE = {"sweep": {"name": "stages", "steps": [{"plugin": "se", "at": "residual.branch", "stages": {"subsets_of": [2, 3, 4, 5]}}]}}


def test_the_known_optimum_is_found_and_the_pareto_front_is_the_non_dominated_set(tmp_path):
    model = FourStages()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = sweep(model, SPACE, score, costs=["params"], output=tmp_path, input_shape=SHAPE, on_trial=seen.append)
    assert all(before[k].equal(v) for k, v in model.state_dict().items()) and not stages_with(model)  # never changed
    subsets = [set(c) for n in range(1, 5) for c in itertools.combinations(WEIGHTS, n)]
    best = max(subsets, key=lambda s: sum(WEIGHTS[x] for x in s))
    assert best == {2, 4, 5}
    assert len(result.candidates) == 15 and len(seen) == 16  # the grid's empty subset is pruned, not a candidate
    assert set(result.best.recipe["steps"][0]["where"]["stages"]) == best
    assert result.best.values["score"] == 4.5
    # Non-dominated by brute force: no other candidate scores at least as high with at most as many parameters, one strictly.
    rows = result.candidates
    front = {r.number for r in rows if not any(
        o.values["score"] >= r.values["score"] and o.values["params"] <= r.values["params"]
        and (o.values["score"] > r.values["score"] or o.values["params"] < r.values["params"]) for o in rows)}
    assert {r.number for r in result.pareto} == front and len(front) > 1
    written = ps.load_recipe(tmp_path / "best.yaml")
    assert stages_with(ps.apply(FourStages(), written, input_shape=SHAPE).model) == best
    assert (tmp_path / "results.json").is_file() and len(list((tmp_path / "recipes").glob("*.yaml"))) == 15
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_failing_candidates_are_recorded_and_the_sweep_goes_on(tmp_path):
    def fragile(model):
        if 3 in stages_with(model):
            raise RuntimeError("stage 3 breaks my evaluation")
        return score(model)

    space = {"sweep": {"steps": [{"plugin": "se", "at": "residual.branch", "stages": {"subsets_of": [2, 3, 4]}}]}}
    result = sweep(FourStages(), space, fragile, output=tmp_path / "a", input_shape=SHAPE)
    failed = [r for r in result.rows if r.state == "FAIL"]
    assert len(failed) == 4 and all(r.error == "RuntimeError: stage 3 breaks my evaluation" for r in failed)  # subsets holding 3
    assert len(result.candidates) == 3 and result.best.values["score"] == WEIGHTS[2] + WEIGHTS[4]
    # A placement the model refuses (stage 2 has 16 channels, none passes min_channels 32) is a failed trial with the reason.
    space = {"sweep": {"steps": [{"plugin": "se", "at": "residual.branch", "stages": {"subsets_of": [2, 3]},
                                  "where": {"min_channels": 32}}]}}
    result = sweep(FourStages(), space, score, output=tmp_path / "b", input_shape=SHAPE)
    refused = [r for r in result.rows if r.state == "FAIL"]
    assert len(refused) == 1 and "min_channels" in refused[0].error
    assert len(result.candidates) == 1  # {3} and {2, 3} are the same edits
    assert [r.duplicate_of is not None for r in result.rows if r.state == "COMPLETE"].count(True) == 1


def test_a_sweep_resumes_without_repeating_finished_trials(tmp_path):
    evaluated = []

    def counted(model):
        evaluated.append(frozenset(stages_with(model)))
        return score(model)

    first = sweep(FourStages(), SPACE, counted, output=tmp_path, input_shape=SHAPE, trials=6)
    assert len(first.rows) == 6
    second = sweep(FourStages(), SPACE, counted, output=tmp_path, input_shape=SHAPE)
    assert len(second.rows) == 16 and len(second.candidates) == 15
    assert len(evaluated) == 15 and len(set(evaluated)) == 15  # every candidate once, over both runs
    with pytest.raises(PlugsurgeonError, match="other space"):
        other = {"sweep": {"name": "stages", "steps": [{"plugin": "eca", "at": "residual.branch"}]}}
        sweep(FourStages(), other, counted, output=tmp_path, input_shape=SHAPE)


def test_costs_only_and_multi_objective_metrics(tmp_path):
    def two(model):
        return {"score": score(model), "loss": -score(model)}

    result = sweep(FourStages(), SPACE, two, metrics={"score": "maximize", "loss": "minimize"}, costs=["macs", "latency"],
                   output=tmp_path, input_shape=SHAPE, trials=4, sampler="random", seed=0)
    assert [o.name for o in result.objectives] == ["score", "loss", "macs", "latency"]
    assert all(r.values["latency"] > 0 and r.values["macs"] > 0 for r in result.candidates)
    with pytest.raises(PlugsurgeonError, match="nothing to optimise"):
        sweep(FourStages(), SPACE, output=tmp_path / "x", input_shape=SHAPE)
    with pytest.raises(PlugsurgeonError, match="unknown cost 'flops'"):
        sweep(FourStages(), SPACE, costs=["flops"], output=tmp_path / "x", input_shape=SHAPE)
