"""Malformed recipes are user errors that name the field and the file."""

import json

import pytest
from pydantic import ValidationError

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


def _bomb(levels: int = 9) -> str:
    """A billion-laughs YAML used as one plugin argument: 9 ** levels strings once expanded."""
    names = "abcdefghij"
    items = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    items += [f"&{names[i]} [" + ",".join(["*" + names[i - 1]] * 9) + "]" for i in range(1, levels)]
    return f"name: bomb\nsteps:\n  - plugin: coordconv\n    at: conv\n    args:\n      with_r: [{', '.join(items)}]\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_bomb(), "uses the YAML anchor &a (line 6): recipes refuse anchors and aliases"),
        ("name: x\nsteps:\n  - &s {plugin: se, at: residual}\n  - *s\n", "uses the YAML anchor &s (line 3)"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    args: *undefined\n", "uses the YAML alias *undefined (line 5)"),
        ("name: x\nsteps:\n  - plugin: coordconv\n    at: conv\n    args: {with_r: !!binary aGVsbG8=}\n",
         "uses the YAML tag !!binary (line 5): recipes hold plain values only"),
        ("name: !!str x\nsteps:\n  - plugin: se\n    at: residual\n", "uses the YAML tag !!str (line 1)"),
        ("!!python/object/apply:os.system ['true']\n", "uses the YAML tag !!python/object/apply:os.system (line 1)"),
        ("name: x\nsteps:\n  - plugin: se\n    at: residual\n    args: {reduction: 4, reduction: 64}\n",
         "is not valid YAML at line 5: duplicate key 'reduction'"),
        ("name: x\nsteps: " + "[" * 40 + "]" * 40 + "\n", "nests deeper than 16 levels (line 2)"),
        ("name: x\n" + "# padding\n" * 7000 + "steps: []\n", "is larger than 64 KiB, more than any recipe needs"),
    ],
)
def test_yaml_beyond_plain_data_is_refused_before_it_is_built(text, expected):
    with pytest.raises(ps.RecipeError) as error:
        ps.parse_recipe(text, source="mine.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("mine.yaml ")


def test_an_oversized_recipe_file_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "#" * (8 << 20) + "\nsteps: []\n")
    with pytest.raises(ps.RecipeError, match="is larger than 64 KiB"):
        ps.load_recipe(path)


def test_plain_scalars_are_json_types_only():
    recipe = ps.parse_recipe("name: 2024-01-01\nsteps:\n  - plugin: se\n    at: residual\n")
    assert recipe.name == "2024-01-01"  # YAML 1.1 would make it a date


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("{with_r: 'false'}", "field 'steps.0.args.with_r': plugin 'coordconv': argument 'with_r' = 'false': Input should be a valid boolean"),
        ("{with_r: 1}", "argument 'with_r' = 1: Input should be a valid boolean"),
        ("{with_r: [1]}", "argument 'with_r' = [1]: Input should be a valid boolean"),
    ],
)
def test_boolean_arguments_are_strict(args, expected):
    with pytest.raises(ps.RecipeError) as error:
        ps.parse_recipe(f"name: x\nsteps:\n  - plugin: coordconv\n    at: conv\n    args: {args}\n", source="mine.yaml")
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("plugin", "args", "expected"),
    [
        ("se", "{reduction: true}", "field 'steps.0.args.reduction': plugin 'se': argument 'reduction' = True: Input should be a valid integer"),
        ("se", "{reduction: 2.0}", "argument 'reduction' = 2.0: Input should be a valid integer"),
        ("se", "{reduction: '16'}", "argument 'reduction' = '16': Input should be a valid integer"),
        ("se", "{min_hidden: 100000000}", "field 'steps.0.args.min_hidden': plugin 'se': argument 'min_hidden' = 100000000: "
                                          "Input should be less than or equal to 65536"),
        ("se", "{reduction: 0}", "argument 'reduction' = 0: Input should be greater than or equal to 1"),
        ("eca", "{kernel_size: 1000000001}", "argument 'kernel_size' = 1000000001: Input should be less than or equal to 1023"),
        ("eca", "{kernel_size: 4}", "argument 'kernel_size' = 4: must be odd (to keep the map size), got 4"),
        ("eca", "{gamma: 0.0}", "argument 'gamma' = 0.0: Input should be greater than or equal to 0.5"),
        ("dcnv2", "{mask_scale: .nan}", "argument 'mask_scale' = nan: Input should be a finite number"),
        ("dcnv2", "{mask_scale: .inf}", "argument 'mask_scale' = inf: Input should be a finite number"),
        ("dcnv2", "{mask_scale: -.inf}", "argument 'mask_scale' = -inf: Input should be a finite number"),
        ("mixconv", "{kernels: [3, 5, 7, 9, 11, 13, 15, 17, 19]}", "argument 'kernels' = [3, 5, 7, 9, 11, 13, ...]: Tuple should have at most 8 items"),
        ("mixconv", "{kernels: [3, true]}", "argument 'kernels' item 1 = True: Input should be a valid integer"),
        ("mixconv", "{split: random}", "argument 'split' = 'random': Input should be 'equal' or 'exponential'"),
        ("sk", "{paths: 1000}", "argument 'paths' = 1000: Input should be less than or equal to 8"),
    ],
)
def test_numeric_arguments_are_typed_finite_and_in_range(plugin, args, expected):
    with pytest.raises(ps.RecipeError) as error:
        ps.parse_recipe(f"name: x\nsteps:\n  - plugin: {plugin}\n    at: conv\n    args: {args}\n", source="mine.yaml")
    assert expected in str(error.value)


def test_recorded_recipes_validate_against_the_same_argument_models():
    # A manifest stores recipes as JSON (tuples become lists) and validates them again on load.
    recipe = ps.parse_recipe("name: x\nsteps:\n  - plugin: mixconv\n    at: conv\n    args: {kernels: [3, 5]}\n")
    recorded = json.loads(json.dumps(recipe.model_dump(mode="json")))
    assert ps.Recipe(**recorded).steps[0].plugin_args().kernels == (3, 5)
    recorded["steps"][0]["args"] = {"kernels": [3, 5], "split": "exponential", "bogus": float("nan")}
    with pytest.raises(ValidationError, match=r"plugin 'mixconv' has no argument\(s\) \['bogus'\]"):
        ps.Recipe(**recorded)
    recorded["steps"][0]["args"] = {"kernels": [float("nan")]}
    with pytest.raises(ValidationError, match=r"argument 'kernels' item 0 = nan: Input should be a valid integer"):
        ps.Recipe(**recorded)


def test_step_arguments_resolve_with_defaults():
    step = ps.parse_recipe(GOOD).steps[0]
    assert step.plugin_args().kwargs() == {"reduction": 8, "min_hidden": 1}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("\ufb01lter", "is not in NFKC form; write 'filter'"),
        ("graph", "is a name torch modules use themselves"),
        ("meta", "is a name torch modules use themselves"),
        ("code", "is a name torch modules use themselves"),
        ("forward", "is a name torch modules use themselves"),
        ("_hidden", "is a name torch modules use themselves (or private)"),
        ("class", "'class' is not a valid attribute name"),
    ],
)
def test_step_names_that_would_shadow_or_alias_are_refused(name, expected):
    with pytest.raises(ps.RecipeError) as error:
        ps.parse_recipe(f"name: x\nsteps:\n  - plugin: se\n    at: residual\n    name: \"{name}\"\n", source="mine.yaml")
    assert "field 'steps.0.name'" in str(error.value) and expected in str(error.value)


def test_a_mapping_is_a_recipe_and_anything_else_is_refused_with_a_message():
    import plugsurgeon as ps
    from plugsurgeon.surgery.recipe import load_recipe

    recipe = load_recipe({"name": "mine", "steps": [{"plugin": "se", "at": "residual.branch"}]})
    assert recipe.name == "mine" and recipe.steps[0].plugin == "se"
    with pytest.raises(ps.RecipeError, match="field 'steps'"):
        load_recipe({"name": "mine", "steps": []})
    with pytest.raises(ps.RecipeError, match="not int"):
        load_recipe(42)
    # A key the format does not have is refused by name, even one the parser uses itself.
    with pytest.raises(ps.RecipeError):
        load_recipe({"name": "mine", "steps": [{"plugin": "se", "at": "residual.branch"}], "bogus": 1})
