"""Where models come from: torchvision names, timm:NAME, package.module:factory, directories written by save()."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from torch import nn

from plugsurgeon.errors import ModelLoadError, UnknownNameError, did_you_mean
from plugsurgeon.provenance import record_source


def load_model(spec: str | Path) -> nn.Module:
    """Build a model from a spec, with random weights (nothing is downloaded).

    - ``resnet50`` or ``torchvision:resnet50``: any torchvision builder (detection and segmentation
      builders get ``weights_backbone=None`` too);
    - ``timm:NAME``: a timm model (``pip install 'plugsurgeon[timm]'``);
    - ``package.module:factory``: a callable returning an nn.Module;
    - a directory written by ``plugsurgeon apply -o`` / ``ps.save``.
    """
    text = str(spec)
    if Path(text).is_dir():
        from plugsurgeon.io import load

        return load(text)
    if text.startswith("timm:"):
        model = _timm(text[5:])
    elif text.startswith("torchvision:"):
        model = _torchvision(text[len("torchvision:") :])
    elif ":" in text:
        model = _factory(text)
    else:
        model = _torchvision(text)
    record_source(model, text)
    return model


def _torchvision(name: str) -> nn.Module:
    import torchvision.models as tvm

    names = tvm.list_models()
    if name not in names:
        suggestion = did_you_mean(name, names)
        raise UnknownNameError(
            f"unknown model '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="use a torchvision model name (torchvision.models.list_models()), timm:NAME, package.module:factory or a saved directory",
        )
    kwargs = {"weights": None}
    if name in tvm.list_models(module=tvm.detection) or name in tvm.list_models(module=tvm.segmentation):
        kwargs["weights_backbone"] = None
    with warnings.catch_warnings():
        # Inception/GoogLeNet warn about their init scheme; nothing for a user to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        if name in ("inception_v3", "googlenet"):
            kwargs["init_weights"] = True
        return tvm.get_model(name, **kwargs)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelLoadError("timm models need the timm extra", hint="pip install 'plugsurgeon[timm]'") from None
    if name not in timm.list_models():
        suggestion = did_you_mean(name, timm.list_models())
        raise UnknownNameError(f"unknown timm model '{name}'" + (f"; {suggestion}" if suggestion else ""), hint="timm.list_models() lists them")
    return timm.create_model(name, pretrained=False)


def _factory(spec: str) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelLoadError(f"cannot import '{module_name}' for model '{spec}': {error}", hint="pass package.module:factory with the package importable") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelLoadError(f"'{module_name}' has no callable '{attribute}'", hint="pass package.module:factory where factory() returns an nn.Module")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - the user's factory may raise anything
        raise ModelLoadError(f"{spec}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    return model
