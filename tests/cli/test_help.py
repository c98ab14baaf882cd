"""Every role and every selector is documented with an example, in `sites --help` and in the user guide (docs/guide.md),
from the roles the code knows; --where tries a step's selectors on a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli import helptext
from plugsurgeon.cli.app import app
from plugsurgeon.sites.select import Where
from plugsurgeon.sites.site import ALIASES, ROLES

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
TINY = "tests.nets:TinyResNet"
SMALL = ("--input-shape", "1,3,32,32")


def invoke(*args, width: int = 200):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(width)})


def flat(text: str) -> str:
    """Help text without its wrapping and panel borders, for finding phrases."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_every_role_has_an_example_and_every_example_a_role():
    missing = sorted(set(ROLES) - set(helptext.ROLE_EXAMPLES))
    assert not missing, f"roles without an example in plugsurgeon/cli/helptext.py ROLE_EXAMPLES: {missing}"
    assert set(helptext.ROLE_EXAMPLES) <= set(ROLES), sorted(set(helptext.ROLE_EXAMPLES) - set(ROLES))


def test_the_selector_list_is_the_where_model():
    assert list(helptext.SELECTORS) and set(helptext.SELECTORS) == set(Where.model_fields), (
        "plugsurgeon/cli/helptext.py SELECTORS must list exactly the fields of sites.select.Where"
    )
    for name, (example, _meaning) in helptext.SELECTORS.items():
        assert name in example, name


def test_sites_help_lists_every_role_alias_and_selector_with_its_example():
    result = invoke("sites", "--help")
    assert result.exit_code == 0
    text = flat(result.stdout)
    kind = flat(helptext.kind_help())
    for role in ROLES:
        assert f" {role} " in text and role in kind, role
        model, path = helptext.ROLE_EXAMPLES[role]
        assert f"e.g. {path} in {model}" in text, role
    for family in ("residual", "downsample", "neck"):
        assert family in helptext.families() and family in kind
    for alias in ALIASES:
        assert alias in kind and f" {alias} " in text
    for example, _meaning in helptext.SELECTORS.values():
        assert flat(example) in text, example


def test_user_guide_documents_every_role_and_selector_with_an_example():
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    for role in ROLES:
        assert f"`{role}`" in guide, f"docs/guide.md does not document the role {role}"
        model, path = helptext.ROLE_EXAMPLES[role]
        assert f"`{path}`" in guide, f"docs/guide.md has no example site for {role} ({path} in {model})"
    for name, (example, _meaning) in helptext.SELECTORS.items():
        assert f"`{example}`" in guide, f"docs/guide.md has no example of the selector {name}: `{example}`"


def test_role_examples_are_sites_the_roles_find():
    import plugsurgeon as ps

    by_model: dict[str, list[str]] = {}
    for role, (model, _path) in helptext.ROLE_EXAMPLES.items():
        by_model.setdefault(model, []).append(role)
    traced = ps.trace(ps.load_model("resnet50"), (1, 3, 64, 64))
    for role in by_model.pop("resnet50"):
        paths = [s.path for s in ps.find_sites(traced, role)]
        assert helptext.ROLE_EXAMPLES[role][1] in paths, (role, paths[:8])
    assert set(by_model) <= {"fasterrcnn_resnet50_fpn"}  # checked under -m slow below


@pytest.mark.slow
def test_detector_role_examples_are_sites_the_roles_find():
    import plugsurgeon as ps

    traced = ps.trace(ps.load_model("fasterrcnn_resnet50_fpn"), (1, 3, 64, 64))
    for role, (model, path) in helptext.ROLE_EXAMPLES.items():
        if model == "fasterrcnn_resnet50_fpn":
            assert path in [s.path for s in ps.find_sites(traced, role)], role


def test_where_lists_the_sites_a_step_would_take():
    import plugsurgeon as ps

    result = invoke("sites", TINY, *SMALL, "--kind", "conv3x3", "--where", "{last: 2}", "--json")
    assert result.exit_code == 0, result.output
    listed = [s["path"] for s in json.loads(result.stdout)]
    recipe = ps.parse_recipe("name: t\nsteps:\n  - plugin: acnet\n    at: conv3x3\n    where: {last: 2}\n")
    planned = ps.plan(ps.load_model(TINY), recipe, input_shape=(1, 3, 32, 32))
    assert listed == [e.site.path for e in planned.edits] and len(listed) == 2
    every = invoke("sites", TINY, *SMALL, "--kind", "conv", "--where", "{every: 2, offset: 1}", "--json")
    all_convs = invoke("sites", TINY, *SMALL, "--kind", "conv", "--json")
    assert json.loads(every.stdout) == json.loads(all_convs.stdout)[1::2]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("{kernal: 3}", "'kernal': unknown selector"),
        ("{kernel: 0}", "'kernel': Input should be greater than or equal to 1"),
        ("[3]", "is not a mapping of selectors"),
        ("{kernel: [", "is not YAML"),
    ],
)
def test_bad_where_is_one_message_before_the_model_is_built(where, message):
    result = invoke("sites", "no_such_model", "--where", where)
    assert (
        result.exit_code == 1
        and message in result.stderr
        and "hint:" in result.stderr
        and "Traceback" not in result.output
    )
