"""A multi-input module (ASFF fusing every pyramid level, SEB reading the top-down input) is drawn with an
edge from every box it reads, as the edited model's own graph feeds it; the picture drew one."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch.fx as fx

import plugsurgeon as ps
from tests.nets import TinyFPN

SVG = "{http://www.w3.org/2000/svg}"


def _edges_into(svg: str, box: str) -> set[str]:
    root = ET.fromstring(svg)
    return {p.get("data-from") for p in root.iter(SVG + "path") if p.get("data-to") == box}


def _inputs_in_the_edited_graph(model, plugin: str) -> dict[str, set[str]]:
    """Each new module's inputs, read from the edited model traced with the new modules as leaves: the
    module that computed each, or the merge (``op::add_3``) that did."""

    class Leaves(fx.Tracer):
        def is_leaf_module(self, module, name):
            return name.split(".")[0].startswith(plugin) or super().is_leaf_module(module, name)

    graph = Leaves().trace(model)
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(plugin):
            found[str(node.target)] = {
                str(n.target) if n.op == "call_module" else f"op::{n.name}" for n in node.all_input_nodes
            }
    return found


@pytest.mark.parametrize("recipe", ["asff", "seb"])
def test_every_input_of_a_multi_input_module_is_drawn(recipe):
    result = ps.apply(TinyFPN(), recipe, input_shape=(1, 3, 64, 64))
    expected = _inputs_in_the_edited_graph(result.model, recipe)
    assert expected and all(len(inputs) >= 2 for inputs in expected.values())
    svg = ps.picture(result)
    assert {module: _edges_into(svg, module) for module in expected} == expected
