"""The architecture picture, drawn as a user draws it and read back as SVG.

What each box says is checked against the models themselves (module paths, classes, parameter counts
by ``sum(p.numel())``), not against the report the picture was drawn from.
"""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET

import pytest
import torchvision
from torch import nn

import plugsurgeon as ps
from plugsurgeon.drawing.layout import layout
from tests.nets import TinyFPN, TinyResNet, randomize_batchnorm

SVG = "{http://www.w3.org/2000/svg}"
SMALL = (1, 3, 64, 64)


def read(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on anything that is not well-formed XML


def boxes(root: ET.Element) -> dict[str, ET.Element]:
    return {
        g.get("data-id"): g
        for g in root.iter(SVG + "g")
        if "block" in g.get("class", "").split() and g.get("data-id")
    }


def classes(box: ET.Element) -> set[str]:
    return set(box.get("class").split())


def texts(box: ET.Element) -> list[str]:
    return [t.text or "" for t in box.iter(SVG + "text")]


def rect(box: ET.Element) -> tuple[float, float, float, float]:
    r = box.find(SVG + "rect")
    return float(r.get("x")), float(r.get("y")), float(r.get("width")), float(r.get("height"))


def overlapping(rects: dict[str, tuple[float, float, float, float]]) -> list[tuple[str, str]]:
    return [
        (a, b)
        for (a, ra), (b, rb) in itertools.combinations(rects.items(), 2)
        if ra[0] < rb[0] + rb[2] and rb[0] < ra[0] + ra[2] and ra[1] < rb[1] + rb[3] and rb[1] < ra[1] + ra[3]
    ]


def marked(root: ET.Element, kind: str) -> set[str]:
    return {i for i, g in boxes(root).items() if kind in classes(g)}


def delta(box: ET.Element, what: str) -> int:
    """The signed number a box prints after Δparams or ΔFLOPs."""
    line = next(t for t in texts(box) if f"Δ{what}" in t)
    return int(re.search(rf"Δ{what} ([+-][\d,]+)", line).group(1).replace(",", ""))


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def new_paths(before: nn.Module, after: nn.Module) -> set[str]:
    """Modules that surgery added: paths the edited model has and the original has not, outermost only."""
    added = {n for n, _ in after.named_modules()} - {n for n, _ in before.named_modules()}
    return {n for n in added if (n.rsplit(".", 1)[0] if "." in n else "") not in added}


@pytest.fixture(scope="module")
def resnet_cbam():
    model = torchvision.models.resnet18()
    return model, ps.apply(model, "cbam", input_shape=SMALL)


def test_resnet_cbam_highlights_exactly_the_edited_blocks_with_their_deltas(resnet_cbam):
    original, result = resnet_cbam
    svg = ps.picture(result)
    root = read(svg)
    found = boxes(root)
    # One box per residual block and per top-level layer, named by its module path and class.
    assert {"conv1", "maxpool", "layer2.1", "layer4.0", "fc"} <= set(found)
    assert texts(found["layer2.1"])[0] == "layer2.1"
    assert texts(found["layer2.1"])[1].startswith(type(original.layer2[1]).__name__ + " · ")
    assert "residual" in texts(found["layer2.1"])[2]
    # The inserted modules, found by comparing the models, each sit in the box of their owner.
    inserted = new_paths(original, result.model)
    owners = {p.rsplit(".", 1)[0] for p in inserted}
    assert owners == {f"layer{i}.{j}" for i in range(1, 5) for j in range(2)}
    assert marked(root, "inserted") == owners
    assert owners == {e.module.rsplit(".", 1)[0] for e in result.report.edits}
    assert not marked(root, "replaced") and not marked(root, "fused")
    for owner in owners:
        box = found[owner]
        added = sum(params(result.model.get_submodule(p)) for p in inserted if p.startswith(owner + "."))
        assert delta(box, "params") == added == int(box.get("data-params-added"))
        assert int(box.get("data-params")) == params(original.get_submodule(owner))
        assert "+ cbam" in texts(box)
        flops = sum(e.flops_added for e in result.report.edits if e.module.startswith(owner + "."))
        assert int(box.get("data-flops-added")) == flops > 0
    # The boxes that were not edited say nothing about changes.
    for name in set(found) - owners:
        assert not any(t.startswith(("Δ", "+ ")) for t in texts(found[name])), name


def test_picture_is_well_formed_without_overlaps_and_edges_follow_the_data(resnet_cbam):
    _original, result = resnet_cbam
    root = read(ps.picture(result))
    found = boxes(root)
    assert not overlapping({i: rect(g) for i, g in found.items()})
    edges = {
        (p.get("data-from"), p.get("data-to")) for p in root.iter(SVG + "path") if p.get("class") == "edge"
    }
    assert {
        ("maxpool", "layer1.0"),
        ("layer1.1", "layer2.0"),
        ("layer4.1", "avgpool"),
        ("avgpool", "fc"),
    } <= edges
    assert all(a in found and b in found for a, b in edges)
    # Each edge starts on its source box's border and ends on its target's.
    for path in root.iter(SVG + "path"):
        if path.get("class") != "edge":
            continue
        points = [tuple(map(float, p[1:].split(","))) for p in path.get("d").split()]
        (sx, sy, sw, sh), (tx, ty, tw, th) = (
            rect(found[path.get("data-from")]),
            rect(found[path.get("data-to")]),
        )
        assert sx <= points[0][0] <= sx + sw and points[0][1] in (sy, sy + sh)
        assert tx <= points[-1][0] <= tx + tw and points[-1][1] in (ty, ty + th)
    # The stage that holds blocks is a frame around exactly them.
    frames = {g.get("data-path"): g for g in root.iter(SVG + "g") if g.get("class") == "cluster"}
    fx, fy, fw, fh = rect(frames["layer2"])
    for name, box in found.items():
        x, y, w, h = rect(box)
        inside = fx <= x and x + w <= fx + fw and fy <= y and y + h <= fy + fh
        assert inside == name.startswith("layer2."), name


def test_report_shows_itself_as_the_same_picture_and_stays_plain_data(resnet_cbam):
    _original, result = resnet_cbam
    assert result.report._repr_svg_() == ps.picture(result) == ps.picture(result.report)  # deterministic too
    data = result.report.to_dict()
    assert "blocks" not in data
    json.dumps(data)
    assert "blocks" not in repr(result.report)


def test_legend_says_what_flops_are_and_the_totals(resnet_cbam):
    _original, result = resnet_cbam
    legend = next(g for g in read(ps.picture(result)).iter(SVG + "g") if g.get("class") == "legend")
    lines = [t.text for t in legend.iter(SVG + "text")]
    assert any("FLOPs = 2 × multiply-accumulates" in line and "1×3×64×64" in line for line in lines)
    report = result.report
    assert any(f"({report.params_after - report.params_before:+,})" in line for line in lines)
    # One swatch per kind of change the picture shows: here only insertions.
    assert [g.get("class") for g in legend.iter(SVG + "g")][1:] == ["key inserted"]


def test_notebook_and_file(resnet_cbam, tmp_path):
    _original, result = resnet_cbam
    svg = ps.picture(result)
    assert isinstance(svg, str) and svg._repr_svg_() == str(svg)
    written = svg.save(tmp_path / "p.svg")
    assert written.read_text(encoding="utf-8") == svg


def test_tiny_net_replacements_are_marked_replaced():
    model = TinyResNet()
    result = ps.apply(model, "acnet", input_shape=(1, 3, 32, 32))
    root = read(ps.picture(result))
    found = boxes(root)
    # Paths whose module changed class: the replaced convs; each lies in the box that holds it.
    changed = {
        n for n, m in model.named_modules() if n and type(result.model.get_submodule(n)) is not type(m)
    }
    holders = {next(b for b in found if n == b or n.startswith(b + ".")) for n in changed}
    assert changed and marked(root, "replaced") == holders
    assert not marked(root, "inserted")
    for holder in holders:
        expected = params(result.model.get_submodule(holder)) - params(model.get_submodule(holder))
        assert delta(found[holder], "params") == expected
    assert not overlapping({i: rect(g) for i, g in found.items()})


def test_a_module_inserted_where_no_box_holds_it_gets_a_box_after_its_site():
    recipe = ps.parse_recipe(
        "name: se_levels\nsteps:\n  - {plugin: se, at: neck.level}\n  - {plugin: eca, at: neck.level}\n"
    )
    model = TinyFPN()
    result = ps.apply(model, recipe, input_shape=SMALL)
    root = read(ps.picture(result))
    found = boxes(root)
    inserted = new_paths(model, result.model)  # in TinyFPN's own forward: se, se_1, ..., eca_2
    assert inserted and marked(root, "new") == inserted == marked(root, "inserted")
    for path in inserted:
        assert delta(found[path], "params") == params(result.model.get_submodule(path))
    edges = {
        (p.get("data-from"), p.get("data-to")) for p in root.iter(SVG + "path") if p.get("class") == "edge"
    }
    # In step order from the site, as surgery chains them: smooth.2 -> se -> eca -> the output.
    site_of = {e.module: e.site for e in result.report.edits}
    first = next(p for p in inserted if site_of[p] == "smooth.2" and p.startswith("se"))
    second = next(p for p in inserted if site_of[p] == "smooth.2" and p.startswith("eca"))
    assert {("smooth.2", first), (first, second), (second, "output:")} <= edges and (
        "smooth.2",
        "output:",
    ) not in edges
    assert not overlapping({i: rect(g) for i, g in found.items()})


def test_pyramid_merges_are_drawn_between_the_levels():
    root = read(ps.picture(TinyFPN(), input_shape=SMALL))
    found = boxes(root)
    merges = {i for i, g in found.items() if "op" in classes(g)}
    assert len(merges) == 2 and all(texts(found[m]) == ["+"] for m in merges)
    edges = {
        (p.get("data-from"), p.get("data-to")) for p in root.iter(SVG + "path") if p.get("class") == "edge"
    }
    top = next(m for m in merges if ("lateral.2", m) in edges)
    assert {("lateral.1", top), (top, "smooth.1")} <= edges
    # A resize to c4's size reads c4's shape, not its data: no edge from c4 into the merge.
    assert ("c4", top) not in edges
    for level in ("smooth.0", "smooth.1", "smooth.2"):
        assert "neck" in " ".join(texts(found[level]))
    assert not marked(root, "inserted")


def test_deploy_marks_the_blocks_it_fused():
    model = randomize_batchnorm(TinyResNet()).eval()
    result = ps.deploy(model, input_shape=(1, 3, 32, 32))
    root = read(ps.picture(result, original=model))
    found = boxes(root)
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    gone = {n for n in norms if isinstance(result.model.get_submodule(n), nn.Identity)}
    holders = {next(b for b in found if n == b or n.startswith(b + ".")) for n in gone}
    assert gone and marked(root, "fused") == holders
    for holder in holders:
        assert (
            delta(found[holder], "params")
            == params(result.model.get_submodule(holder)) - params(model.get_submodule(holder))
            < 0
        )


def test_what_cannot_be_drawn_says_so():
    with pytest.raises(ps.PlugsurgeonError, match="cannot draw a int"):
        ps.picture(42)
    from plugsurgeon.surgery.report import SurgeryReport

    bare = SurgeryReport("M", "r", (1, 3, 8, 8), [], [])
    assert bare._repr_svg_() is None  # a notebook falls back to the text
    with pytest.raises(ps.PlugsurgeonError, match="holds no blocks to draw"):
        ps.picture(bare)


def test_layout_of_several_components_keeps_boxes_apart():
    sizes = {i: (40 + 7 * n, 20 + 3 * n) for n, i in enumerate("abcdefgh")}
    placed = layout(
        list("abcdefgh"),
        [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d"), ("e", "f"), ("g", "g")],
        sizes,
    )
    assert not overlapping({i: (r.x, r.y, r.w, r.h) for i, r in placed.boxes.items()})
    assert placed.boxes["b"].y > placed.boxes["a"].bottom and placed.boxes["d"].y > placed.boxes["b"].bottom
    assert placed.width >= max(r.right for r in placed.boxes.values())


@pytest.mark.slow
def test_detector_pyramid_is_a_neck_of_lateral_and_output_convs():
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None
    )
    result = ps.apply(model, "se", input_shape=(1, 3, 128, 128))
    root = read(ps.picture(result))
    found = boxes(root)
    fpn = {i for i in found if i.startswith("backbone.fpn.")}
    assert {"backbone.fpn.inner_blocks.0", "backbone.fpn.layer_blocks.0"} <= fpn
    assert all("neck" in " ".join(texts(found[i])) for i in fpn)
    assert any("op" in classes(g) and texts(g) == ["+"] for g in found.values())
    owners = {p.rsplit(".", 1)[0] for p in new_paths(model, result.model)}
    assert marked(root, "inserted") == owners
    assert not overlapping({i: rect(g) for i, g in found.items()})


def test_recipes_applied_one_after_another_are_drawn_on_the_first_models_blocks():
    model = TinyResNet()
    first = ps.apply(model, "se", input_shape=(1, 3, 32, 32))
    second = ps.apply(first.model, "eca", input_shape=(1, 3, 32, 32))
    root = read(ps.picture([first, second]))
    found = boxes(root)
    inserted = new_paths(model, second.model)
    owners = {p.rsplit(".", 1)[0] for p in inserted}
    assert marked(root, "inserted") == owners == {"layer1.0", "layer1.1", "layer2.0", "layer2.1"}
    for owner in owners:
        lines = texts(found[owner])
        assert "+ se" in lines and "+ eca" in lines
        added = sum(params(second.model.get_submodule(p)) for p in inserted if p.startswith(owner + "."))
        assert delta(found[owner], "params") == added
        assert int(found[owner].get("data-params")) == params(model.get_submodule(owner))


def test_ps_picture_stays_the_function_once_a_report_has_drawn_itself():
    # The drawing module must not share the exported function's name: importing a submodule sets
    # it as an attribute of the package, which would shadow ``ps.picture``.
    import importlib

    import plugsurgeon as ps

    importlib.import_module(ps.picture.__module__)
    assert callable(ps.picture) and ps.picture.__name__ == "picture"
    assert ps.picture.__module__ != "plugsurgeon.drawing"
