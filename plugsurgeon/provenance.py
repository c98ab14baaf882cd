"""What a model was built from, carried on the model object so save() can write a manifest that load() replays.

``source`` is a model spec (never a path); ``steps`` are plain JSON records, whose format
plugsurgeon.steps defines and validates (a recipe step carries the edits it made).
"""

from __future__ import annotations

from typing import Any

from torch import nn

_ATTRIBUTE = "_plugsurgeon_provenance"


def get_provenance(model: nn.Module) -> dict[str, Any]:
    return dict(model.__dict__.get(_ATTRIBUTE, {"source": None, "steps": []}))


def set_provenance(model: nn.Module, provenance: dict[str, Any]) -> None:
    # Written to __dict__ directly: nn.Module.__setattr__ would try to register dicts of tensors.
    model.__dict__[_ATTRIBUTE] = provenance


def record_source(model: nn.Module, source: str) -> None:
    set_provenance(model, {"source": source, "steps": []})


def record_step(old: nn.Module, new: nn.Module, step: dict[str, Any]) -> None:
    provenance = get_provenance(old)
    provenance["steps"] = [*provenance.get("steps", []), step]
    set_provenance(new, provenance)
