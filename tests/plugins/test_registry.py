"""The registry: built-in plugins come from one explicit list, loaded once; a name is registered once
unless ``replace=True`` says otherwise; the tracer's leaves are the registered plugins' classes."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.graph.trace import is_leaf_type
from plugsurgeon.plugins import registry

PLUGINS_DIR = Path(registry.__file__).parent

COMMON = dict(roles=("residual.branch",), mode="after", infer=registry.site_channels, structural=("channels",),
              identity_at_init=False, paper="test, arXiv:0000.00000", year=2000, summary="test")


@pytest.fixture
def registered():
    """Names the test registers, removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        registry._REGISTRY.pop(name, None)


def _block():
    class Gate(nn.Module):  # children with state: traced through unless it is a registered plugin
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.fc = nn.Conv2d(channels, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(self.fc(x))

    return Gate


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_built_in_list_names_every_plugin_file_and_nothing_else():
    registering = {path.stem for path in PLUGINS_DIR.glob("*.py") if "@register_plugin(" in path.read_text(encoding="utf-8")}
    assert set(registry.BUILT_IN) == registering, (
        "plugsurgeon/plugins/registry.py BUILT_IN must list every module that registers plugins: "
        f"missing {sorted(registering - set(registry.BUILT_IN))}, without a file {sorted(set(registry.BUILT_IN) - registering)}"
    )
    assert len(set(registry.BUILT_IN)) == len(registry.BUILT_IN)


def test_every_built_in_plugin_comes_from_a_listed_module():
    modules = {spec.factory.__module__ for spec in ps.catalog().values()} - {"__main__"}
    built_in = {m for m in modules if m.startswith("plugsurgeon.")}
    assert built_in == registry.BUILT_IN_MODULES


def test_built_ins_load_once_on_first_use_and_their_names_are_taken_before_the_catalog_was_read():
    # A fresh process: importing the registry imports no plugin; registering a user plugin loads the
    # built-in list first, so 'cbam' is seen as taken; later lookups import nothing.
    out = _run(
        "import importlib, sys\n"
        "from torch import nn\n"
        "from plugsurgeon.plugins import registry\n"
        "print(sorted(m for m in registry.BUILT_IN_MODULES if m in sys.modules))\n"
        "class Mine(nn.Module):\n"
        "    def __init__(self, channels): super().__init__()\n"
        "    def forward(self, x): return x\n"
        "common = dict(roles=('residual.branch',), mode='after', infer=registry.site_channels, structural=('channels',),\n"
        "              identity_at_init=True, paper='p', year=2000, summary='s')\n"
        "try:\n"
        "    registry.register_plugin('cbam', **common)(Mine)\n"
        "except ValueError as error:\n"
        "    print(str(error).split(';')[0])\n"
        "print(all(m in sys.modules for m in registry.BUILT_IN_MODULES))\n"
        "calls = []\n"
        "real = importlib.import_module\n"
        "importlib.import_module = lambda *a, **k: calls.append(a) or real(*a, **k)\n"
        "first = registry.catalog()\n"
        "assert registry.catalog() == first and registry.get_plugin('cbam') is first['cbam']\n"
        "print(calls, first['cbam'].factory.__module__)\n"
        "registry.register_plugin('cbam', **common, replace=True)(Mine)\n"
        "print(registry.get_plugin('cbam').factory is Mine)\n"
    )
    assert out.splitlines() == [
        "[]",
        "plugin 'cbam' is already registered (by plugsurgeon.plugins.cbam.CBAM)",
        "True",
        "[] plugsurgeon.plugins.cbam",
        "True",
    ]


def test_a_taken_name_is_refused_unless_replaced_on_purpose(registered):
    Gate = _block()
    registered.append("t_gate")
    registry.register_plugin("t_gate", **COMMON)(Gate)
    first = ps.get_plugin("t_gate")

    Again = _block()  # the same cell run again: a new class of the same name
    with pytest.raises(ValueError, match=r"plugin 't_gate' is already registered \(by .*Gate\); pass replace=True"):
        registry.register_plugin("t_gate", **COMMON)(Again)
    assert ps.get_plugin("t_gate") is first

    assert registry.register_plugin("t_gate", **COMMON, replace=True)(Again) is Again
    assert ps.get_plugin("t_gate").classes == (Again,) and ps.get_plugin("t_gate") is not first
    assert "t_gate" in ps.catalog()


def test_replace_on_a_new_name_registers_it(registered):
    registered.append("t_fresh")
    registry.register_plugin("t_fresh", **COMMON, replace=True)(_block())
    assert ps.get_plugin("t_fresh").name == "t_fresh"


def test_registered_classes_are_leaves_while_registered(registered):
    Gate = _block()
    assert not is_leaf_type(Gate(4))  # a plain module with stateful children is traced through
    registered.append("t_leaf")
    registry.register_plugin("t_leaf", **COMMON)(Gate)
    assert is_leaf_type(Gate(4))
    assert is_leaf_type(type("SubGate", (Gate,), {})(4))  # subclasses too, as before
    Replacement = _block()
    registry.register_plugin("t_leaf", **COMMON, replace=True)(Replacement)
    assert is_leaf_type(Replacement(4)) and not is_leaf_type(Gate(4))
    registry._REGISTRY.pop("t_leaf")
    assert not is_leaf_type(Replacement(4))


def test_a_registered_plugin_is_one_call_in_the_trace(registered):
    Gate = _block()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Gate(4))
    gm = ps.trace(model, (1, 3, 8, 8)).parts[0].gm
    assert "1.fc" in {n.target for n in gm.graph.nodes if n.op == "call_module"}
    registered.append("t_one_call")
    registry.register_plugin("t_one_call", **COMMON)(Gate)
    gm = ps.trace(model, (1, 3, 8, 8)).parts[0].gm
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "1"]


def test_a_factory_function_must_name_its_classes(registered):
    Gate = _block()

    def make_gate(channels: int) -> nn.Module:
        return Gate(channels)

    with pytest.raises(ValueError, match=r"plugin 't_function': a factory function must name the module classes"):
        registry.register_plugin("t_function", **COMMON)(make_gate)
    registered.append("t_function")
    registry.register_plugin("t_function", **COMMON, classes=(Gate,))(make_gate)
    assert ps.get_plugin("t_function").classes == (Gate,) and is_leaf_type(Gate(2))


@pytest.mark.parametrize("module", ["plugsurgeon.plugins.registry", "plugsurgeon.plugins.args",
                                    "plugsurgeon.plugins.safe", "plugsurgeon.plugins._layers"])
def test_the_docstring_examples_run(module):
    before = dict(registry._REGISTRY)
    try:
        failed, attempted = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(before)
    assert attempted and not failed
