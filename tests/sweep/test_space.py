"""The space file: validated against the registry and the model before anything runs; dimensions and resolution."""

import pytest

import plugsurgeon as ps
from plugsurgeon.errors import PlugsurgeonError, RecipeError
from plugsurgeon.sweep.space import check_model, dimensions, grid, load_space, resolve
from tests.sweep.tiny import FourStages


def space(**step):
    return {"sweep": {"name": "s", "steps": [{"plugin": "se", "at": "residual.branch", **step}]}}


def test_a_file_is_read_as_plain_yaml_under_sweep(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("sweep:\n  name: att\n  steps:\n    - plugin: [se, cbam]\n      at: residual.branch\n"
                    "      stages: {subsets_of: [4, 5]}\n      args: {reduction: [8, 16]}\n")
    loaded = load_space(path)
    assert loaded.name == "att" and loaded.steps[0].plugins() == ["se", "cbam"]
    path.write_text("sweep: &a\n  steps: []\n")
    with pytest.raises(RecipeError, match="anchor"):
        load_space(path)


@pytest.mark.parametrize(("step", "message"), [
    ({"plugin": ["se", "cbma"]}, "cbma"),  # an unknown plugin, named
    ({"args": {"reduction": [8, 0]}}, r"reduction.*>= 1|reduction.*greater"),  # out of the declared bounds
    ({"args": {"reduction": {"low": 4, "high": 100000}}}, "reduction"),  # a range's end out of bounds
    ({"args": {"kernel_size": [3]}}, "no plugin of \\['se'\\] takes argument 'kernel_size'"),
    ({"density": ["every", "often"]}, "density"),
    ({"stages": [[4, 5], []]}, "may not be empty"),
    ({"at": "residual.branchh"}, "residual.branchh"),
])
def test_bad_space_files_get_one_message_naming_the_problem(step, message):
    with pytest.raises(RecipeError, match=message):
        load_space(space(**step))


def test_a_stage_the_model_lacks_is_refused_before_anything_runs():
    model = FourStages()
    loaded = load_space(space(stages={"subsets_of": [4, 5, 6]}))
    with pytest.raises(RecipeError, match="no residual.branch site at stage 6.*stages \\[2, 3, 4, 5\\]"):
        check_model(loaded, ps.trace(model, (1, 3, 32, 32)), "FourStages")


def test_dimensions_grid_and_resolution():
    loaded = load_space(space(plugin=["se", "eca"], stages={"subsets_of": [4, 5]}, density=["every", "last"],
                              args={"reduction": {"low": 8, "high": 16, "step": 8}}))
    names = [d.name for d in dimensions(loaded)]
    assert names == ["step1.plugin", "step1.stage4", "step1.stage5", "step1.density", "step1.reduction"]
    # 2 plugins x 3 non-empty subsets x 2 densities x 2 reductions; the empty subset is no candidate.
    assert len(grid(loaded)) == 2 * 3 * 2 * 2
    recipe = resolve(loaded, {"step1.plugin": "eca", "step1.stage4": False, "step1.stage5": True, "step1.density": "last",
                              "step1.reduction": 8})
    step = recipe.steps[0]
    assert (step.plugin, step.where.stages, step.where.last, step.args) == ("eca", [5], 1, {})  # eca takes no reduction
    with pytest.raises(PlugsurgeonError, match="continuous"):
        grid(load_space(space(args={"reduction": {"low": 2, "high": 16, "log": True}})))


def test_an_optional_step_may_be_left_out():
    loaded = load_space({"sweep": {"steps": [{"plugin": "se", "at": "residual.branch", "optional": True}]}})
    assert resolve(loaded, {"step1.use": False}) is None
    assert len(grid(loaded)) == 2
