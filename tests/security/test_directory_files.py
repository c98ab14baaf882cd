"""Loading reads only manifest.json and the weights file, both inside the directory; a name that
leads out is refused with one message whatever lies outside, and FIFOs stand in for files that
must never be opened (a reader would block on them)."""

from __future__ import annotations

import os
import re

import pytest

import plugsurgeon as ps
from tests.security.conftest import finishes, opened_paths, read_manifest, snapshot, write_manifest

OUTSIDE = "which is not a plain file name inside the directory"


@pytest.fixture
def outside(tmp_path):
    """Files next to the directory, where a manifest must not reach: a real safetensors file and a FIFO."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "real.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    os.mkfifo(place / "fifo.safetensors")
    return place


def _weights(directory, name):
    data = read_manifest(directory)
    data["weights"] = name
    write_manifest(directory, data)


@pytest.mark.parametrize(
    "name",
    ["../outside/real.safetensors", "../outside/fifo.safetensors", "{outside}/real.safetensors", "{outside}/fifo.safetensors",
     "{outside}/missing.safetensors", "/etc/passwd", "sub/../../outside/real.safetensors", "..", ".", "./weights.safetensors",
     "weights.safetensors/..", "C:\\weights.safetensors", "weights\x00.safetensors", ".hidden"],
)
def test_weights_names_that_leave_the_directory(plain_dir, outside, name):
    _weights(plain_dir, name.replace("{outside}", str(outside)))
    before = snapshot(plain_dir)
    with opened_paths() as opened:
        error = finishes(lambda: ps.load(plain_dir))
    assert isinstance(error, ps.ModelLoadError) and OUTSIDE in error.message
    assert not [p for p in opened if str(outside) in p]
    assert snapshot(plain_dir) == before


def test_the_answer_does_not_tell_what_exists_outside(plain_dir, outside):
    messages = []
    for name in ("real.safetensors", "missing.safetensors", "fifo.safetensors"):
        _weights(plain_dir, str(outside / name))
        messages.append(re.sub(r"names '[^']*' as", "names NAME as", str(finishes(lambda: ps.load(plain_dir)))))
    assert messages[0] == messages[1] == messages[2]


@pytest.mark.parametrize("target", ["real.safetensors", "missing.safetensors", "fifo.safetensors"])
def test_weights_link_out_of_the_directory(plain_dir, outside, target):
    (plain_dir / "weights.safetensors").unlink()
    (plain_dir / "weights.safetensors").symlink_to(outside / target)
    with opened_paths() as opened:
        error = finishes(lambda: ps.load(plain_dir))
    assert isinstance(error, ps.ModelLoadError) and OUTSIDE in error.message
    assert not [p for p in opened if str(outside) in p]


@pytest.mark.parametrize("target", ["real.safetensors", "fifo.safetensors", "missing.safetensors"])
def test_manifest_link_out_of_the_directory(plain_dir, outside, target):
    (plain_dir / "manifest.json").unlink()
    (plain_dir / "manifest.json").symlink_to(outside / target)
    error = finishes(lambda: ps.load(plain_dir))
    assert isinstance(error, ps.ModelLoadError) and "manifest.json' is a link to a file outside the directory" in error.message


def test_links_inside_the_directory_are_followed(plain_dir):
    (plain_dir / "weights.safetensors").rename(plain_dir / "stored.safetensors")
    (plain_dir / "weights.safetensors").symlink_to("stored.safetensors")
    assert type(ps.load(plain_dir)).__name__ == "SqueezeNet"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_weights_that_are_not_regular_files(plain_dir, kind):
    (plain_dir / "weights.safetensors").unlink()
    if kind == "fifo":
        os.mkfifo(plain_dir / "weights.safetensors")
    else:
        (plain_dir / "weights.safetensors").mkdir()
    error = finishes(lambda: ps.load(plain_dir))
    assert isinstance(error, ps.ModelLoadError) and "weights.safetensors' is not a regular file" in error.message


def test_manifest_that_is_a_fifo(plain_dir):
    (plain_dir / "manifest.json").unlink()
    os.mkfifo(plain_dir / "manifest.json")
    error = finishes(lambda: ps.load(plain_dir))
    assert isinstance(error, ps.ModelLoadError) and "manifest.json' is not a regular file" in error.message


def test_missing_weights(plain_dir):
    (plain_dir / "weights.safetensors").unlink()
    with pytest.raises(ps.ModelLoadError, match="has a manifest but no weights.safetensors"):
        ps.load(plain_dir)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ps.ModelLoadError, match="is not a plugsurgeon model directory"):
        ps.load(tmp_path)
    with pytest.raises(ps.ModelLoadError, match="does not exist"):
        ps.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ps.ModelLoadError, match="is not a directory"):
        ps.load(tmp_path / "file")
