"""A saved directory is data: loading one never imports or runs code it names, unless the caller
trusts it, and never code stored inside it."""

from __future__ import annotations

import sys

import pytest

import plugsurgeon as ps
from tests.security.conftest import read_manifest, snapshot, write_manifest

PAYLOAD = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported")


def make():
    pathlib.Path({marker!r}).write_text("called")
    import torch
    return torch.nn.Linear(1, 1)
"""


@pytest.fixture
def evil(plain_dir, tmp_path, monkeypatch):
    """The issue's attack: payload.py inside the directory, and the directory importable from the
    current directory (as under `python -c`, a REPL or Jupyter)."""
    marker = tmp_path / "executed"
    directory = plain_dir.rename(tmp_path / "evil_model")
    (directory / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_model", raising=False)
    return directory, marker


def _source(directory, source):
    data = read_manifest(directory)
    data["source"] = source
    write_manifest(directory, data)


@pytest.mark.parametrize("package", [True, False], ids=["package", "namespace-package"])
def test_payload_inside_the_directory_never_runs(evil, package):
    directory, marker = evil
    if package:
        (directory / "__init__.py").write_text(PAYLOAD.format(marker=str(marker)))
    _source(directory, "evil_model.payload:make")
    before = snapshot(directory)
    with pytest.raises(ps.ModelLoadError, match=r"(?s)names Python code to build its model: source 'evil_model\.payload:make'.*trust_source=True"):
        ps.load("evil_model")
    # Trusting the directory does not extend to code it carries itself.
    with pytest.raises(ps.ModelLoadError, match=r"names code stored inside itself: source 'evil_model\.payload:make' imports 'evil_model'"):
        ps.load("evil_model", trust_source=True)
    with pytest.raises(ps.ModelLoadError, match="trust_source=True"):
        ps.load_model("evil_model")  # the same directory given as a model spec
    assert not marker.exists()
    assert "evil_model" not in sys.modules and "evil_model.payload" not in sys.modules
    assert snapshot(directory) == before


def test_payload_deeper_inside_an_outside_package_never_runs(evil, tmp_path, monkeypatch):
    """The module is found inside the directory through a package outside it: refused without importing either."""
    directory, marker = evil
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "__init__.py").write_text(PAYLOAD.format(marker=str(marker)))
    directory.rename(outer / "evil_model")
    monkeypatch.delitem(sys.modules, "outer", raising=False)
    _source(outer / "evil_model", "outer.evil_model.payload:make")
    with pytest.raises(ps.ModelLoadError, match="names code stored inside itself.*imports 'outer.evil_model'"):
        ps.load(outer / "evil_model", trust_source=True)
    assert not marker.exists() and "outer" not in sys.modules


@pytest.mark.parametrize("source", ["sys:exit", "os:abort", "code:interact", "builtins:exec", "subprocess:Popen", "tests.nets:TinyResNet"])
def test_import_paths_are_refused_unless_trusted(plain_dir, source):
    """Any installed module's callable is code: sys:exit would escape every `except Exception`."""
    _source(plain_dir, source)
    module = source.partition(":")[0]
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(plain_dir)
    assert f"source '{source}' would import '{module}'" in refused.value.message
    assert "trust_source=True" in refused.value.hint and "--trust-source" in refused.value.cli_hint  # Python, and the CLI's words


def test_trusted_factory_that_exits_is_one_load_error(plain_dir):
    _source(plain_dir, "sys:exit")
    with pytest.raises(ps.ModelLoadError, match=r"sys:exit\(\) failed: SystemExit"):
        ps.load(plain_dir, trust_source=True)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("model", "unknown model 'model'"),  # the directory's own name: it used to load itself until RecursionError
        (".", "names a model that cannot be built"),
        ("./model", "names a model that cannot be built"),
        ("../model", "names a model that cannot be built"),
        ("{dir}", "names a model that cannot be built"),
        ("torchvision:../model", "is not a torchvision model name"),
        ("timm:hf-hub:attacker/model", "is not a timm model name"),
        ("timm:../../model", "is not a timm model name"),
        ("model.payload:", "is not an import path"),
        (":make", "is not an import path"),
        ("os.path/../x:make", "is not an import path"),
        ("a" * 301, "field 'source'"),
        ("", "field 'source'"),
    ],
)
def test_sources_that_name_paths_are_refused(plain_dir, monkeypatch, source, problem):
    monkeypatch.chdir(plain_dir.parent)
    _source(plain_dir, source.replace("{dir}", str(plain_dir)))
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(plain_dir, trust_source=True)
    assert problem in refused.value.message


def test_a_factory_that_loads_its_own_directory_is_refused(plain_dir, tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "loopy.py").write_text(f"import plugsurgeon\n\ndef make():\n    return plugsurgeon.load({str(plain_dir)!r}, trust_source=True)\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "loopy", raising=False)
    _source(plain_dir, "loopy:make")
    with pytest.raises(ps.ModelLoadError, match="loads itself"):
        ps.load(plain_dir, trust_source=True)


def test_trusted_sources_outside_the_directory_load(edited_dir):
    with pytest.raises(ps.ModelLoadError, match="trust_source=True"):
        ps.load(edited_dir)
    model = ps.load(edited_dir, trust_source=True)
    assert type(model).__name__ == "TinyResNet" and hasattr(model.layer1[0], "se")
    assert type(ps.load_model(str(edited_dir), trust_source=True)).__name__ == "TinyResNet"
