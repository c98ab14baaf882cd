"""Pictures of what surgery did: the architecture as blocks, the edited ones highlighted, with deltas.

In a notebook::

    import plugsurgeon as ps

    result = ps.apply(ps.load_model("resnet18"), "cbam", input_shape=(1, 3, 64, 64))
    result.report                     # the report shows itself as the picture
    svg = ps.picture(result)          # SVG text: a str, which a notebook also shows as the picture
    svg.save("resnet18_cbam.svg")     # and writes to a file

From the command line: ``plugsurgeon show resnet18 --recipe cbam -o resnet18_cbam.svg``.

``picture(source)`` takes

- a ``SurgeryResult`` or its ``SurgeryReport`` (``ps.apply``, dry runs too): one box per residual
  block or top-level module, grouped in frames by the module that holds them (``layer2``); each box
  that an edit inserted a module into is ``inserted`` (green), each whose module was replaced is
  ``replaced`` (orange), each listing its edits and its parameters before -> after with the
  parameter and FLOP deltas of its edits;
- a list of those (recipes applied one after another): every edit, on the first model's blocks;
- a ``DeployResult``: boxes where BatchNorms were folded or blocks reparameterized are ``fused``
  (blue); pass ``original=`` (the model given to ``deploy``) for their parameter deltas;
- any ``nn.Module``: its blocks, traced at ``input_shape``, nothing highlighted.

One picture shows before and after at once: the boxes are the model as it was (what the sites
describe), and an edited box says what changed in it and by how much, so the eye compares within one
box rather than across two panels. FLOPs are torch.utils.flop_counter's: 2 per multiply-accumulate,
at the traced input shape (the legend says so).

How the boxes are chosen: ``plugsurgeon.sites.blocks``; where they go: ``plugsurgeon.drawing.layout``
(grandalf's layered layout, pure Python); how they look: ``plugsurgeon.drawing.svg``. The core never
prints; the CLI's ``show`` command writes the file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from plugsurgeon.drawing.layout import layout
from plugsurgeon.drawing.svg import Card, Cluster, Line, render
from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.graph.trace import trace
from plugsurgeon.sites.blocks import Block, BlockGraph, block_graph
from plugsurgeon.sites.find import locate

_MAX_CHANGE_LINES = 6  # per box; more are counted in one line
_KEYS = {"inserted": "module inserted", "replaced": "module replaced", "fused": "fused at deploy"}


class Picture(str):
    """SVG text. A notebook shows it as the picture; ``save(path)`` writes it; ``data`` is what it
    shows as plain JSON-able data (boxes, edges, frames, changes), for programs (``show --json``)."""

    data: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        # Encoded before the file is opened: text that cannot be written leaves no empty file behind.
        # A picture drawn here holds no unencodable character; a Picture made from any str may.
        data = str(self).encode("utf-8", errors="backslashreplace")
        path.write_bytes(data)
        return path

    def _repr_svg_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        # A notebook stores the plain-text form next to the SVG: it should not be the SVG again.
        return f"<plugsurgeon picture: {len(self):,} characters of SVG; .save(path) writes it>"


@dataclass(frozen=True)
class Change:
    """One edit as its box shows it."""

    kind: str  # "inserted", "replaced" or "fused"
    module: str  # path of the new, replacing or fused module
    text: str  # what the box says (paths relative to the box are filled in when it is drawn)
    params: int | None = None  # parameters it adds (negative: removes)
    flops: int | None = None
    site: str = ""  # the site's path: places a new module that no box holds
    plugin: str = ""
    role: str = ""  # the site's role, which with its path names what else the module reads


def picture(
    source: Any, *, input_shape: Sequence[int] | None = None, original: Any = None, title: str | None = None
) -> Picture:
    """The picture of a model, or of what surgery or deploy did to it, as SVG text.

    One box per residual block or top-level module, grouped by the module that holds them; a box an
    edit inserted a module into is green, one whose module was replaced orange, one deploy fused blue,
    each with its parameters before and after and the FLOPs its edits add.

    Args:
        source: What to draw: a ``SurgeryResult`` or its report (dry runs too), a list of those
            (recipes applied one after another), a ``DeployResult``, or any ``nn.Module`` (its
            blocks, nothing highlighted).
        input_shape: The shape an ``nn.Module`` is traced at, N,C,H,W; default
            ``(1, 3, 224, 224)``. Results carry their own.
        original: For a ``DeployResult``: the model given to ``deploy``, for the parameter deltas of
            the fused boxes.
        title: The picture's title; default: the model's class and what was done.

    Returns:
        The SVG text, a ``str`` that a notebook shows as the picture; ``.save(path)`` writes it.

    Raises:
        PlugsurgeonError: ``source`` is none of the above, or a report that holds no blocks.
        TraceError: An ``nn.Module`` does not run on ``input_shape``.

    Examples:
        >>> result = ps.apply(torchvision.models.resnet18(), "cbam", input_shape=(1, 3, 64, 64))
        >>> ps.picture(result).save("resnet18_cbam.svg")
        PosixPath('resnet18_cbam.svg')
        >>> ps.picture(deployed, original=result.model)  # what deploy fused
    """
    reports = _reports(source)
    if reports is not None:
        if reports[0].blocks is None:  # a report built by hand, or one whose blocks could not be made
            raise PlugsurgeonError(
                "this surgery report holds no blocks to draw",
                hint="draw the model itself: ps.picture(result.model, input_shape=...)",
            )
        return _surgery_picture(reports, title)
    if _is_deploy_result(source):
        return _deploy_picture(source, original, title)
    if isinstance(source, nn.Module):
        graph = _trace_blocks(source, input_shape)
        return draw(
            graph, [], title=title or graph.model, totals=_totals(graph.params, None, graph.flops, None)
        )
    raise PlugsurgeonError(
        f"cannot draw a {type(source).__name__}: expected a SurgeryResult, SurgeryReport, DeployResult, "
        "a list of surgery results, or an nn.Module",
        hint="for example ps.picture(ps.apply(model, 'cbam'))",
    )


def draw(
    graph: BlockGraph,
    changes: list[Change],
    *,
    title: str,
    totals: str,
    before: dict[str, int] | None = None,
    notes: Sequence[str] = (),
) -> Picture:
    """Draw ``graph`` with ``changes`` marked; ``before`` overrides boxes' parameter counts before
    the changes (deploy: the original model's), which otherwise are the graph's."""
    blocks, edges, placed_changes, unplaced = _place(graph, changes)
    cards = [_card(block, placed_changes.get(block.id, []), (before or {}).get(block.id)) for block in blocks]
    sizes = {card.id: card.size() for card in cards}
    where = layout([b.id for b in blocks], edges, sizes)
    members = defaultdict(list)  # a frame holds every box within its module, its sub-frames' included
    for block in blocks:
        for group in {block.group, *(g for g in graph.groups if block.group.startswith(g + "."))} - {""}:
            members[group].append(block.id)
    clusters = [
        Cluster(group, f"{group} ({graph.groups.get(group, '')})".replace(" ()", ""), ids)
        for group, ids in members.items()
    ]
    used = {c.kind for c in changes}
    legend = [
        Line(totals, "totals"),
        Line(
            f"FLOPs = 2 × multiply-accumulates (torch.utils.flop_counter) at input {_shape(graph.input_shape)}; "
            "params count each tensor once"
        ),
        Line(
            "boxes: residual blocks and top-level modules; dashed frames: the module that holds them; "
            "+, cat: merges between boxes"
        ),
    ]
    if graph.untraced:
        legend.append(
            Line(
                f"not traced, not drawn: {', '.join(graph.untraced[:8])}{' ...' if len(graph.untraced) > 8 else ''}"
            )
        )
    for change in unplaced:
        legend.append(Line(f"{change.kind} outside the drawn boxes: {change.module}: {change.text}"))
    legend.extend(Line(note) for note in notes)
    keys = [(kind, meaning) for kind, meaning in _KEYS.items() if kind in used]
    drawn = Picture(render(cards, where, clusters, title=title, legend=legend, keys=keys))
    drawn.data = _data(graph, blocks, edges, placed_changes, unplaced, title=title, totals=totals, notes=notes)
    return drawn


def _data(graph: BlockGraph, blocks, edges, placed, unplaced, *, title: str, totals: str, notes) -> dict[str, Any]:
    """The picture as data: every box (with the changes it shows), every edge, every frame; the same
    boxes and edges the SVG draws, so a program reads what a person sees."""

    def change(c: Change) -> dict[str, Any]:
        return {"kind": c.kind, "module": c.module, "plugin": c.plugin or None, "site": c.site or None,
                "text": c.text or None, "params_added": c.params, "flops_added": c.flops}

    return {
        "title": title,
        "model": graph.model,
        "input_shape": list(graph.input_shape),
        "totals": totals,
        "boxes": [
            {"id": b.id, "kind": "new" if "new" in b.tags else b.kind, "path": b.path or None, "label": b.label,
             "params": b.params, "group": b.group or None, "tags": [t for t in b.tags if t != "new"],
             "changes": [change(c) for c in placed.get(b.id, [])]}
            for b in blocks
        ],
        "edges": [list(e) for e in edges],
        "groups": dict(graph.groups),
        "untraced": list(graph.untraced),
        "unplaced": [change(c) for c in unplaced],
        "notes": list(notes),
    }


# -- sources --------------------------------------------------------------------------------------


# Reports are read by what they hold, not by their class: pictures sit below surgery and deploy, which
# draw their reports with them (a report shows itself as its picture in a notebook).
_SURGERY_REPORT = ("recipe", "edits", "blocks", "params_before", "params_after", "flops_before", "applied")
_DEPLOY_REPORT = ("folded", "reparameterized", "input_shape", "params_before", "params_after")


def _reports(source: Any) -> list | None:
    """The surgery reports ``source`` stands for (results or reports), or None when it is something else."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    reports = [getattr(item, "report", item) for item in items]
    if not reports or not all(all(hasattr(r, name) for name in _SURGERY_REPORT) for r in reports):
        return None
    return reports


def _is_deploy_result(source: Any) -> bool:
    report = getattr(source, "report", None)
    return isinstance(getattr(source, "model", None), nn.Module) and all(hasattr(report, name) for name in _DEPLOY_REPORT)


def _trace_blocks(model: nn.Module, input_shape) -> BlockGraph:
    traced = trace(model, tuple(input_shape or DEFAULT_INPUT_SHAPE))
    return block_graph(traced, locate(traced))


def _surgery_picture(reports: list, title: str | None) -> Picture:
    graph = reports[0].blocks
    changes = []
    for report in reports:
        for edit in report.edits:
            kind = "replaced" if edit.mode == "replace" else "inserted"
            changes.append(
                Change(kind, edit.module, "", edit.params_added, edit.flops_added, edit.site, edit.plugin, edit.role)
            )
    first, last = reports[0], reports[-1]
    flops_before = first.flops_before
    added = [r.flops_added for r in reports]
    flops_after = (
        flops_before + sum(a or 0 for a in added)
        if flops_before is not None and any(a is not None for a in added)
        else None
    )
    recipes = " + ".join(r.recipe for r in reports)
    dry = "" if all(r.applied for r in reports) else " (dry run: nothing was changed)"
    heading = title or f"{graph.model} + {recipes}: {len(changes)} edits{dry}"
    return draw(
        graph,
        changes,
        title=heading,
        totals=_totals(first.params_before, last.params_after, flops_before, flops_after),
    )


def _deploy_picture(result, original, title: str | None) -> Picture:
    report = result.report
    graph = _trace_blocks(result.model, report.input_shape)
    # A fold changes two modules: the layer's box gets the fused weights, the norm's box an Identity.
    changes = [
        Change("fused", path, f"{f.norm} folded into {f.layer}")
        for f in report.folded
        for path in (f.layer, f.norm)
    ]
    for r in report.reparameterized:
        text = (
            f"{r.path}: {r.before} reparameterized in place"
            if r.in_place
            else f"{r.path}: {r.before} → {r.after}"
        )
        changes.append(Change("fused", r.path, text))
    before = None
    if original is not None:
        before = {}
        for block in graph.blocks:
            if block.kind == "module":
                try:
                    before[block.id] = sum(p.numel() for p in original.get_submodule(block.path).parameters())
                except AttributeError:  # a path the deployed model has and the original has not
                    pass
    done = [f"{len(report.folded)} BatchNorms folded"] if report.folded else []
    done += [f"{len(report.reparameterized)} blocks reparameterized"] if report.reparameterized else []
    heading = title or f"{graph.model} deployed: {', '.join(done) or 'nothing to fuse'}"
    return draw(
        graph,
        changes,
        title=heading,
        before=before,
        totals=_totals(report.params_before, report.params_after, report.flops_before, report.flops_after),
    )


# -- boxes ----------------------------------------------------------------------------------------


def _place(graph: BlockGraph, changes: list[Change]):
    """Each change on the box that holds its module. A module inserted where no box holds it (in an
    opened module's own forward) gets a box of its own, after the box that holds its site; several
    after one site follow each other in edit order, as surgery puts them."""
    blocks = list(graph.blocks)
    edges = list(graph.edges)
    placed: dict[str, list[Change]] = defaultdict(list)
    unplaced: list[Change] = []
    last_after: dict[str, str] = {}  # site box -> the last new box put after it
    reads: set[tuple[str, str]] = set()  # edges into multi-input modules from the other levels they read
    for change in changes:
        holder = graph.holder(change.module)
        if holder is not None:
            if not change.text or all(
                c.text != change.text for c in placed[holder.id]
            ):  # a fold in one box: once
                placed[holder.id].append(change)
            continue
        site_box = graph.site_blocks.get(change.site)
        if change.kind != "inserted" or site_box is None:
            unplaced.append(change)
            continue
        group = change.module.rsplit(".", 1)[0] if "." in change.module else ""
        new = Block(
            change.module,
            "module",
            change.module,
            change.plugin,
            0,
            group if group in graph.groups else "",
            ("new",),
        )
        blocks.insert(
            blocks.index(next(b for b in blocks if b.id == last_after.get(site_box, site_box))) + 1, new
        )
        after = last_after.get(site_box, site_box)
        edges = [(new.id, t) if s == after and (s, t) not in reads else (s, t) for s, t in edges] + [(after, new.id)]
        # A multi-input module (ASFF, SEB) also reads other levels, as they were before any module went
        # after them: an edge from each box that holds one, which later insertions leave where it is.
        read = [(box, new.id) for box in graph.site_reads.get((change.role, change.site), ()) if box not in (after, site_box)]
        edges += read
        reads.update(read)
        last_after[site_box] = new.id
        placed[new.id].append(change)
    return blocks, list(dict.fromkeys(edges)), placed, unplaced


def _card(block: Block, changes: list[Change], before: int | None) -> Card:
    if block.kind == "op":
        return Card(block.id, ("block", "op"), [Line(block.label, "path")], {}, block.group)
    if block.kind in ("input", "output"):
        text = block.kind if block.label == "model" else f"{block.label} {block.kind}"
        lines = [Line(text, "path")] + ([Line(_shape(block.shape), "kind")] if block.shape else [])
        return Card(block.id, ("block", "io"), lines, {}, block.group)
    new = "new" in block.tags
    kinds = [k for k in _KEYS if any(c.kind == k for c in changes)]
    classes = ("block", "module", *kinds, *(("new",) if new else ()))
    counted = [c.params for c in changes if c.params is not None]
    params_delta: int | None
    if before is not None:  # the box is drawn from the model after (deploy): its own count is the after one
        params_before, params_delta = before, block.params - before
    else:
        params_before, params_delta = block.params, (sum(counted) if counted else None)
    flops = [c.flops for c in changes if c.flops is not None]
    flops_delta = sum(flops) if flops else None
    data = {"path": block.path, "params": str(params_before)}
    lines = [Line(block.path, "path")]
    if new:
        lines.append(Line(f"{block.label} (new module)", "kind"))
    elif params_delta:
        lines.append(
            Line(f"{block.label} · {_si(params_before)} → {_si(params_before + params_delta)} params", "kind")
        )
    else:
        lines.append(Line(f"{block.label} · {_si(params_before)} params", "kind"))
    tags = [t for t in block.tags if t != "new"]
    if tags:
        lines.append(Line(" · ".join(tags), "tags"))
    for change in [] if new else changes[:_MAX_CHANGE_LINES]:  # a new box is its change
        lines.append(Line(_describe(change, block.path), "change"))
    if len(changes) > _MAX_CHANGE_LINES:
        lines.append(Line(f"... and {len(changes) - _MAX_CHANGE_LINES} more", "change"))
    if changes and (params_delta is not None or flops_delta is not None):
        deltas = []
        if params_delta is not None:
            deltas.append(f"Δparams {params_delta:+,}")
            data["params-added"] = str(params_delta)
        if flops_delta is not None:
            deltas.append(f"ΔFLOPs {_signed_si(flops_delta)}")
            data["flops-added"] = str(flops_delta)
        less = (params_delta or 0) < 0 and (flops_delta or 0) <= 0
        lines.append(Line("  ".join(deltas), "delta less" if less else "delta"))
    if changes:
        data["changes"] = " ".join(sorted({c.kind for c in changes}))
        data["modules"] = " ".join(c.module for c in changes)
    return Card(block.id, classes, lines, data, block.group)


def _describe(change: Change, box: str) -> str:
    if change.text:
        return _relative(change.text, box)
    rel = _relative(change.module, box)
    if change.kind == "replaced":
        return f"replaced by {change.plugin}" if not rel else f"{rel} replaced by {change.plugin}"
    if rel == change.plugin or not change.plugin:
        return f"+ {rel}"
    return f"+ {rel} ({change.plugin})"


def _relative(text: str, box: str) -> str:
    """Paths inside the box, as the box names them: ``bn1`` in box ``layer1.0`` for ``layer1.0.bn1``."""
    if not box:
        return text
    inside = (word[len(box) + 1 :] if word.startswith(box + ".") else word for word in text.split(" "))
    # A bare index (a Sequential's "1") says nothing on its own: such a path stays whole.
    return " ".join(rel if not rel.split(".")[0].isdigit() else box + "." + rel for rel in inside)


# -- numbers --------------------------------------------------------------------------------------


def _totals(
    params_before: int, params_after: int | None, flops_before: int | None, flops_after: int | None
) -> str:
    text = f"params {_si(params_before)}"
    if params_after is not None:
        text += f" → {_si(params_after)} ({params_after - params_before:+,})"
    if flops_before is not None:
        text += f"   FLOPs {_si(flops_before)}"
        if flops_after is not None:
            text += f" → {_si(flops_after)} ({_signed_si(flops_after - flops_before)})"
    return text


def _si(value: int | float) -> str:
    """12.3k, 4.56M, 1.8G: three significant digits are what a box has room for."""
    size = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            scaled = value / limit
            return f"{scaled:#.3g}".rstrip(".") + suffix if abs(scaled) < 1000 else f"{scaled:.0f}{suffix}"
    return f"{value:g}"


def _signed_si(value: int | float) -> str:
    return ("+" if value >= 0 else "-") + _si(abs(value))


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape)
