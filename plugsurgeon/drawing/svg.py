"""How the picture looks: SVG text written over a computed layout (blocklayout), one ``<g>`` per box.

Every box is ``<g class="block ...">`` with ``data-id`` and ``data-*`` numbers, so the picture can be
read by programs (the tests do) as well as by eye. Change classes: ``inserted``, ``replaced``,
``fused``; kinds: ``op`` (a merge), ``io`` (a part's input or output), ``new`` (a box that only
exists after surgery); the legend's swatches are ``<g class="key inserted">`` and so on. The style sheet is scoped to the picture's own id, so several pictures in
one notebook page do not restyle each other (or the page). Text is monospace, so a box's width
follows from its longest line without a font at hand.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from xml.sax import saxutils

from plugsurgeon.drawing.layout import Layout, Rect

FONT = 11  # px
CHAR = 0.62 * FONT  # advance of one monospace character (DejaVu Sans Mono: 0.602 em), with a margin
LINE = 14  # px between baselines
PAD = 8  # inside a box
MARGIN = 16  # around the picture
CLUSTER_PAD = 10
CLUSTER_LABEL = 14


@dataclass
class Line:
    text: str
    cls: str = ""  # "path", "kind", "tags", "change", "delta"


@dataclass
class Card:
    """What one box shows."""

    id: str
    classes: tuple[str, ...]  # "block" first, then its kind and change classes
    lines: list[Line]
    data: dict[str, str] = field(default_factory=dict)  # data-* attributes
    group: str = ""

    def size(self) -> tuple[float, float]:
        longest = max((len(line.text) for line in self.lines), default=1)
        return round(longest * CHAR + 2 * PAD), len(self.lines) * LINE + 2 * PAD - (LINE - FONT)


@dataclass
class Cluster:
    path: str
    label: str
    members: list[str]


_STYLE = """
{s} {{ font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: {font}px; }}
{s} .background {{ fill: #ffffff; }}
{s} .block rect {{ fill: #f6f8fa; stroke: #57606a; stroke-width: 1; }}
{s} .block.io rect {{ fill: #eaeef2; stroke-dasharray: 4 3; }}
{s} .block.op rect {{ fill: #ffffff; }}
{s} .block.inserted rect, {s} .key.inserted rect {{ fill: #dafbe1; stroke: #1a7f37; stroke-width: 2; }}
{s} .block.replaced rect, {s} .key.replaced rect {{ fill: #fff1e5; stroke: #bc4c00; stroke-width: 2; }}
{s} .block.fused rect, {s} .key.fused rect {{ fill: #ddf4ff; stroke: #0969da; stroke-width: 2; }}
{s} .block.new rect {{ stroke-dasharray: 5 2; }}
{s} text {{ fill: #1f2328; }}
{s} .path {{ font-weight: bold; }}
{s} .tags, {s} .note {{ fill: #57606a; font-style: italic; }}
{s} .change {{ fill: #0a3069; }}
{s} .delta {{ fill: #1a7f37; font-weight: bold; }}
{s} .delta.less {{ fill: #cf222e; }}
{s} .edge {{ fill: none; stroke: #8c959f; stroke-width: 1.2; }}
{s} .cluster rect {{ fill: none; stroke: #afb8c1; stroke-dasharray: 6 4; }}
{s} .cluster-label {{ fill: #57606a; paint-order: stroke; stroke: #ffffff; stroke-width: 4px; stroke-linejoin: round; }}
{s} .title {{ font-size: {title}px; font-weight: bold; }}
"""


def render(
    cards: list[Card],
    placed: Layout,
    clusters: list[Cluster],
    *,
    title: str,
    legend: list[Line],
    keys: list[tuple[str, str]],
) -> str:
    """The SVG document: clusters behind, then edges, then boxes; the title above and the legend
    (with a swatch per change class in ``keys``: (class, meaning)) below."""
    body_top = MARGIN + 2 * LINE
    drawn = _clusters(clusters, placed.boxes)
    left = min([0.0, *(r.x for r, _c in drawn)])
    top = min([0.0, *(r.y for r, _c in drawn)])
    dx, dy = MARGIN - left, body_top - top
    right = max([placed.width, *(r.right for r, _c in drawn)]) + dx
    bottom = max([placed.height, *(r.bottom for r, _c in drawn)]) + dy
    legend_top = bottom + 2 * LINE
    legend_rows = legend + ([Line("")] if keys else [])
    width = max(
        right + MARGIN,
        MARGIN + max((len(x.text) for x in [Line(title), *legend]), default=0) * CHAR + MARGIN,
        MARGIN + sum(len(k[1]) * CHAR + 44 for k in keys) + MARGIN,
    )
    height = legend_top + len(legend_rows) * LINE + MARGIN
    scope = (
        "ps-"
        + hashlib.sha1(
            repr((title, [(c.id, c.classes, [x.text for x in c.lines]) for c in cards])).encode()
        ).hexdigest()[:10]
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{scope}" class="plugsurgeon-picture" width="{_n(width)}" '
        f'height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}">',
        f"<title>{escape(title)}</title>",
        f"<style>{_STYLE.format(s='#' + scope, font=FONT, title=FONT + 3)}</style>",
        f'<defs><marker id="{scope}-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8c959f"/></marker></defs>',
        f'<rect class="background" x="0" y="0" width="{_n(width)}" height="{_n(height)}"/>',
        f'<text class="title" x="{MARGIN}" y="{MARGIN + FONT}">{escape(title)}</text>',
        '<g class="clusters">',
    ]
    for rect, cluster in drawn:
        out.append(
            f'<g class="cluster" data-path={quoteattr(cluster.path)}>'
            f'<rect x="{_n(rect.x + dx)}" y="{_n(rect.y + dy)}" width="{_n(rect.w)}" height="{_n(rect.h)}" rx="6"/></g>'
        )
    out.append('</g><g class="edges">')
    for (source, target), points in placed.edges.items():
        d = " ".join(
            ("M" if i == 0 else "L") + f"{_n(x + dx)},{_n(y + dy)}" for i, (x, y) in enumerate(points)
        )
        out.append(
            f'<path class="edge" data-from={quoteattr(source)} data-to={quoteattr(target)} d="{d}" '
            f'marker-end="url(#{scope}-arrow)"/>'
        )
    # Frame labels over the edges (an edge runs into a frame through its label), with a white halo.
    out.append('</g><g class="cluster-labels">')
    for rect, cluster in drawn:
        out.append(
            f'<text class="cluster-label" data-path={quoteattr(cluster.path)} x="{_n(rect.x + dx + 6)}" '
            f'y="{_n(rect.y + dy + FONT + 2)}">{escape(cluster.label)}</text>'
        )
    out.append('</g><g class="blocks">')
    for card in cards:
        rect = placed.boxes[card.id]
        out.append(_box(card, Rect(rect.x + dx, rect.y + dy, rect.w, rect.h)))
    out.append("</g>")
    out.append(f'<g class="legend" transform="translate({MARGIN},{_n(legend_top)})">')
    for row, line in enumerate(legend):
        out.append(
            f'<text class={quoteattr(line.cls or "note")} x="0" y="{row * LINE + FONT}">{escape(line.text)}</text>'
        )
    x = 0.0
    for cls, meaning in keys:
        y = len(legend) * LINE
        out.append(
            f'<g class="key {cls}"><rect x="{_n(x)}" y="{y}" width="28" height="{FONT + 2}" rx="3"/></g>'
            f'<text x="{_n(x + 34)}" y="{y + FONT}">{escape(meaning)}</text>'
        )
        x += 34 + len(meaning) * CHAR + 10
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


def _box(card: Card, rect: Rect) -> str:
    data = "".join(f" data-{key}={quoteattr(value)}" for key, value in card.data.items())
    radius = rect.h / 2 if "op" in card.classes else 4
    parts = [
        f'<g class="{" ".join(card.classes)}" data-id={quoteattr(card.id)}{data}>',
        f'<rect x="{_n(rect.x)}" y="{_n(rect.y)}" width="{_n(rect.w)}" height="{_n(rect.h)}" rx="{_n(radius)}"/>',
    ]
    centred = "op" in card.classes
    for row, line in enumerate(card.lines):
        x = rect.x + rect.w / 2 if centred else rect.x + PAD
        anchor = ' text-anchor="middle"' if centred else ""
        cls = f" class={quoteattr(line.cls)}" if line.cls else ""
        parts.append(
            f'<text{cls} x="{_n(x)}" y="{_n(rect.y + PAD + FONT + row * LINE - 2)}"{anchor}>{escape(line.text)}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def _clusters(clusters: list[Cluster], boxes: dict[str, Rect]) -> list[tuple[Rect, Cluster]]:
    """A frame around each group's boxes, where it would enclose no other box and cross no other frame
    (a layered layout may put an unrelated box beside a group: then the group goes unframed). Inner
    frames first, so an outer one goes around them."""
    drawn: list[tuple[Rect, Cluster]] = []
    for cluster in sorted(clusters, key=lambda c: -c.path.count(".")):
        members = [boxes[m] for m in cluster.members if m in boxes]
        inside = set(cluster.members)
        nested = [r for r, c in drawn if c.path.startswith(cluster.path + ".")]
        if len(members) < 2:
            continue
        around = members + nested
        x, y = min(r.x for r in around), min(r.y for r in around)
        frame = Rect(x, y, max(r.right for r in around) - x, max(r.bottom for r in around) - y)
        frame = frame.grown(CLUSTER_PAD, CLUSTER_PAD + CLUSTER_LABEL, CLUSTER_PAD, CLUSTER_PAD)
        short = len(cluster.label) * CHAR + 12 - frame.w  # the label fits inside the frame
        if short > 0:
            frame = frame.grown(short / 2, 0, short / 2, 0)
        if any(frame.overlaps(r) for i, r in boxes.items() if i not in inside):
            continue
        if any(frame.overlaps(r) and r not in nested for r, _c in drawn):
            continue
        drawn.append((frame, cluster))
    return drawn


# What XML 1.0 lets a document hold (its Char production); lone surrogates are outside it too, and
# UTF-8 cannot even encode them. Names come from models, files and users: any character may be there.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _visible(text: str) -> str:
    """``text`` with every character XML forbids written as its Python escape (``\\x01``), so the
    document stays well-formed and the reader still sees that the name holds that character."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], text)


def escape(text: str) -> str:
    return saxutils.escape(_visible(text))


def quoteattr(text: str) -> str:
    return saxutils.quoteattr(_visible(text))


def _n(value: float) -> str:
    """A coordinate, short: 12 rather than 12.0."""
    return f"{value:.1f}".rstrip("0").rstrip(".")
