"""Roles are data: one table of Role records (plugsurgeon/sites/roles.py) from which ps.ROLES, the aliases,
find_sites, the engine's placement of an edit, `plugsurgeon sites --help` and docs/roles.md follow; and a
new role is one Role record plus one locator function, with no other file touched (the toy role below)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.cli import helptext
from plugsurgeon.sites.find import locate
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.locators import make_site, residual_merges
from plugsurgeon.sites.roles import (
    BUILTIN_ROLES,
    Example,
    Placement,
    Role,
    RoleTable,
    active_roles,
    placement_of,
    use_roles,
)
from plugsurgeon.sites.site import ALIASES, ROLES, Site, known_role
from tests.nets import TinyFPN, TinyResNet, TinyUNet

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 3, 32, 32)


# -- the toy role: ONE Role record + ONE locator function, in an extension of the table -------------------
def fork_sites(view: GraphView) -> list[Site]:
    """The value each residual block reads: where its body and its shortcut start."""
    return [make_site(view, "residual.input", merge.fork) for merge in residual_merges(view)]


TOY = Role("residual.input", "the value a residual block reads, where its body and its shortcut fork", fork_sites,
           example=Example("tests.nets:TinyResNet", "pool"))
TOY_TABLE = BUILTIN_ROLES.extended(TOY)
TOY_RECIPE = "name: toy\nsteps:\n  - plugin: se\n    at: residual.input\n"
FORKS = ["pool", "layer1.0.relu", "layer1.1.relu", "layer2.0.relu"]  # the stem's pool, then each block's output


def test_a_toy_role_is_found_from_its_table_entry_alone():
    assert [s.path for s in ps.find_sites(TinyResNet(), "residual.input", input_shape=SHAPE, roles=TOY_TABLE)] == FORKS
    # A family takes its new variant: `residual` now means three roles (a block's output is the next one's input).
    family = ps.find_sites(TinyResNet(), "residual", input_shape=SHAPE, roles=TOY_TABLE)
    assert [(s.role, s.path) for s in family][:4] == [
        ("residual.input", "pool"), ("residual.branch", "layer1.0.bn2"),
        ("residual.input", "layer1.0.relu"), ("residual.output", "layer1.0.relu")]
    assert Counter(s.role for s in family) == {"residual.input": 4, "residual.branch": 4, "residual.output": 4}
    everything = {s.role for s in ps.find_sites(TinyResNet(), input_shape=SHAPE, roles=TOY_TABLE)}
    assert "residual.input" in everything and "backbone" in everything
    # The built-in table is untouched: nothing was registered anywhere.
    assert "residual.input" not in BUILTIN_ROLES and "residual.input" not in ps.ROLES
    with pytest.raises(ps.UnknownNameError, match="unknown site role 'residual.input'"):
        ps.find_sites(TinyResNet(), "residual.input", input_shape=SHAPE)


def test_a_recipe_step_at_a_toy_role_applies():
    with pytest.raises(ps.RecipeError, match="residual.input"):  # unknown outside its table
        ps.parse_recipe(TOY_RECIPE)
    model = TinyResNet().eval()
    x = torch.randn(SHAPE)
    with use_roles(TOY_TABLE):
        assert ps.ROLES["residual.input"] == TOY.description and known_role("residual.input")
        result = ps.apply(model, ps.parse_recipe(TOY_RECIPE), input_shape=SHAPE)
    edits = result.report.edits
    assert [(e.role, e.site) for e in edits] == [("residual.input", path) for path in FORKS]
    # Default placement: the innermost module forward that computes the fork.
    assert [e.module for e in edits] == ["se", "layer1.0.se", "layer1.1.se", "layer2.0.se"]
    assert result.model(x).shape == model(x).shape
    assert active_roles() is BUILTIN_ROLES and "residual.input" not in ps.ROLES  # the block is over


def test_a_toy_roles_placement_decides_where_its_edits_go():
    outermost = BUILTIN_ROLES.extended(Role(TOY.name, TOY.description, fork_sites, placement=Placement(outermost_first=True)))
    owners = {}
    for name, table in (("innermost", TOY_TABLE), ("outermost", outermost)):
        with use_roles(table):
            owners[name] = [e.owner for e in ps.plan(TinyResNet(), ps.parse_recipe(TOY_RECIPE), input_shape=SHAPE).edits]
    assert owners == {"innermost": ["", "layer1.0", "layer1.1", "layer2.0"], "outermost": ["", "layer1", "", "layer2"]}


def test_a_new_role_with_no_family():
    def activation_sites(view: GraphView) -> list[Site]:
        return [make_site(view, "activation", n) for n in view.nodes if view.is_activation(n)]

    table = BUILTIN_ROLES.extended(Role("activation", "the output of an activation", activation_sites))
    found = ps.find_sites(TinyResNet(), "activation", input_shape=SHAPE, roles=table)
    assert [s.path for s in found][:3] == ["stem.2", "layer1.0.relu", "layer1.0.relu"]  # one per call of a shared ReLU
    assert "activation" in helptext.sites_help(table) and "activation" in helptext.kind_help(table)
    assert "`activation`" in table.markdown() and "`activation`" not in BUILTIN_ROLES.markdown()


def test_a_locator_must_return_its_own_roles_sites():
    def wrong(view: GraphView) -> list[Site]:
        return [make_site(view, "conv", n) for n in view.nodes if view.conv(n) is not None]

    table = BUILTIN_ROLES.extended(Role("mislabelled", "a locator that returns conv sites", wrong))
    with pytest.raises(ValueError, match="the locator of role 'mislabelled' returned sites of \\['conv'\\]"):
        ps.find_sites(TinyResNet(), "mislabelled", input_shape=SHAPE, roles=table)


def test_a_model_wide_toy_role_gets_every_part():
    def first_map(views) -> list[tuple[int, Site]]:
        view = views[0]
        node = next(n for n in view.nodes if view.conv(n) is not None)
        return [(0, make_site(view, "stem", node))]

    table = BUILTIN_ROLES.extended(Role("stem", "the model's first conv", first_map, model_wide=True))
    assert [s.path for s in ps.find_sites(TinyResNet(), "stem", input_shape=SHAPE, roles=table)] == ["stem.0"]


# -- the table itself ---------------------------------------------------------------------------------------
def test_the_built_in_table():
    assert list(BUILTIN_ROLES) == [
        "residual.branch", "residual.output", "conv", "downsample.pool", "downsample.conv", "downsample.shortcut",
        "downsample.unit", "stage", "backbone", "neck.level", "neck.merge", "upsample"]
    assert {name for name, role in BUILTIN_ROLES.items() if role.model_wide} == {"backbone", "stage", "neck.level"}
    assert all(role.example is not None for role in BUILTIN_ROLES.values())
    assert BUILTIN_ROLES.families() == ["downsample", "neck", "residual"]
    # The engine's placement policy, once hard-coded on these two names in surgery/plan.py.
    special = {name: role.placement for name, role in BUILTIN_ROLES.items() if role.placement != Placement()}
    assert special == {"residual.branch": Placement(outermost_first=True), "neck.merge": Placement(where_passed_in=True)}
    assert placement_of("residual.branch").outermost_first and placement_of("neck.merge").where_passed_in
    assert placement_of("no.such.role") == Placement()


def test_public_roles_and_aliases_are_the_table():
    assert dict(ROLES) == BUILTIN_ROLES.descriptions() and ROLES == dict(ps.ROLES)
    assert list(ROLES) == list(BUILTIN_ROLES) and ROLES.get("nope", "nope") == "nope"
    assert dict(ALIASES) == {"conv3x3": ("conv", {"kernel": 3}), "depthwise": ("conv", {"depthwise": True})}
    with pytest.raises(TypeError):
        ps.ROLES["mine"] = "a role of my own"  # type: ignore[index]  # read-only: extend the table instead
    assert helptext.ROLE_EXAMPLES == {name: tuple(role.example) for name, role in BUILTIN_ROLES.items() if role.example}


def test_every_role_is_located_by_its_own_locator():
    seen: set[str] = set()
    for model in (TinyResNet(), TinyFPN(), TinyUNet()):
        traced = ps.trace(model.eval(), (1, 3, 64, 64))
        for name in BUILTIN_ROLES:
            found = locate(traced, name)
            assert {s.role for s in found} <= {name}
            seen |= {s.role for s in found}
        assert locate(traced) == sorted(locate(traced), key=lambda s: (traced.parts.index(traced.part(s.part)), s.order, s.role))
    assert seen == set(BUILTIN_ROLES)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RoleTable([Role("a", "x", fork_sites), Role("a", "y", fork_sites)]), "'a' is in the table twice"),
        (lambda: Role("Neck.Level", "x", fork_sites), "not lowercase words"),
        (lambda: Role("edge", " ", fork_sites), "needs a description"),
        (lambda: BUILTIN_ROLES.extended(Role("conv", "again", fork_sites)), "'conv' is in the table twice"),
        (lambda: BUILTIN_ROLES.extended(aliases={"conv3x3": ("conv", {})}), "already in the table"),
        (lambda: BUILTIN_ROLES.extended(aliases={"edges": ("edge", {})}), "no role or family"),
        (lambda: BUILTIN_ROLES.extended(aliases={"neck": ("conv", {})}), "also a role or family"),
    ],
)
def test_a_table_refuses_what_would_be_ambiguous(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_use_roles_restores_the_table_on_error():
    with pytest.raises(RuntimeError), use_roles(TOY_TABLE):
        raise RuntimeError
    assert active_roles() is BUILTIN_ROLES
    with pytest.raises(TypeError):
        with use_roles({"edge": "an edge map"}):  # type: ignore[arg-type]
            pass


def test_an_alias_of_an_extended_table():
    table = BUILTIN_ROLES.extended(aliases={"pointwise": ("conv", {"kernel": 1})})
    found = ps.find_sites(TinyResNet(), "pointwise", input_shape=SHAPE, roles=table)
    assert [s.path for s in found] == ["layer2.0.shortcut.0"] and found[0].kernel == (1, 1)


# -- the help and the documentation follow the table --------------------------------------------------------
def test_sites_help_examples_name_known_roles():
    kinds = re.findall(r"(?:--kind|-k) ([a-z]\S*)", helptext.sites_help())
    assert kinds and all(BUILTIN_ROLES.known(kind) or kind in BUILTIN_ROLES.aliases for kind in kinds), kinds


def _doc_sections() -> dict[str, str]:
    """Role name -> the text of its `### `name`` section in docs/roles.md."""
    text = (ROOT / "docs" / "roles.md").read_text(encoding="utf-8")
    parts = re.split(r"^(#{1,3} .*)$", text, flags=re.MULTILINE)
    sections = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.fullmatch(r"### `([^`]+)`", heading.strip())
        if match:
            assert match.group(1) not in sections, f"docs/roles.md has two sections for {match.group(1)}"
            sections[match.group(1)] = body
    return sections


def test_docs_have_a_section_per_role_with_its_description_and_example():
    sections = _doc_sections()
    assert set(sections) == set(BUILTIN_ROLES), (
        f"docs/roles.md sections without a role: {sorted(set(sections) - set(BUILTIN_ROLES))}; "
        f"roles without a section: {sorted(set(BUILTIN_ROLES) - set(sections))}")
    for name, role in BUILTIN_ROLES.items():
        assert f"> {role.description}\n" in sections[name], f"docs/roles.md: the section of {name} does not quote its description"
        assert role.example is not None and f"`{role.example.path}`" in sections[name], f"docs/roles.md: no example site for {name}"


def test_docs_summary_table_is_the_tables_markdown():
    text = (ROOT / "docs" / "roles.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- roles-table:[^\n]*-->\n(.*?)<!-- /roles-table -->", text, flags=re.DOTALL)
    assert match, "docs/roles.md has lost its roles-table markers"
    assert match.group(1) == BUILTIN_ROLES.markdown(), (
        "docs/roles.md's table is not BUILTIN_ROLES.markdown(): paste the output of "
        "python -c 'from plugsurgeon.sites.roles import BUILTIN_ROLES; print(BUILTIN_ROLES.markdown(), end=\"\")'")
