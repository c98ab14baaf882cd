"""All sites of a traced model, or those of one role."""

from __future__ import annotations

from plugsurgeon.errors import UnknownNameError, did_you_mean
from plugsurgeon.graph.trace import Traced
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.locators import LOCATORS, backbone_candidate
from plugsurgeon.sites.site import ROLES, Site, known_role, role_matches

ALIASES = {"conv3x3": ("conv", {"kernel": 3}), "depthwise": ("conv", {"depthwise": True})}


def check_role(kind: str) -> None:
    if not known_role(kind) and kind not in ALIASES:
        suggestion = did_you_mean(kind, list(ROLES) + list(ALIASES))
        raise UnknownNameError(
            f"unknown site role '{kind}'" + (f"; {suggestion}" if suggestion else ""),
            hint=f"roles are {', '.join(ROLES)} (and the aliases {', '.join(ALIASES)})",
        )


def locate(traced: Traced, kind: str | None = None) -> list[Site]:
    """Every site of ``kind`` (a role, a role family such as ``downsample``, or an alias), in graph order."""
    where = {}
    if kind is not None:
        check_role(kind)
        kind, where = ALIASES.get(kind, (kind, {}))
    sites: list[tuple[int, Site]] = []
    backbones: list[tuple[int, int, Site]] = []
    for part_index, part in enumerate(traced.parts):
        view = GraphView(part, traced.model)
        for family, locator in LOCATORS.items():
            if family == "backbone":
                candidate = backbone_candidate(view) if kind is None or role_matches("backbone", kind) else None
                if candidate is not None:
                    backbones.append((candidate[0], part_index, candidate[1]))
            elif kind is None or role_matches(family, kind) or role_matches(kind, family):
                sites.extend((part_index, s) for s in locator(view) if kind is None or role_matches(s.role, kind))
    if backbones:  # one backbone per model: the strongest evidence, then the earliest part
        rank, part_index, site = min(backbones, key=lambda b: (b[0], b[1]))
        sites.append((part_index, site))
    sites.sort(key=lambda item: (item[0], item[1].order, item[1].role))
    found = [s for _i, s in sites]
    if where:
        from plugsurgeon.sites.select import Where, select

        found = select(found, Where(**where))
    return found
