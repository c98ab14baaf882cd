"""``load_model``: one entry for every way a user names a model (a builder, an import path, a saved directory)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from plugsurgeon import progress
from plugsurgeon.store.saved import load
from plugsurgeon.store.sources import build_source
from plugsurgeon.surgery.record import record_source


def load_model(spec: str | Path, *, trust_source: bool = False) -> nn.Module:
    """Build a model from a spec, with random weights (nothing is downloaded).

    - ``resnet50`` or ``torchvision:resnet50``: any torchvision builder (detection and segmentation
      builders get ``weights_backbone=None`` too);
    - ``timm:NAME``: a timm model (``pip install 'plugsurgeon[timm]'``);
    - ``package.module:factory``: a callable returning an nn.Module, imported and called because
      the caller named it;
    - a directory written by ``plugsurgeon apply -o`` / ``ps.save``, loaded by ``ps.load``:
      ``trust_source`` is passed on, and only then may the directory name code to run.
    """
    text = str(spec)
    if Path(text).is_dir():
        return load(text, trust_source=trust_source)
    progress.step(f"building {text}")
    model = build_source(text, trusted=True)
    record_source(model, text)
    return model
