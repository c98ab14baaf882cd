"""Saving and loading without pickle: safetensors weights plus a JSON manifest that replays how the model was made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from plugsurgeon.errors import ModelLoadError, PlugsurgeonError
from plugsurgeon.provenance import get_provenance

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT = "plugsurgeon/1"


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    source: str
    steps: list[dict[str, Any]]
    weights: str = WEIGHTS
    versions: dict[str, str] = {}


def save(model: nn.Module, directory: str | Path, *, source: str | None = None) -> Path:
    """Write ``weights.safetensors`` and ``manifest.json`` to ``directory``.

    The manifest records where the model came from (``source``: what ``load_model`` takes) and every
    surgery step applied since, with the full recipe, so ``load`` rebuilds the same structure.
    """
    from safetensors.torch import save_model

    provenance = get_provenance(model)
    source = source or provenance.get("source")
    if not source:
        raise PlugsurgeonError(
            f"plugsurgeon does not know how to rebuild this {type(model).__name__}",
            hint="pass source='package.module:factory' (or a torchvision name) to save(), or load the model with ps.load_model",
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(format=FORMAT, source=source, steps=provenance.get("steps", []), versions=_versions())
    save_model(model, str(directory / WEIGHTS))
    (directory / MANIFEST).write_text(json.dumps(manifest.model_dump(), indent=2) + "\n", encoding="utf-8")
    return directory


def load(directory: str | Path) -> nn.Module:
    """Rebuild a saved model: build the source, replay the recorded steps, then load the weights strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_weights_into

    from plugsurgeon.models import load_model
    from plugsurgeon.provenance import record_source
    from plugsurgeon.steps import replay

    directory = Path(directory)
    manifest = read_manifest(directory)
    model = load_model(manifest.source)
    record_source(model, manifest.source)
    for step in manifest.steps:
        model = replay(model, step)
    weights = directory / manifest.weights
    if not weights.is_file():
        raise ModelLoadError(f"'{directory}' has a manifest but no {manifest.weights}", hint="save the model again with ps.save")
    try:
        missing, unexpected = load_weights_into(model, str(weights), strict=False)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"'{weights}' is not a valid safetensors file: {error}") from None
    if missing or unexpected:
        raise ModelLoadError(
            f"'{weights}' does not match the model rebuilt from the manifest: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}",
            hint="the directory was edited by hand or written by another plugsurgeon version",
        )
    return model.eval()


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"'{directory}' is not a plugsurgeon model directory (no {MANIFEST})", hint="write one with `plugsurgeon apply MODEL --recipe R -o DIR`")
    try:
        manifest = Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValidationError) as error:
        raise ModelLoadError(f"'{path}' is not a valid plugsurgeon manifest: {str(error).splitlines()[0]}") from None
    if manifest.format != FORMAT:
        raise ModelLoadError(f"'{path}' has format '{manifest.format}', this plugsurgeon reads '{FORMAT}'")
    return manifest


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` strictly: safetensors, or a weights-only torch file. Never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    state = _read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ModelLoadError(f"'{path}' does not fit the model: {' '.join(lines[1:3])[:400]}",
                             hint="load the checkpoint the model was trained with; surgery keeps the original names") from None
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with path.open("rb") as handle:
        head = handle.read(16)
    looks_like_safetensors = path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    if looks_like_safetensors:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(f"'{path}' is not a valid safetensors file: {error}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - weights_only refuses objects with various errors
        raise ModelLoadError(
            f"'{path}' is neither a safetensors file nor a weights-only torch checkpoint; it was not unpickled",
            hint=f"convert it where you trust it: safetensors.torch.save_file(model.state_dict(), 'model.safetensors') ({type(error).__name__})",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"'{path}' holds no state_dict of tensors", hint="save model.state_dict() with safetensors")
    return state


def _versions() -> dict[str, str]:
    import torchvision

    from plugsurgeon import __version__

    return {"plugsurgeon": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}
