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

    The spec is recorded on the model, so that ``ps.save`` can write how to rebuild it.

    Args:
        spec: What to build:

            - ``resnet50`` or ``torchvision:resnet50``: any torchvision builder (detection and
              segmentation builders get ``weights_backbone=None`` too);
            - ``timm:NAME``: a timm model (``pip install 'plugsurgeon[timm]'``);
            - ``package.module:factory``: a callable returning an nn.Module, imported and called
              because the caller named it;
            - a directory written by ``plugsurgeon apply -o`` / ``ps.save``, loaded by ``ps.load``.
        trust_source: Passed on to ``ps.load`` for a directory: only then may its manifest name code
            to run.

    Returns:
        The model, with random weights (or, for a directory, the saved ones), in train mode
        (a directory's model: eval mode).

    Raises:
        UnknownNameError: ``spec`` names no torchvision or timm model.
        ModelLoadError: The spec cannot be built (a factory that fails or returns no module, a
            directory that does not load).

    Examples:
        >>> model = ps.load_model("resnet50")
        >>> vit = ps.load_model("timm:vit_small_patch16_224")
        >>> mine = ps.load_model("mypackage.models:build_net")
    """
    text = str(spec)
    if Path(text).is_dir():
        return load(text, trust_source=trust_source)
    progress.step(f"building {text}")
    model = build_source(text, trusted=True)
    record_source(model, text)
    return model
