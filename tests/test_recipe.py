"""Malformed recipes are user errors that name the field and the file."""

import pytest

import plugsurgeon as ps

GOOD = """
name: mine
steps:
  - plugin: se
    at: residual.branch
    where: {stages: [3]}
    args: {reduction: 8}
"""


def test_good_recipe_parses():
    recipe = ps.parse_recipe(GOOD)
    assert recipe.steps[0].args == {"reduction": 8}
    assert recipe.steps[0].where.stages == [3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    colour: red\n", "field 'steps.0.colour': unknown field"),
        ("name: x\nsteps: []\n", "field 'steps'"),
        ("name: x\nsteps:\n  - plugin: sse\n    at: residual\n", "unknown plugin 'sse'; did you mean"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residul\n", "unknown site role 'residul'"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    args: {channels: 8}\n", "come from the graph"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    args: {ratio: 8}\n", "has no argument(s) ['ratio']"),
        ("name: x\nsteps:\n  - plugin: acnet\n    at: residual.branch\n", "takes conv sites, not 'residual.branch'"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    where: {stages: two}\n", "field 'steps.0.where.stages'"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    where: {stage: [2]}\n", "field 'steps.0.where.stage': unknown field"),
        ("name: [unclosed\n", "is not valid YAML"),
        ("- just a list\n", "must be a mapping"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    name: not-an-identifier\n", "not a valid attribute name"),
    ],
)
def test_malformed_recipes_name_the_problem(text, expected):
    with pytest.raises(ps.RecipeError) as error:
        ps.parse_recipe(text, source="mine.yaml")
    assert expected in str(error.value)
    assert "mine.yaml" in str(error.value)


def test_yaml_is_safe_loaded(tmp_path):
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ps.RecipeError):
        ps.parse_recipe(text)
    assert not marker.exists()


def test_load_recipe_by_name_path_and_errors(tmp_path):
    assert ps.load_recipe("cbam").name == "cbam"
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    assert ps.load_recipe(path).name == "mine"
    assert ps.load_recipe(str(path)).source == str(path)
    with pytest.raises(ps.UnknownNameError, match="did you mean 'cbam'"):
        ps.load_recipe("cbm")
    with pytest.raises(ps.RecipeError, match="does not exist"):
        ps.load_recipe(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ps.RecipeError):
        ps.load_recipe(binary)


def test_every_builtin_recipe_is_valid_and_described():
    recipes = ps.builtin_recipes()
    assert {"cbam", "se", "maxblurpool", "antialias", "acnet"} <= set(recipes)
    for name, recipe in recipes.items():
        assert recipe.description, name
        for step in recipe.steps:
            assert ps.get_plugin(step.plugin).fits(step.role())
