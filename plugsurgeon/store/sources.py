"""Where models come from: torchvision names, timm:NAME, package.module:factory, directories written by save().

A model spec the caller types is theirs to run, import paths included. A source read from a saved
directory is data written by someone else: ``build_source`` builds torchvision and timm models
(known builders called with fixed, download-free arguments) and runs an import path only when the
caller says they trust the directory, and never one that lies inside the directory itself.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from torch import nn

from plugsurgeon.errors import ModelLoadError, UnknownNameError, did_you_mean

SourceKind = Literal["torchvision", "timm", "factory"]

MAX_SOURCE_LENGTH = 300
# Builder names: torchvision's and timm's names are identifiers with dots and dashes at most; nothing
# that a filesystem or a hub resolver would read as a path or a URL (timm's "hf-hub:" has a colon).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}")
_MODULE = re.compile(r"[A-Za-z_]\w{0,99}(\.[A-Za-z_]\w{0,99}){0,19}")
_ATTRIBUTE = re.compile(r"[A-Za-z_]\w{0,99}")


def parse_source(text: str) -> tuple[SourceKind, str]:
    """The kind of a model spec and the builder name or import path it holds; refuses malformed ones."""
    if not isinstance(text, str) or not text or len(text) > MAX_SOURCE_LENGTH:
        raise ModelLoadError(f"model source {str(text)[:80]!r} is empty or longer than {MAX_SOURCE_LENGTH} characters",
                             hint="use a torchvision name, timm:NAME or package.module:factory")
    if text.startswith(("timm:", "torchvision:")):
        kind, _, name = text.partition(":")
        if not _NAME.fullmatch(name):
            raise UnknownNameError(f"'{text}' is not a {kind} model name", hint=f"{kind} names are letters, digits, '_', '.' and '-'")
        return kind, name  # type: ignore[return-value]  # kind is 'timm' or 'torchvision': the prefix just matched
    if ":" in text:
        module_name, _, attribute = text.partition(":")
        if not _MODULE.fullmatch(module_name) or not _ATTRIBUTE.fullmatch(attribute):
            raise ModelLoadError(f"'{text}' is not an import path of the form package.module:factory",
                                 hint="module and factory names are Python identifiers; torchvision names need no colon")
        return "factory", text
    if not _NAME.fullmatch(text):
        raise UnknownNameError(f"unknown model '{text[:80]}'",
                               hint="use a torchvision model name (torchvision.models.list_models()), timm:NAME, package.module:factory or a saved directory")
    return "torchvision", text


def build_source(source: str, *, trusted: bool, directory: Path | None = None) -> nn.Module:
    """Build the model ``source`` names; never reads it as a path.

    An import path runs code, so it is built only when ``trusted``; and never when the module lies in
    ``directory`` (a saved directory whose manifest points into itself), trusted or not.
    """
    kind, name = parse_source(source)
    if kind == "torchvision":
        return _torchvision(name)
    if kind == "timm":
        return _timm(name)
    if not trusted:
        module_name, _, attribute = name.partition(":")
        where = f"'{directory}'" if directory is not None else "this model source"
        raise ModelLoadError(
            f"{where} names Python code to build its model: source '{name}' would import '{module_name}' and call "
            f"{attribute}(); a saved directory runs no code unless you say you trust it",
            hint="if you trust whoever wrote it, pass trust_source=True; directories of torchvision and timm models need neither",
            cli_hint="if you trust whoever wrote it, pass --trust-source; directories of torchvision and timm models need neither",
        )
    if directory is not None:
        _refuse_code_inside(name, directory)
    return _factory(name)


def _torchvision(name: str) -> nn.Module:
    import torchvision.models as tvm

    names = tvm.list_models()
    if name not in names:
        suggestion = did_you_mean(name, names)
        raise UnknownNameError(
            f"unknown model '{name}'" + (f"; {suggestion}" if suggestion else ""),
            hint="use a torchvision model name (torchvision.models.list_models()), timm:NAME, package.module:factory or a saved directory",
        )
    kwargs: dict[str, Any] = {"weights": None}
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
    # Only names timm lists: create_model would also resolve hub references ("hf-hub:...") over the network.
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
    except (Exception, SystemExit) as error:  # noqa: BLE001 - importing runs the module's code
        raise ModelLoadError(f"importing '{module_name}' for model '{spec}' failed: {type(error).__name__}: {error}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelLoadError(f"'{module_name}' has no callable '{attribute}'", hint="pass package.module:factory where factory() returns an nn.Module")
    try:
        model = factory()
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the factory may raise anything, sys.exit included
        raise ModelLoadError(f"{spec}() failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    return model


def _refuse_code_inside(spec: str, directory: Path) -> None:
    """Refuse an import path whose module (or a package on its way) lies in ``directory``, found
    without importing anything: a saved directory must not carry the code that builds it."""
    root = directory.resolve()
    parts = spec.partition(":")[0].split(".")
    search: list[str] | None = None  # None: sys.path, as for a top-level import
    for depth, part in enumerate(parts, start=1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None:
            origin, locations = getattr(loaded, "__file__", None), getattr(loaded, "__path__", None)
        else:
            # PathFinder looks a module up on a path without running code, unlike importlib.util.find_spec,
            # which imports the parent packages first.
            try:
                found = importlib.machinery.PathFinder.find_spec(part, search)
            except (ImportError, ValueError, OSError):
                found = None
            if found is None:
                return  # built in, frozen or missing: nothing on disk, and the import says so if missing
            origin, locations = found.origin, found.submodule_search_locations
        search = [str(p) for p in (locations or [])]
        if any(_within(Path(p), root) for p in [origin, *search] if isinstance(p, str) and p):
            raise ModelLoadError(
                f"'{directory}' names code stored inside itself: source '{spec}' imports '{name}' from the directory",
                hint="a saved directory holds data only; put the factory in an installed package and save again",
            )
        if not search:
            return


def _within(location: Path, root: Path) -> bool:
    try:
        resolved = location.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved == root or root in resolved.parents
