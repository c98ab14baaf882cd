"""A write that fails for lack of space is the user's to fix (exit 1), whichever library wrote the bytes:
safetensors reports a full disk as its own SafetensorError, which is not an OSError."""

from __future__ import annotations

import pytest
import safetensors.torch
from safetensors import SafetensorError

import plugsurgeon as ps
from plugsurgeon.cli.app import run
from plugsurgeon.surgery.record import set_provenance
from tests.nets import TinyResNet

# What safetensors 0.4-0.8 raise when the disk fills up during save_model (seen on a 64 KiB tmpfs).
FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture
def full_disk(monkeypatch):
    def full(model, filename, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise SafetensorError(FULL)

    monkeypatch.setattr(safetensors.torch, "save_model", full)


def test_a_full_disk_is_a_clean_error_and_leaves_nothing_behind(tmp_path, full_disk):
    model = TinyResNet()
    set_provenance(model, {"source": "tests.nets:TinyResNet", "steps": []})
    with pytest.raises(ps.PlugsurgeonError, match=r"cannot write to .*: No space left on device \(os error 28\)\n") as refused:
        ps.save(model, tmp_path / "out")
    assert "SafetensorError" not in str(refused.value) and refused.value.hint
    assert not (tmp_path / "out").exists()


def test_a_full_disk_exits_1_from_the_command_line(tmp_path, full_disk, capsys):
    out = tmp_path / "out"
    code = run(["apply", "tests.nets:TinyResNet", "--recipe", "se", "--input-shape", "1,3,32,32", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "No space left on device" in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_other_safetensors_errors_stay_bugs(tmp_path, monkeypatch):
    def refuses(model, filename, **kwargs):
        raise SafetensorError("Error while serializing: tensor is not contiguous")

    monkeypatch.setattr(safetensors.torch, "save_model", refuses)
    model = TinyResNet()
    set_provenance(model, {"source": "tests.nets:TinyResNet", "steps": []})
    with pytest.raises(SafetensorError):
        ps.save(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
