"""Help text for site roles and selectors, built from the roles the code knows.

The roles, their meanings, their example sites and the aliases come from the table of roles,
``plugsurgeon.sites.roles`` (plain data, no torch), so a new role shows up in ``plugsurgeon sites --help``
with its example by itself. The selector list is written here; tests/cli/test_help.py fails when a role
has no example or a selector of the ``Where`` model (plugsurgeon/sites/select.py) is missing, or one
listed here is gone.
"""

from __future__ import annotations

import json
import textwrap

from plugsurgeon.sites.roles import BUILTIN_ROLES, RoleTable, active_roles

# One real site per role, as `plugsurgeon sites MODEL --kind ROLE` lists it (checked by the tests): the
# table's examples.
ROLE_EXAMPLES: dict[str, tuple[str, str]] = {
    name: (role.example.model, role.example.path) for name, role in BUILTIN_ROLES.items() if role.example is not None
}

# Every field of a recipe step's `where:` (sites.select.Where): an example and what it keeps.
SELECTORS: dict[str, tuple[str, str]] = {
    "include": ("include: ['layer3.*', 'layer4.*']", "sites whose path matches any of the globs"),
    "exclude": ("exclude: ['layer1.0.*']", "drops sites whose path matches any of the globs"),
    "stages": ("stages: [4, 5]", "sites at these stages (log2 of the cumulative stride: C2..C5 = 2..5)"),
    "kernel": ("kernel: 3", "conv sites with a square kernel of this size"),
    "stride": ("stride: 2", "conv or pooling sites with this stride"),
    "groups": ("groups: 32", "conv sites with this many groups"),
    "depthwise": ("depthwise: true", "depthwise convs (true) or all others (false)"),
    "in_residual": ("in_residual: true", "convs inside a residual branch (true) or outside (false)"),
    "min_channels": ("min_channels: 256", "sites with at least this many channels"),
    "max_channels": ("max_channels: 512", "sites with at most this many channels"),
    "per_stage_last": ("per_stage_last: 1", "the last k sites of each stage (the last block of a stage)"),
    "every": ("every: 2", "every n-th site: the 1st, the n+1-th, ..."),
    "offset": ("{every: 2, offset: 1}", "where `every` starts counting: the 2nd, 4th, ..."),
    "last": ("last: 2", "the last k sites (applied before `first`)"),
    "first": ("first: 3", "the first k sites ({last: 2, first: 1} is the second to last)"),
}
SELECTOR_ORDER = "filters on what a site is first, then per_stage_last, every/offset, last, first"


def families(roles: RoleTable | None = None) -> list[str]:
    """Role families: the prefix of dotted roles; a family means every one of its variants.

    Args:
        roles: the table of roles; the active one by default.

    Returns:
        The family names, sorted.
    """
    return (roles if roles is not None else active_roles()).families()


def kind_help(roles: RoleTable | None = None) -> str:
    """The help of ``--kind``: every role, family and alias.

    Args:
        roles: the table of roles; the active one by default.

    Returns:
        One paragraph.
    """
    table = roles if roles is not None else active_roles()
    aliases = ", ".join(
        f"{alias} ({role}, {', '.join(f'{k} {json.dumps(v)}' for k, v in where.items())})"
        for alias, (role, where) in table.aliases.items()
    )
    return (
        f"a role: {', '.join(table)}; or a family of roles: {', '.join(table.families())}; "
        f"or an alias: {aliases}. Default: every role"
    )


def where_help() -> str:
    """The help of ``--where``: what it takes and does.

    Returns:
        One paragraph.
    """
    return (
        "a recipe step's `where:` selectors as YAML, e.g. '{kernel: 3, stages: [4, 5]}': list only the sites "
        "a step with this `at:` and `where:` would take"
    )


def _wrap(term: str, text: str, width: int = 76, indent: int = 4) -> list[str]:
    return textwrap.wrap(
        f"{term}  {text}",
        width=width,
        initial_indent="  ",
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def sites_help(roles: RoleTable | None = None) -> str:
    """The help of ``plugsurgeon sites``: every role with an example, every selector with an example.

    Args:
        roles: the table of roles; the active one by default.

    Returns:
        The help text, wrapped at 76 columns.
    """
    table = roles if roles is not None else active_roles()
    lines = [
        "List the insertion points of a model, by role; try a recipe step's selectors with --where.",
        "",
        "Roles (--kind ROLE here, `at: ROLE` in a recipe), each with a site it finds:",
    ]
    for name, role in table.items():
        site = role.example
        lines += _wrap(name, f"{role.description}. e.g. {site.path} in {site.model}" if site else role.description)
    lines += _wrap("families", f"{', '.join(table.families())}: every variant, e.g. --kind downsample")
    for alias, (target, where) in table.aliases.items():
        lines += _wrap(
            alias, f"{target} sites with {', '.join(f'{k}: {json.dumps(v)}' for k, v in where.items())}"
        )
    lines += ["", f"Selectors (--where '{{...}}' here, `where: {{...}}` in a recipe; {SELECTOR_ORDER}):"]
    for _name, (example, meaning) in SELECTORS.items():
        lines += _wrap(example, meaning)
    lines += [
        "",
        "Examples:",
        "  plugsurgeon sites resnet50 --kind residual.branch",
        "  plugsurgeon sites resnet50 --kind conv --where '{kernel: 3, stages: [4, 5]}'",
        "  plugsurgeon sites resnet50 --kind stage --where '{min_channels: 512}'",
        "  plugsurgeon sites fasterrcnn_resnet50_fpn -k neck --input-shape 1,3,512,512",
    ]
    return "\n".join(lines)
