"""A mistake in ``--recipe`` (an unknown name, a missing file, YAML that does not parse or is not a
recipe's mapping) is reported before torch is imported: it took 12-25 s on a laptop, the time to load
torch and build the model, to say "unknown recipe 'cbma'"."""

from __future__ import annotations

from tests.cli.torch_free import run_cases, write_recipes


def test_recipe_mistakes_are_reported_before_torch_loads(tmp_path):
    files = {
        "unparsable": "steps: [\n",
        "alias": "name: a\nsteps: &s [{plugin: se, at: residual.branch}]\nmore: *s\n",
        "list": "- plugin: se\n",
    }
    specs = ["cbma", str(tmp_path / "missing.yaml"), *write_recipes(tmp_path, files).values()]
    cases = [[command, "resnet18", "--recipe", spec] for command in ("apply", "show") for spec in specs]
    cases.append(["apply", "resnet18", "--recipe", "se", "--recipe", "cbma"])  # the second of a chain too
    seen, ran = run_cases(cases)
    assert seen == [[1, False]] * len(cases), list(zip(cases, seen, strict=False))
    messages = ran.stderr
    assert "unknown recipe 'cbma'; did you mean 'cbam'" in messages
    assert "missing.yaml' does not exist" in messages and "is not valid YAML at line 2" in messages
    assert "refuse anchors and aliases" in messages and "must be a mapping with 'name' and 'steps'" in messages
