"""Names in a picture come from models, recipes and users: any character may be in them, and the SVG
must stay well-formed XML (a browser shows nothing of a file that is not) and be writable as UTF-8."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from torch import nn

import plugsurgeon as ps
from tests.nets import TinyResNet

SVG = "{http://www.w3.org/2000/svg}"
SHAPE = (1, 3, 32, 32)
# Characters XML 1.0 forbids (C0 controls but tab, newline, return; U+FFFE), and a lone surrogate.
FORBIDDEN = ["\x00", "\x01", "\x0b", "\x0c", "\x1f", "\ufffe", "\ud800"]


def _in_model(odd: str) -> str:
    """Python's class names cannot hold \\x00 or a lone surrogate (nor fx's generated code): \\x01 there."""
    return odd.replace("\x00", "\x01").replace("\ud800", "\x01")


def _named(odd: str) -> nn.Module:
    odd = _in_model(odd)
    net = type(f"Net{odd}", (nn.Module,), {})
    model = net()
    nn.Module.__init__(model)
    model.add_module("stem", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module(f"act{odd}", type(f"Act{odd}", (nn.ReLU,), {})())
    net.forward = lambda self, x: getattr(self, f"act{odd}")(self.stem(x))
    return model


def test_forbidden_characters_in_module_class_and_title_names_keep_the_svg_well_formed(tmp_path):
    odd = "".join(FORBIDDEN)  # all at once: one trace
    svg = ps.picture(_named(odd), input_shape=SHAPE, title=f"title{odd}")
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    texts = [t.text or "" for t in root.iter(SVG + "text")]
    assert f"title{repr(odd)[1:-1]}" in texts  # the character is still visible, as its escape
    in_model = repr(_in_model(odd))[1:-1]
    assert any(f"act{in_model}" in t for t in texts)
    assert any(f"Act{in_model}" in t for t in texts)
    written = svg.save(tmp_path / "p.svg")
    assert ET.parse(written).getroot().tag == SVG + "svg"
    default = ET.fromstring(ps.picture(_named(odd), input_shape=SHAPE))  # titled by the model's class
    assert f"Net{in_model}" in default.find(SVG + "title").text


def test_a_recipe_name_with_forbidden_characters_keeps_the_svg_well_formed(tmp_path):
    recipe = ps.Recipe(name="se\x01\ud800", steps=[ps.Step(plugin="se", at="residual.branch")])
    result = ps.apply(TinyResNet(), recipe, input_shape=SHAPE, dry_run=True)
    svg = ps.picture(result)
    title = ET.fromstring(svg).find(SVG + "title").text
    assert "se\\x01\\ud800" in title
    svg.save(tmp_path / "p.svg")
    ET.parse(tmp_path / "p.svg")


def test_saving_text_utf8_cannot_encode_leaves_no_empty_file(tmp_path):
    picture = ps.picture(TinyResNet(), input_shape=SHAPE)
    odd = type(picture)(str(picture).replace("</svg>", "<!-- \ud800 --></svg>"))
    path = odd.save(tmp_path / "p.svg")
    assert path.stat().st_size > 0
    ET.parse(path)
