"""Saving and loading without pickle: safetensors weights plus a JSON manifest of what was done to the model.

A saved directory is data. ``load`` builds the model its manifest names (a torchvision or timm
builder; an import path only when the caller trusts the directory), redoes the recorded edits,
checks that they are exactly the edits recorded, and copies in the weights after checking every
name, shape and dtype. It reads only ``manifest.json`` and the weights file, both inside the
directory, and both bounded in size.

Compatibility rule (format ``plugsurgeon/2``):

- the manifest's ``format`` must be the one this version writes; older formats did not record the
  edits and are refused with that reason;
- a directory written by a newer plugsurgeon minor (or major) version than this one is refused:
  its plugins and locators may build what this version cannot (patch releases never change either);
- torch, torchvision and timm versions may differ. The rebuild is checked instead: the replayed
  edits must equal the recorded ones and every tensor must have the recorded name and shape, so a
  builder that changed between versions is refused, with the differing versions named, while an
  unchanged one loads. The new modules compute with this version's plugin code;
- ``config`` records what the model holds outside its tensors that its source does not rebuild (a
  torchvision detector's resize size and detection thresholds: plugsurgeon.store.config). It is
  set before the edits are redone and must read back the same after. A manifest written before
  ``config`` existed has none and loads at the builder's defaults, as it did then: that is right for
  every model built by ``load_model``, which plugsurgeon never reconfigures, and refusing them
  would refuse those too for the sake of models whose configuration no file recorded.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import stat
import zipfile
from collections.abc import Mapping
from itertools import accumulate
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from torch import nn

from plugsurgeon.errors import ModelLoadError, PlugsurgeonError, UnknownNameError, first_line
from plugsurgeon.store.config import MAX_RECORDS, ModuleConfig, apply_config, read_config
from plugsurgeon.store.replay import replay, resolve
from plugsurgeon.store.sources import build_source, parse_source
from plugsurgeon.surgery.record import MAX_STEPS, StepRecord, describe, get_provenance, set_provenance

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT = "plugsurgeon/2"
MAX_MANIFEST_BYTES = 2 << 20  # a thousand recorded edits take about 300 KB
MAX_JSON_DEPTH = 32  # the format nests 8 levels deep; plugin arguments get the rest
# A checkpoint may hold optimizer state next to the weights (Adam keeps two more copies): up to
# eight times the model's size in float32, plus room for small models' metadata.
CHECKPOINT_FACTOR = 8
CHECKPOINT_SLACK = 16 << 20
MAX_ZIP_ENTRIES = 100_000

_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_RELEASE = re.compile(r"(\d{1,6})\.(\d{1,6})")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Annotated[str, StringConstraints(max_length=64)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    steps: list[StepRecord] = Field(default_factory=list, max_length=MAX_STEPS)
    weights: Annotated[str, StringConstraints(min_length=1, max_length=255)] = WEIGHTS
    versions: dict[Annotated[str, StringConstraints(max_length=32)], Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=dict, max_length=16)
    # What the model holds outside its tensors that its source does not rebuild (a detector's resize
    # size and thresholds). Absent in manifests written before it was recorded: those load with the
    # builder's defaults, as they always did.
    config: list[ModuleConfig] = Field(default_factory=list, max_length=MAX_RECORDS)


# Directories being loaded in this context: a trusted factory that loads its own directory again
# would otherwise recurse until Python gives up.
_LOADING: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar("plugsurgeon_loading", default=frozenset())


def save(model: nn.Module, directory: str | Path, *, source: str | None = None, force: bool = False) -> Path:
    """Write ``weights.safetensors`` and ``manifest.json`` to ``directory``; no pickle.

    The manifest records the model's source (what ``load_model`` takes: a torchvision name,
    ``timm:NAME``, or ``package.module:factory``, which loading then runs only when trusted), every
    step applied since with the edits it made, and the versions it was written with. A directory
    that already holds a saved model is refused unless ``force``; nothing else in it is touched,
    and the two files are written whole or not at all.

    Args:
        model: The model to save: one built by ``ps.load_model`` (which records its source) and
            edited by ``ps.apply``/``ps.deploy``, or any model with ``source`` given.
        directory: Where to write; created if it does not exist.
        source: How to build the model before the recorded steps (``"resnet50"``, ``"timm:NAME"``,
            ``"package.module:factory"``); default: the source recorded on the model.
        force: Overwrite a saved model already in ``directory``.

    Returns:
        The directory written.

    Raises:
        PlugsurgeonError: ``model`` is not an ``nn.Module``, its source is unknown, ``directory``
            already holds a saved model (without ``force``), the model is not what its source and
            steps rebuild, or a plugin argument cannot be written as JSON.

    Examples:
        >>> model = ps.load_model("resnet50")
        >>> result = ps.apply(model, "cbam")
        >>> ps.save(result.model, "resnet50_cbam")
        PosixPath('resnet50_cbam')
    """
    from safetensors.torch import save_model

    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="save the model, not its state_dict")
    provenance = get_provenance(model)
    source = source or provenance.get("source")
    if not source:
        raise PlugsurgeonError(
            f"plugsurgeon does not know how to rebuild this {type(model).__name__}",
            hint="pass source='package.module:factory' (or a torchvision name) to save(), or load the model with ps.load_model",
        )
    parse_source(source)
    directory = Path(directory)
    _check_target(directory, force)
    steps = [dict(step) for step in provenance.get("steps", [])]
    config = read_config(model)
    if any(step.get("kind") == "recipe" and "edits" not in step for step in steps):
        # Steps recorded without their edits are resolved by redoing them on a fresh build, which
        # must give the model being saved.
        rebuilt, steps = resolve(source, steps, config=config)
        _check_rebuilt(rebuilt, model)
    try:
        manifest = Manifest(format=FORMAT, source=source, steps=steps, versions=_versions(model, source), config=config)  # type: ignore[arg-type]  # steps: JSON records, validated here
        text = json.dumps(manifest.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
    except (ValidationError, ValueError) as error:
        detail = describe(error) if isinstance(error, ValidationError) else str(error)
        raise PlugsurgeonError(f"cannot record how this {type(model).__name__} was made: {detail}",
                               hint="plugin arguments must be finite numbers, strings, booleans or lists of them") from None
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        raise PlugsurgeonError(f"the manifest would be larger than {MAX_MANIFEST_BYTES} bytes", hint="apply fewer edits per model")
    created = not directory.exists()
    temporary = [directory / f".{WEIGHTS}.{os.getpid()}.tmp", directory / f".{MANIFEST}.{os.getpid()}.tmp"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_model(model, str(temporary[0]))
        temporary[1].write_text(text, encoding="utf-8")
        # Renames replace links rather than writing through them, and leave no half-written file.
        os.replace(temporary[0], directory / WEIGHTS)
        os.replace(temporary[1], directory / MANIFEST)
    except BaseException as error:
        for path in temporary:
            with contextlib.suppress(OSError):
                path.unlink()
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(error, OSError):
            raise PlugsurgeonError(f"cannot write to '{directory}': {error.strerror or error}", hint="choose a directory you can write to") from None
        if _is_write_error(error):
            raise PlugsurgeonError(f"cannot write to '{directory}': {_io_reason(error)}",
                                   hint="free some space or choose a directory you can write to") from None
        raise
    return directory


def _is_write_error(error: BaseException) -> bool:
    """safetensors reports a failed write (a full disk, a quota) as its own SafetensorError, not OSError;
    its other errors (a tensor it cannot serialize) are bugs and stay as they are."""
    from safetensors import SafetensorError

    return isinstance(error, SafetensorError) and "I/O error" in str(error)


def _io_reason(error: BaseException) -> str:
    """'No space left on device (os error 28)' from 'Error while serializing: I/O error: No space ...'."""
    return str(error).rsplit("I/O error:", 1)[-1].strip() or str(error)


def _check_target(directory: Path, force: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise PlugsurgeonError(f"'{directory}' exists and is not a directory", hint="choose a new directory to save to")
    existing = [name for name in (MANIFEST, WEIGHTS) if os.path.lexists(directory / name)]
    if existing and not force:
        raise PlugsurgeonError(f"'{directory}' already holds a saved model ({', '.join(existing)}); nothing was written",
                               hint="choose a new directory, or pass force=True to replace it",
                               cli_hint="choose a new directory, or pass --force to replace it")


def _check_rebuilt(rebuilt: nn.Module, model: nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if expected != found:
        differ = sorted(set(expected) ^ set(found)) or sorted(k for k in expected if expected[k] != found[k])
        raise PlugsurgeonError(f"this {type(model).__name__} is not what its recorded source and steps build (first differences: {differ[:3]})",
                               hint="it was changed outside plugsurgeon after surgery; pass the source that builds it as it is")


def load(directory: str | Path, *, trust_source: bool = False) -> nn.Module:
    """Rebuild a saved model in eval mode. Reads only the manifest and the weights inside ``directory``.

    The model is built from its recorded source, the recorded edits are redone and checked to be
    exactly the ones recorded, and the weights are loaded after every name, shape and dtype is
    checked. A manifest naming a torchvision or timm model loads as data. One naming an import path
    (``package.module:factory``) runs that code, so it is refused unless ``trust_source=True``;
    code inside the directory itself is refused either way. See the module docstring for which
    version differences are accepted.

    Args:
        directory: A directory written by ``ps.save`` (or ``plugsurgeon apply -o``).
        trust_source: Allow a manifest naming ``package.module:factory`` to import and call it.

    Returns:
        The rebuilt model, weights loaded, in eval mode.

    Raises:
        ModelLoadError: The directory holds no valid manifest, one of another format or a newer
            plugsurgeon, a source that cannot be built (an import path without ``trust_source``),
            edits that do not redo as recorded, or weights that do not fit.

    Examples:
        >>> model = ps.load("resnet50_cbam")
        >>> model = ps.load("my_model_dir", trust_source=True)  # its manifest names mypackage.models:build
    """
    directory = Path(directory)
    root = _model_directory(directory)
    if root in _LOADING.get():
        raise ModelLoadError(f"'{directory}' loads itself: its model source loads the same directory again",
                             hint="a saved directory must name the builder of its model, not itself")
    token = _LOADING.set(_LOADING.get() | {root})
    try:
        manifest = read_manifest(directory)
        note = _check_versions(manifest, directory)
        weights = _inside(directory, root, manifest.weights)
        header = _safetensors_header(weights)
        try:
            model = build_source(manifest.source, trusted=trust_source, directory=directory)
        except UnknownNameError as error:  # a manifest's mistake is a load error, whatever the name was
            raise ModelLoadError(f"'{directory / MANIFEST}' names a model that cannot be built: {error.message}{note}", hint=error.hint) from None
        # Before the steps: they are planned at the size the configured transform resizes to.
        apply_config(model, manifest.config, where=f"'{directory / MANIFEST}'")
        for index, step in enumerate(manifest.steps, start=1):
            model = replay(model, step, where=f"step {index} of '{directory / MANIFEST}'", note=note)
        _check_config(model, manifest, directory, note)
        _copy_into(model, _read_saved_weights(weights, header, model, note), weights, note)
    finally:
        _LOADING.reset(token)
    set_provenance(model, {"source": manifest.source, "steps": [step.model_dump(mode="json") for step in manifest.steps]})
    return model.eval()


def _check_config(model: nn.Module, manifest: Manifest, directory: Path, note: str) -> None:
    """The loaded model holds exactly the recorded configuration: no configured module missing,
    none the manifest leaves at the builder's defaults. Manifests from before ``config`` was
    recorded carry no claim to check."""
    if "config" not in manifest.model_fields_set:
        return
    found = read_config(model)
    if found != manifest.config:
        differ = sorted({r.path or "(model)" for r in found if r not in manifest.config} | {r.path or "(model)" for r in manifest.config if r not in found})
        raise ModelLoadError(f"'{directory / MANIFEST}' records another configuration than the rebuilt model holds (at {', '.join(differ[:3])}){note}",
                             hint="the manifest was edited by hand, or the model's builder changed since it was written")


def read_manifest(directory: str | Path) -> Manifest:
    """The validated manifest of a saved directory; any problem is one ModelLoadError."""
    directory = Path(directory)
    root = _model_directory(directory)
    path = directory / MANIFEST
    if not os.path.lexists(path):
        raise ModelLoadError(f"'{directory}' is not a plugsurgeon model directory (no {MANIFEST})", hint="write one with ps.save(model, DIR)",
                             cli_hint="write one with `plugsurgeon apply MODEL --recipe R -o DIR`")
    path = _inside(directory, root, MANIFEST)
    data = _parse_json(_read_bounded(path, MAX_MANIFEST_BYTES, "manifest"), path)
    if not isinstance(data, dict):
        raise ModelLoadError(f"'{path}' is not a valid plugsurgeon manifest: a JSON object was expected, not {type(data).__name__}")
    written = data.get("format")
    if written != FORMAT:
        raise ModelLoadError(_format_message(path, written), hint="load it with the plugsurgeon version that wrote it, and save it again with this one")
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise ModelLoadError(f"'{path}' is not a valid plugsurgeon manifest: {describe(error)}",
                             hint="the file was edited by hand or damaged; save the model again with ps.save") from None


def _format_message(path: Path, written: Any) -> str:
    if written == "plugsurgeon/1":
        return f"'{path}' is in format plugsurgeon/1, which records recipes but not the edits they made; this plugsurgeon reads {FORMAT}"
    shown = repr(written)[:40] if written is not None else "no format"
    return f"'{path}' has {'format ' + shown if written is not None else shown}, this plugsurgeon reads '{FORMAT}'"


def _model_directory(directory: Path) -> Path:
    if not directory.is_dir():
        raise ModelLoadError(f"'{directory}' is not a directory" if directory.exists() else f"'{directory}' does not exist",
                             hint="pass a directory written by `plugsurgeon apply -o` or ps.save")
    return directory.resolve()


def _inside(directory: Path, root: Path, name: str) -> Path:
    """``name`` as a regular file directly inside the directory. Every name that could lead outside
    (a path, a link out) gets the same message, whatever lies outside, so the answer does not
    tell whether some outside path exists."""
    if name == MANIFEST:
        outside = ModelLoadError(f"'{directory / MANIFEST}' is a link to a file outside the directory", hint="only files inside the directory are read")
    else:
        outside = ModelLoadError(f"'{directory / MANIFEST}' names '{name[:80]}' as its weights, which is not a plain file name inside the directory",
                                 hint="only files inside the directory are read")
    if not _WEIGHTS_NAME.fullmatch(name):
        raise outside
    try:
        resolved = (root / name).resolve()
    except (OSError, RuntimeError):  # a link loop
        raise outside from None
    if resolved.parent != root:
        raise outside
    try:
        mode = resolved.stat().st_mode
    except OSError:
        raise ModelLoadError(f"'{directory}' has a manifest but no {name}", hint="save the model again with ps.save") from None
    if not stat.S_ISREG(mode):
        raise ModelLoadError(f"'{directory / name}' is not a regular file", hint="save the model again with ps.save")
    return resolved


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ModelLoadError(f"cannot read '{path}': {error.strerror or error}") from None
    if len(data) > limit:
        raise ModelLoadError(f"'{path}' is larger than the {limit} bytes a {what} may take", hint="the file was edited by hand or damaged")
    return data


def _parse_json(data: bytes, path: Path) -> Any:
    def refuse(message: str) -> ModelLoadError:
        return ModelLoadError(f"'{path}' is not a valid plugsurgeon manifest: {message}", hint="save the model again with ps.save")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("it is not UTF-8 text") from None
    # Nesting is measured before parsing: json recurses once per level.
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = [1 if c in "[{" else -1 for c in brackets if c in "[]{}"]
    if steps and max(accumulate(steps)) > MAX_JSON_DEPTH:
        raise refuse(f"it nests deeper than {MAX_JSON_DEPTH} levels")

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number a manifest may hold")

    def unique(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)[:60]!r} appears twice")
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=no_constant, object_pairs_hook=unique)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError; so are huge integers
        raise refuse(first_line(error, 200)) from None


def _check_versions(manifest: Manifest, directory: Path) -> str:
    """Refuses a manifest written by a newer plugsurgeon release; returns the other differences, for messages."""
    from plugsurgeon import __version__

    written = manifest.versions.get("plugsurgeon")
    if written is not None and _release(written) > _release(__version__):
        raise ModelLoadError(f"'{directory}' was written by plugsurgeon {written}, newer than this {__version__}",
                             hint="upgrade plugsurgeon to load it")
    here = _installed_versions(with_timm="timm" in manifest.versions)
    differing = [f"{name} {version} (here {here.get(name, 'not installed')})"
                 for name, version in sorted(manifest.versions.items()) if here.get(name) != version]
    return f"; it was written with {', '.join(differing)}" if differing else ""


def _release(version: str) -> tuple[int, int]:
    found = _RELEASE.match(version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def _installed_versions(*, with_timm: bool) -> dict[str, str]:
    import torchvision

    from plugsurgeon import __version__

    versions = {"plugsurgeon": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}
    if with_timm:
        try:
            import timm

            versions["timm"] = timm.__version__
        except ImportError:
            pass
    return versions


def _versions(model: nn.Module, source: str) -> dict[str, str]:
    uses_timm = source.startswith("timm:") or any(type(m).__module__.startswith("timm.") for m in model.modules())
    return _installed_versions(with_timm=uses_timm)


def _safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names, dtypes and shapes from a safetensors header, without reading any tensor data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: (handle.get_slice(key).get_dtype(), tuple(handle.get_slice(key).get_shape())) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"'{path.name}' is not a valid safetensors file: {str(error)[:200]}",
                             hint="save the model again with ps.save") from None


def _read_saved_weights(path: Path, header: dict[str, tuple[str, tuple[int, ...]]], model: nn.Module, note: str) -> dict[str, torch.Tensor]:
    """The weights of a saved directory, checked against the rebuilt model by name and shape from
    the header before any tensor is read, then by dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shapes = {key: shape for key, (_dtype, shape) in header.items()}
    problems = _problems(shapes, model, lambda shape: shape, with_dtype=False)
    if problems:
        raise _misfit(path.name, problems, note, saved=True)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"'{path.name}' is not a valid safetensors file: {str(error)[:200]}") from None
    problems = _problems(state, model, lambda tensor: tuple(tensor.shape))
    if problems:
        raise _misfit(path.name, problems, note, saved=True)
    return state


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model`` strictly: safetensors, or a zip-format torch checkpoint loaded
    with ``weights_only``; arbitrary pickles are never loaded.

    Everything is checked before anything is copied: the file's size, and for a torch zip the sizes
    its entries declare once decompressed (at most eight times the model's float32 size plus
    16 MiB), then every key (strings only; a ``module.`` prefix on all of them is dropped), shape and
    dtype (floating into floating, integer into integer, bool into bool, complex into complex). A
    refused checkpoint leaves the model untouched.

    Args:
        model: The model to load into (in place), with the checkpoint's architecture.
        path: A ``.safetensors`` file, or a torch checkpoint saved in the zip format (``torch.save``).

    Returns:
        ``model``, holding the checkpoint's tensors.

    Raises:
        ModelLoadError: The file is missing, too large, neither format, or its keys, shapes or
            dtypes do not match the model's.

    Examples:
        >>> model = ps.load_weights(ps.load_model("resnet50"), "resnet50_trained.safetensors")
        >>> result = ps.apply(model, "cbam")  # surgery on the trained network
    """
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"weights file '{path}' is a directory", hint="pass the checkpoint file inside it")
    try:
        info = path.stat()
    except OSError:
        raise ModelLoadError(f"weights file '{path}' does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"weights file '{path}' is not a regular file")
    limit = _checkpoint_limit(model)
    if info.st_size > limit:
        raise ModelLoadError(f"'{path}' has {info.st_size:,} bytes, more than the {limit:,} a checkpoint of this model may take",
                             hint="pass the checkpoint of this model, not of a larger one")
    state = _read_state_dict(path, model, limit)
    problems = _problems(state, model, lambda tensor: tuple(tensor.shape))
    if problems:
        raise _misfit(f"'{path}'", problems, "", saved=False)
    _copy_into(model, state, path, "")
    return model


def _checkpoint_limit(model: nn.Module) -> int:
    elements = sum(t.numel() for t in model.state_dict().values())
    return CHECKPOINT_FACTOR * 4 * elements + CHECKPOINT_SLACK


def _read_state_dict(path: Path, model: nn.Module, limit: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with path.open("rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        header = _safetensors_header(path)
        problems = _problems({k: shape for k, (_d, shape) in header.items()}, model, lambda shape: shape, with_dtype=False)
        if problems:  # refused from the header, before reading a tensor the model has no room for
            raise _misfit(f"'{path}'", problems, "", saved=False)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(f"'{path}' is not a valid safetensors file: {str(error)[:200]}") from None
    _check_zip(path, limit)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as error:  # noqa: BLE001 - weights_only refuses objects with various errors
        raise ModelLoadError(
            f"'{path}' is neither a safetensors file nor a weights-only torch checkpoint; it was not unpickled",
            hint=f"convert it where you trust it: safetensors.torch.save_file(model.state_dict(), 'model.safetensors') ({type(error).__name__})",
        ) from None
    return _state_of(state, path, model)


def _check_zip(path: Path, limit: int) -> None:
    """torch.save writes a zip archive since torch 1.6; its readers allocate each entry at the size it
    declares, so the declared sizes are bounded before torch reads any. The older format is refused:
    it declares storage sizes inside the pickle, where they cannot be checked before allocation."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"'{path}' is neither a safetensors file nor a zip-format torch checkpoint (torch.save since torch 1.6); it was not unpickled",
                             hint="convert it where you trust it: safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ZIP_ENTRIES:
                raise ModelLoadError(f"'{path}' holds {len(entries):,} archive entries, more than a checkpoint has")
            declared = sum(entry.file_size for entry in entries)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as error:
        raise ModelLoadError(f"'{path}' is not a valid torch checkpoint: {str(error)[:200]}") from None
    if declared > limit:
        raise ModelLoadError(f"'{path}' expands to {declared:,} bytes, more than the {limit:,} a checkpoint of this model may take; it was not loaded",
                             hint="a compressed archive this large is not a checkpoint of this model")


def _state_of(state: Any, path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ModelLoadError(f"'{path}' holds no state_dict of tensors", hint="save model.state_dict() with safetensors")
    odd = next((k for k in state if not isinstance(k, str)), None)
    if odd is not None:
        raise ModelLoadError(f"'{path}' has the key {repr(odd)[:60]} ({type(odd).__name__}); state_dict keys are strings",
                             hint="save model.state_dict() with safetensors")
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ModelLoadError(f"'{path}' holds a {type(state[odd]).__name__} at '{odd[:120]}', not a tensor",
                             hint="save model.state_dict() with safetensors")
    own = set(model.state_dict())
    if all(k.startswith("module.") for k in state) and not own & set(state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def _problems(found: Mapping[str, Any], model: nn.Module, shape_of, *, with_dtype: bool = True) -> list[str]:
    """Everything that keeps ``found`` from being copied into ``model``: names, shapes, dtypes, layouts.

    A name the file leaves out is fine when the model holds that tensor under a name it has too
    (tied weights: safetensors stores one of them)."""
    expected = model.state_dict()
    problems = []
    twins = _twins(expected, found)
    missing = [k for k in expected if k not in found and k not in twins]
    if missing:
        problems.append(f"missing {len(missing)} key(s) {missing[:3]}")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {[k[:120] for k in unexpected[:3]]}")
    for key, value in found.items():
        target = expected.get(key)
        if target is None:
            continue
        shape = shape_of(value)
        if shape != tuple(target.shape):
            problems.append(f"'{key}' has shape {shape} where the model has {tuple(target.shape)}")
        elif with_dtype and not (value.layout == torch.strided and not value.is_quantized and value.device.type != "meta"):
            problems.append(f"'{key}' is a {value.layout} tensor{' (quantized)' if value.is_quantized else ''}, not a plain dense one")
        elif with_dtype and not _dtype_fits(value.dtype, target.dtype):
            problems.append(f"'{key}' is {str(value.dtype).removeprefix('torch.')} where the model has {str(target.dtype).removeprefix('torch.')}")
    return problems


def _twins(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> dict[str, str]:
    """For each name of the model that ``found`` leaves out, a name in ``found`` for the same tensor
    (tied weights, which safetensors stores once)."""
    by_identity: dict[tuple, str] = {}
    for name in found:
        if name in expected and (identity := _identity(expected[name])) is not None:
            by_identity.setdefault(identity, name)
    return {name: by_identity[identity] for name, tensor in expected.items()
            if name not in found and (identity := _identity(tensor)) is not None and identity in by_identity}


def _identity(tensor: torch.Tensor) -> tuple | None:
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return None
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype


def _dtype_fits(source: torch.dtype, target: torch.dtype) -> bool:
    if source == target:
        return True
    if source.is_complex or target.is_complex or torch.bool in (source, target):
        return False
    return source.is_floating_point == target.is_floating_point


def _misfit(name: str, problems: list[str], note: str, *, saved: bool) -> ModelLoadError:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    if saved:
        return ModelLoadError(f"the weights in '{name}' do not fit the model rebuilt from the manifest: {shown}{note}",
                              hint="the directory was edited by hand, or the model's builder changed since it was written")
    return ModelLoadError(f"{name} does not fit the model: {shown}",
                          hint="load the checkpoint the model was trained with; surgery keeps the original names")


def _copy_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, note: str) -> None:
    """Copy checked tensors into ``model``; tied names the file leaves out get their twin's tensor, so
    the strict load cannot stop half-way on a key."""
    complete = dict(state)
    for key, twin in _twins(model.state_dict(), state).items():
        complete[key] = state[twin]
    try:
        model.load_state_dict(complete, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ModelLoadError(f"'{path}' does not fit the model: {' '.join(lines[1:3])[:400]}{note}") from None
