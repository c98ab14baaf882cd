"""Fixtures for the hostile-input suite: small saved directories to tamper with, and witnesses that
nothing ran (marker files) and nothing outside a directory was opened (an audit hook, and FIFOs that
would block whoever opened them)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

import plugsurgeon as ps
from tests.nets import TinyResNet

EDITED_SHAPE = (1, 3, 32, 32)

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside `opened_paths`


@contextmanager
def opened_paths():
    """Every path Python code opens inside the block (native readers are covered by FIFOs instead)."""
    global _opened
    _opened = found = []
    try:
        yield found
    finally:
        _opened = None


def finishes(function, timeout: float = 20.0):
    """Run ``function`` in a thread and return what it raised; fails if it blocks (it opened a FIFO)."""
    outcome: dict = {}

    def target():
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked: it opened a FIFO it should never have touched"
    return outcome.get("error")


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry under ``directory``: file bytes, link targets, directories."""
    found: dict[str, object] = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = ("link", os.readlink(path))
        elif path.is_file():
            found[key] = path.read_bytes()
        else:
            found[key] = "dir" if path.is_dir() else "other"
    return found


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def write_manifest(directory: Path, data: dict) -> None:
    (directory / "manifest.json").write_text(json.dumps(data))


@pytest.fixture(scope="session")
def _plain(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("plain") / "model"
    ps.save(ps.load_model("squeezenet1_1"), directory)
    return directory


@pytest.fixture
def plain_dir(_plain, tmp_path) -> Path:
    """A saved torchvision model without steps (loads as data): a fresh copy to tamper with."""
    directory = tmp_path / "model"
    shutil.copytree(_plain, directory)
    return directory


@pytest.fixture(scope="session")
def _edited(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("edited") / "model"
    result = ps.apply(TinyResNet(), "se", input_shape=EDITED_SHAPE)
    ps.save(result.model, directory, source="tests.nets:TinyResNet")
    return directory


@pytest.fixture
def edited_dir(_edited, tmp_path) -> Path:
    """A saved TinyResNet with SE on its residual branches (an import-path source: loads when trusted)."""
    directory = tmp_path / "edited"
    shutil.copytree(_edited, directory)
    return directory
