"""All sites of a traced model, or those of one role."""

from __future__ import annotations

from plugsurgeon.errors import UnknownNameError, did_you_mean
from plugsurgeon.graph.trace import Traced, flat_tensors
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.locators import LOCATORS, backbone_candidate, stage_sites
from plugsurgeon.sites.site import ROLES, Site, known_role, role_matches

ALIASES = {"conv3x3": ("conv", {"kernel": 3}), "depthwise": ("conv", {"depthwise": True})}
_MODEL_WIDE = ("backbone", "stage")  # one extractor per model: decided across the traced parts


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
    wanted = lambda family: kind is None or role_matches(family, kind) or role_matches(kind, family)  # noqa: E731
    views = [GraphView(part, traced.model) for part in traced.parts]
    sites: list[tuple[int, Site]] = []
    for index, view in enumerate(views):
        for family, locator in LOCATORS.items():
            if family not in _MODEL_WIDE and wanted(family):
                sites.extend((index, s) for s in locator(view) if kind is None or role_matches(s.role, kind))
    if wanted("backbone") or wanted("stage"):
        extractor = _extractor_sites(views)
        sites.extend(item for item in extractor if kind is None or role_matches(item[1].role, kind))
    sites.sort(key=lambda item: (item[0], item[1].order, item[1].role))
    found = [s for _i, s in sites]
    if where:
        from plugsurgeon.sites.select import Where, select

        found = select(found, Where(**where))
    return found


def _extractor_sites(views: list[GraphView]) -> list[tuple[int, Site]]:
    """The backbone and stage sites of the whole model.

    One part with its own evidence of where the extractor ends (a pooling head, a pyramid, an
    upsampling head) holds the extractor: its backbone and stages are the model's. Without such a
    part (a model traced as a row of small parts, each a layer), the extractor is the parts that run
    before the first part fed several maps (a merge or a head): its backbone is their deepest map,
    the last one at that stride; its stage at each stride is the last of those parts' stages.
    """
    candidates = [(c[0], i, c[1]) for i, c in ((i, backbone_candidate(v)) for i, v in enumerate(views)) if c is not None]
    if not candidates:
        return []
    rule, index, site = min(candidates, key=lambda c: (c[0], c[1]))
    if rule < 3:
        return [(index, site)] + [(index, s) for s in stage_sites(views[index])]
    return _extractor_of_layer_parts(views)


def _extractor_of_layer_parts(views: list[GraphView]) -> list[tuple[int, Site]]:
    front = []
    for index, view in enumerate(views):
        if _fed_several(view):
            break
        front.append(index)
    candidates = [(i, backbone_candidate(views[i])) for i in front]
    candidates = [(i, c[1]) for i, c in candidates if c is not None]
    if not candidates:
        return []
    deepest = max(site.total_stride for _i, site in candidates)
    backbone = [(i, s) for i, s in candidates if s.total_stride == deepest][-1]
    stages: dict[int, tuple[int, Site]] = {}
    for index in front:
        for site in stage_sites(views[index]):
            stages[site.total_stride] = (index, site)
    return [backbone, *(stages[stride] for stride in sorted(stages))]


def _fed_several(view: GraphView) -> bool:
    return sum(1 for t in flat_tensors(view.part.example_inputs) if t.dim() == 4) > 1
