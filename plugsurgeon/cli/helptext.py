"""Help text for site roles and selectors, built from the roles the code knows.

The roles and their meanings come from ``plugsurgeon.sites.site.ROLES`` and ``ALIASES`` (plain data,
no torch), so a new role shows up in ``plugsurgeon sites --help`` by itself. The examples and the
selector list are written here; tests/cli/test_help.py fails when a role has no example or a
selector of the ``Where`` model (plugsurgeon/sites/select.py) is missing, or one listed here is gone.
"""

from __future__ import annotations

import json
import textwrap

from plugsurgeon.sites.site import ALIASES, ROLES

# One real site per role, as `plugsurgeon sites MODEL --kind ROLE` lists it (checked by the tests).
ROLE_EXAMPLES: dict[str, tuple[str, str]] = {
    "residual.branch": ("resnet50", "layer1.0.bn3"),
    "residual.output": ("resnet50", "layer1.0.relu"),
    "conv": ("resnet50", "layer1.0.conv2"),
    "downsample.pool": ("resnet50", "maxpool"),
    "downsample.conv": ("resnet50", "layer2.0.conv2"),
    "downsample.shortcut": ("resnet50", "layer2.0.downsample.0"),
    "downsample.unit": ("resnet50", "layer2.0.relu"),
    "stage": ("resnet50", "layer2.3.relu"),
    "backbone": ("resnet50", "layer4.2.relu"),
    "neck.level": ("fasterrcnn_resnet50_fpn", "backbone.fpn.layer_blocks.3.0"),
    "neck.merge": ("fasterrcnn_resnet50_fpn", "backbone.fpn.inner_blocks.2.0"),
    "upsample": ("fasterrcnn_resnet50_fpn", "backbone.fpn:interpolate"),
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


def families() -> list[str]:
    """Role families: the prefix of dotted roles; a family means every one of its variants."""
    return sorted({role.split(".")[0] for role in ROLES if "." in role})


def kind_help() -> str:
    aliases = ", ".join(
        f"{alias} ({role}, {', '.join(f'{k} {json.dumps(v)}' for k, v in where.items())})"
        for alias, (role, where) in ALIASES.items()
    )
    return (
        f"a role: {', '.join(ROLES)}; or a family of roles: {', '.join(families())}; "
        f"or an alias: {aliases}. Default: every role"
    )


def where_help() -> str:
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


def sites_help() -> str:
    """The help of ``plugsurgeon sites``: every role with an example, every selector with an example."""
    lines = [
        "List the insertion points of a model, by role; try a recipe step's selectors with --where.",
        "",
        "Roles (--kind ROLE here, `at: ROLE` in a recipe), each with a site it finds:",
    ]
    for role, meaning in ROLES.items():
        model, path = ROLE_EXAMPLES.get(role, ("", ""))
        lines += _wrap(role, f"{meaning}. e.g. {path} in {model}" if path else meaning)
    lines += _wrap("families", f"{', '.join(families())}: every variant, e.g. --kind downsample")
    for alias, (role, where) in ALIASES.items():
        lines += _wrap(
            alias, f"{role} sites with {', '.join(f'{k}: {json.dumps(v)}' for k, v in where.items())}"
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
