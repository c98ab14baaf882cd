"""`plugsurgeon show` through typer's CliRunner: the file it writes, where, and its refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from typer.testing import CliRunner

from plugsurgeon.cli.app import app
from plugsurgeon.cli.show_command import default_name

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"
TINY = "tests.nets:TinyResNet"


def invoke(*args):
    return runner.invoke(app, list(args))


def marked(path, kind: str) -> set[str]:
    root = ET.parse(path).getroot()
    return {
        g.get("data-id") for g in root.iter(SVG + "g") if {"block", kind} <= set(g.get("class", "").split())
    }


def test_show_writes_the_picture_with_the_recipes_edits(tmp_path):
    out = tmp_path / "tiny.svg"
    result = invoke("show", TINY, "--recipe", "se", "--input-shape", "1,3,32,32", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    # se goes on every residual branch: the four BasicBlocks of TinyResNet, and nothing else.
    assert marked(out, "inserted") == {"layer1.0", "layer1.1", "layer2.0", "layer2.1"}


def test_show_without_a_recipe_draws_the_model_and_without_output_writes_a_default_file(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = invoke("show", TINY, "--input-shape", "1,3,32,32")
    assert result.exit_code == 0, result.output
    written = tmp_path / "TinyResNet.svg"
    assert written.is_file() and "TinyResNet.svg" in result.stdout
    assert not marked(written, "inserted") and "layer2.1" in {
        g.get("data-id") for g in ET.parse(written).getroot().iter(SVG + "g")
    }


def test_show_into_a_directory_and_with_deploy(tmp_path):
    result = invoke(
        "show", TINY, "--recipe", "acnet", "--deploy", "--input-shape", "1,3,32,32", "-o", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    written = tmp_path / "TinyResNet_acnet_deployed.svg"
    assert written.is_file()
    fused = marked(written, "fused")
    assert {"layer1.0", "layer2.1"} <= fused and "head" not in fused


def test_show_refuses_before_any_work(tmp_path):
    wrong = invoke("show", TINY, "-o", str(tmp_path / "picture.png"))
    assert wrong.exit_code == 1 and "not an .svg file" in wrong.output and "Traceback" not in wrong.output
    missing = invoke("show", TINY, "-o", str(tmp_path / "no" / "such" / "p.svg"))
    assert missing.exit_code == 1 and "does not exist" in missing.output
    recipe = invoke("show", TINY, "--recipe", "no_such_recipe", "-o", str(tmp_path / "p.svg"))
    assert recipe.exit_code == 1 and not (tmp_path / "p.svg").exists()


def test_default_names_are_file_names():
    assert default_name("resnet18", ["cbam"], False) == "resnet18_cbam.svg"
    assert default_name("timm:resnet18", [], True) == "resnet18_deployed.svg"
    assert default_name("runs/edited/", ["se", "acnet"], False) == "edited_se_acnet.svg"
    assert default_name("pkg.mod:make net", [], False) == "make_net.svg"
