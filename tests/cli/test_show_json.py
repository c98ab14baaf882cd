"""`plugsurgeon show --json`: the docs say every command takes --json; show writes its SVG and prints what
the picture shows as data, the same boxes and edges the file draws."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from plugsurgeon.cli.app import app

SVG = "{http://www.w3.org/2000/svg}"


def test_show_json_prints_the_pictures_boxes_and_edges_and_writes_the_file(tmp_path):
    out = tmp_path / "tiny.svg"
    ran = CliRunner().invoke(app, ["show", "tests.nets:TinyFPN", "--recipe", "asff", "--input-shape", "1,3,64,64",
                                   "-o", str(out), "--json"])
    assert ran.exit_code == 0, ran.output
    data = json.loads(ran.stdout)
    assert data["output"] == str(out) and data["edits"] == 3 and not data["deployed"]
    root = ET.parse(out).getroot()
    drawn = {g.get("data-id") for g in root.iter(SVG + "g") if "block" in g.get("class", "").split()}
    edges = {(p.get("data-from"), p.get("data-to")) for p in root.iter(SVG + "path") if p.get("data-from")}
    picture = data["picture"]
    assert {b["id"] for b in picture["boxes"]} == drawn
    assert {tuple(e) for e in picture["edges"]} == edges
    new = {b["path"]: b for b in picture["boxes"] if b["kind"] == "new"}
    assert set(new) == {"asff", "asff_1", "asff_2"}  # TinyFPN returns three levels: ASFF after each
    assert all(c["plugin"] == "asff" and c["params_added"] > 0 for b in new.values() for c in b["changes"])
    assert {b["path"] for b in picture["boxes"] if b["kind"] == "module"} >= {"smooth.0", "smooth.1", "smooth.2"}
