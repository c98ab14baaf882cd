"""Where the picture's boxes go: a layered (Sugiyama) layout computed by grandalf, top to bottom.

grandalf is pure Python, so drawing needs no graphviz binary. Each connected component is laid out
on its own (a detector traced in parts has several) and the components are put side by side. Edges
that skip layers get grandalf's bend points, so they run between the boxes rather than through them.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

X_SPACE = 28  # between boxes of one layer
Y_SPACE = 48  # between layers: room for a cluster's bottom margin, the next one's label and an arrow
COMPONENT_GAP = 60
_BEND = 8  # size grandalf gives the bend points of long edges (it would use the median box otherwise)


@dataclass(frozen=True)
class Rect:
    x: float  # left
    y: float  # top
    w: float
    h: float

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    def overlaps(self, other: Rect) -> bool:
        return (
            self.x < other.right and other.x < self.right and self.y < other.bottom and other.y < self.bottom
        )

    def grown(self, left: float, top: float, right: float, bottom: float) -> Rect:
        return Rect(self.x - left, self.y - top, self.w + left + right, self.h + top + bottom)


@dataclass
class Layout:
    boxes: dict[str, Rect]
    edges: dict[tuple[str, str], list[tuple[float, float]]]  # points from the source's border to the target's
    width: float
    height: float


class _View:
    """What grandalf reads (w, h) and writes (xy: the centre) for a vertex."""

    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy = (0.0, 0.0)


class _EdgeView:
    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points) -> None:
        self.points = [tuple(p) for p in points]


def layout(ids: list[str], edges: list[tuple[str, str]], sizes: dict[str, tuple[float, float]]) -> Layout:
    """Place boxes ``ids`` of ``sizes`` (w, h) so that ``edges`` point downwards where they can."""
    vertices = {i: Vertex(i) for i in ids}
    for i, vertex in vertices.items():
        vertex.view = _View(*sizes[i])
    links = []
    for source, target in edges:
        if source != target:
            edge = Edge(vertices[source], vertices[target])
            edge.view = _EdgeView()
            links.append(edge)
    graph = Graph(list(vertices.values()), links)
    order = {i: n for n, i in enumerate(ids)}
    components = sorted(graph.C, key=lambda c: min(order[v.data] for v in c.sV))
    boxes: dict[str, Rect] = {}
    paths: dict[tuple[str, str], list[tuple[float, float]]] = {}
    left, height = 0.0, 0.0
    for component in components:
        placed, routed = _component(component, order)
        min_x = min(r.x for r in placed.values())
        min_y = min(r.y for r in placed.values())
        width = max(r.right for r in placed.values()) - min_x
        for i, r in placed.items():
            boxes[i] = Rect(r.x - min_x + left, r.y - min_y, r.w, r.h)
        for key, points in routed.items():
            paths[key] = [(x - min_x + left, y - min_y) for x, y in points]
        height = max(height, max(r.bottom for r in boxes.values()))
        left += width + COMPONENT_GAP
    # In the caller's order: grandalf keeps edges in sets, so the same picture is the same text.
    ordered = {key: paths[key] for key in dict.fromkeys(edges) if key in paths}
    return Layout(boxes, ordered, max(left - COMPONENT_GAP, 0.0), height)


def _component(component, order) -> tuple[dict[str, Rect], dict[tuple[str, str], list[tuple[float, float]]]]:
    sugiyama = SugiyamaLayout(component)
    sugiyama.xspace, sugiyama.yspace = X_SPACE, Y_SPACE
    sugiyama.dw, sugiyama.dh = _BEND, _BEND
    # The model's input first: grandalf takes the vertices without incoming edges as the top layer.
    roots = sorted((v for v in component.sV if not v.e_in()), key=lambda v: order[v.data]) or None
    with _deep_recursion(len(component.sV) + len(component.sE)):
        sugiyama.init_all(roots=roots)
        sugiyama.draw()
    placed = {}
    for vertex in component.sV:
        (cx, cy), w, h = vertex.view.xy, vertex.view.w, vertex.view.h
        placed[vertex.data] = Rect(cx - w / 2, cy - h / 2, w, h)
    routed = {}
    for edge in component.sE:
        source, target = edge.v[0].data, edge.v[1].data
        routed[(source, target)] = _clip(edge.view.points, placed[source], placed[target])
    return placed, routed


def _clip(points, source: Rect, target: Rect) -> list[tuple[float, float]]:
    """The path from the source box's bottom (or top) to the target box's top (or bottom)."""
    if len(points) < 2:
        points = [
            (source.x + source.w / 2, source.y + source.h / 2),
            (target.x + target.w / 2, target.y + target.h / 2),
        ]
    points = list(points)
    (x0, y0), (x1, y1) = points[0], points[-1]
    down_from = points[1][1] >= y0
    points[0] = (x0, source.bottom if down_from else source.y)
    down_to = y1 >= points[-2][1]
    points[-1] = (x1, target.y if down_to else target.bottom)
    return points


@contextmanager
def _deep_recursion(size: int):
    """grandalf places blocks of aligned vertices recursively, one frame per vertex in a row; a
    deep model (a ResNet-152's 50 blocks) would pass Python's default limit on a long column."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * size + 1000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)
