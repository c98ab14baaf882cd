"""All sites of a traced model, or those of one role."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from plugsurgeon.errors import UnknownNameError, did_you_mean
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.graph.trace import Traced, flat_tensors, trace
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.locators import LOCATORS, backbone_candidate, stage_sites
from plugsurgeon.sites.select import Where, select
from plugsurgeon.sites.site import ALIASES, ROLES, Site, known_role, role_matches

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
        found = select(found, Where(**where))
    return found


def _extractor_sites(views: list[GraphView]) -> list[tuple[int, Site]]:
    """The backbone and stage sites of the whole model.

    The extractor reads the image: only parts fed the input image itself can hold it. One of them
    with its own evidence of where the extractor ends (a pooling head, a pyramid, an upsampling
    head) holds the whole extractor (a model traced whole; a detector's backbone with its FPN).
    Otherwise the model was traced as a row of parts (an encoder then a decoder; single layers):
    the extractor is the parts that run from the first image-fed part up to the first part fed
    several maps (a decoder, a merge, a head); its backbone is their deepest map, the last one at
    that stride, and its stage at each stride the last of those parts' stages.
    """
    image_fed = [i for i, v in enumerate(views) if _fed_the_image(v)]
    candidates = [(c[0], i, c[1]) for i, c in ((i, backbone_candidate(views[i])) for i in image_fed) if c is not None]
    strong = [c for c in candidates if c[0] < 3]
    if strong:
        _rule, index, site = min(strong, key=lambda c: (c[0], c[1]))
        return [(index, site)] + [(index, s) for s in stage_sites(views[index])]
    return _extractor_of_a_row(views, image_fed[0]) if image_fed else []


def _extractor_of_a_row(views: list[GraphView], first: int) -> list[tuple[int, Site]]:
    front = []
    for index in range(first, len(views)):
        if _maps_fed(views[index]) != 1:
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


def _maps_fed(view: GraphView) -> int:
    return sum(1 for t in flat_tensors(view.part.example_inputs) if t.dim() == 4)


def _fed_the_image(view: GraphView) -> bool:
    maps = [t for t in flat_tensors(view.part.example_inputs) if t.dim() == 4]
    return len(maps) == 1 and tuple(maps[0].shape[-2:]) == tuple(view.part.input_spatial or ())


def find_sites(model: nn.Module | Traced, kind: str | None = None, *, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> list[Site]:
    """Every insertion point of ``kind`` in ``model``, in graph order.

    Args:
        model: a model, or a trace of one (``ps.trace``) to reuse.
        kind: a role (``residual.branch``), a family of roles (``downsample``) or an alias (``conv3x3``);
            None for every site.
        input_shape: the input the model is traced at (ignored for a trace).

    Returns:
        The sites (role, path, channels, spatial size, stride, stage...).

    Raises:
        TraceError: the model does not run on inputs of that shape.
        SiteError: ``kind`` is not a role, family or alias.

    Example:
        >>> ps.find_sites(torchvision.models.resnet50(), "residual.branch")[0].path
        'layer1.0.bn3'
    """
    traced = model if isinstance(model, Traced) else trace(model, input_shape)
    return locate(traced, kind)
