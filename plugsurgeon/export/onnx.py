"""ONNX export of a deployed model, checked with onnxruntime against PyTorch.

onnx and onnxruntime are the optional extra ``plugsurgeon[onnx]``, imported only here and only when
called. The exporter is torch's default (torch.export based, which needs onnxscript); when it cannot
export a model, the TorchScript exporter is tried and the report says so.

A detector that returns torchvision's detections (one dict of boxes, labels, scores per image) is exported
whole, from images to detections, by the TorchScript exporter first (torch.export cannot follow box
selection, whose number of boxes depends on the data), and its detections are compared as sets
(deployment.verify.match_detections). Every export is checked on two inputs: the one it was exported with,
and another, which shows up a graph that recorded what the first one did.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from plugsurgeon import progress
from plugsurgeon.deployment.fold import is_norm, plan_folds
from plugsurgeon.deployment.reparameterize import find_reparameterizable
from plugsurgeon.deployment.report import DetectionCheck
from plugsurgeon.deployment.verify import check_outputs, is_detections, match_detections
from plugsurgeon.errors import PlugsurgeonError, VerificationError, first_line
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE, validate_input_shape
from plugsurgeon.graph.trace import trace

_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold more than 2 GB in one file


@dataclass
class ExportReport:
    """What ``ps.export_onnx`` wrote and how its onnxruntime outputs compared with PyTorch's."""

    path: str
    exporter: str  # "dynamo" (torch.export based) or "torchscript"
    opset: int | None
    input_shape: tuple[int, ...]
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float  # tensor outputs; for detections, the largest difference of a matched pair
    max_rel_diff: float  # max |onnxruntime - torch| / max |torch|
    atol: float
    rtol: float
    passed: bool
    size_bytes: int
    inputs_checked: int = 0  # random inputs run in both
    detections: DetectionCheck | None = None  # how detections were matched, for a model that returns them
    unfused: list[str] = field(default_factory=list)  # what --allow-unfused let through
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.detections is not None:
            data["detections"] = self.detections.to_dict()
        return data


def export_onnx(model: nn.Module, path: str | Path, *, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, allow_unfused: bool = False,
                opset: int | None = None, atol: float = 1e-4, rtol: float = 1e-4) -> ExportReport:
    """Write ``model`` (in eval mode) to ``path`` as ONNX, run it with onnxruntime on two random inputs and
    compare with PyTorch; a difference over ``atol + rtol * max|output|`` raises VerificationError.

    A detector that returns torchvision-style detections (a dict of ``boxes``, ``scores``, ``labels``
    per image) is exported whole, its pre-processing and box selection included, and its detections are
    compared as sets (deployment.verify.match_detections): box selection returns them in whatever order
    it met them, and round-off decides what sits right at the score cut.

    A model that still holds train-time blocks (modules with ``reparameterize()``) or BatchNorm
    layers that deploy would fold is refused unless ``allow_unfused``: deploy it first.
    The caller's model is not modified.

    Args:
        model: The model to export, deployed (``ps.deploy``).
        path: The ``.onnx`` file to write (large models also write their weights next to it).
        input_shape: The shape of the graph's input, N,C,H,W (fixed, as exported).
        allow_unfused: Export a model that still holds train-time blocks or foldable BatchNorms.
        opset: The ONNX opset to export to; default: the exporter's.
        atol: Absolute tolerance of the comparison with PyTorch.
        rtol: Tolerance relative to the largest output magnitude.

    Returns:
        The report: the exporter used, inputs and outputs, the differences measured and whether
        they passed, the file's size, notes.

    Raises:
        PlugsurgeonError: ``model`` is not an ``nn.Module`` or not deployed (without
            ``allow_unfused``), onnx or onnxruntime is not installed, or neither exporter nor
            onnxruntime can handle the model.
        VerificationError: onnxruntime's outputs differ from PyTorch's by more than the tolerance
            (the file is written).

    Examples:
        >>> deployed = ps.deploy(ps.apply(torchvision.models.resnet18(), "cbam").model)
        >>> report = ps.export_onnx(deployed.model, "resnet18_cbam.onnx")
        >>> report.passed, report.max_abs_diff < 1e-4
        (True, True)
    """
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="load one with ps.load('DIR')")
    input_shape = validate_input_shape(input_shape)
    if not (atol >= 0 and rtol >= 0):
        raise PlugsurgeonError(f"tolerances must be non-negative, got atol={atol}, rtol={rtol}", hint="for example atol=1e-4, rtol=1e-4")
    onnx, ort = _require_onnx()
    name = type(model).__name__
    work = copy.deepcopy(model).eval()
    progress.step(f"checking that {name} is deployed")
    unfused = unfused_parts(work, input_shape)
    if unfused and not allow_unfused:
        raise PlugsurgeonError(
            f"{name} is not deployed: it still holds {'; '.join(unfused)}. Exporting it would ship the slower train-time structure",
            hint="deploy it first (ps.deploy(model).model), or pass allow_unfused=True to export it as it is",
            cli_hint="run `plugsurgeon deploy DIR -o OUT` first, or pass --allow-unfused to export it as it is",
        )
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    progress.step(f"running {name} in PyTorch on {len(_SEEDS)} random inputs")
    inputs, expected = _reference_runs(work, input_shape, dtype)
    detections = is_detections(expected[0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    progress.step(f"exporting {name} to ONNX")
    exporter, notes = _export(work, inputs[0], path, opset, output_names=_detection_names(expected[0]) if detections else None,
                              detections=detections)
    progress.step("checking the exported graph in onnxruntime")
    proto, session, actual = _run_onnx(onnx, ort, path, inputs)
    leaves = [[t for t in tree_leaves(e) if isinstance(t, torch.Tensor)] for e in expected]
    if len(actual[0]) != len(leaves[0]):
        raise VerificationError(
            f"the exported graph returns {len(actual[0])} outputs where {name}'s forward returns {len(leaves[0])} tensors; "
            f"the file was written to '{path}' but does not return what the model returns",
            hint="the exporter dropped or added outputs: export the model with torch.onnx.export directly and report it",
        )
    report = ExportReport(
        path=str(path), exporter=exporter,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        input_shape=input_shape, input_names=[i.name for i in session.get_inputs()], output_names=[o.name for o in session.get_outputs()],
        max_abs_diff=0.0, max_rel_diff=0.0, atol=atol, rtol=rtol, passed=True, size_bytes=_size(path),
        inputs_checked=len(inputs), unfused=unfused if allow_unfused else [], notes=notes,
    )
    if detections:
        _check_detections(report, expected, actual, input_shape, name)
    else:
        passed = []
        for e, a in zip(leaves, actual, strict=True):
            check = check_outputs("", e, a, atol, rtol)
            report.max_abs_diff = max(report.max_abs_diff, check.max_abs_diff)
            report.max_rel_diff = max(report.max_rel_diff, check.max_rel_diff)
            passed.append(check.passed)
        report.passed = all(passed)
        if not report.passed:
            raise VerificationError(
                f"onnxruntime's output differs from PyTorch's by {report.max_abs_diff:.3g} (relative {report.max_rel_diff:.3g}), "
                f"over atol={atol:g} + rtol={rtol:g} x max|output|; the file was written to '{path}' but does not compute the same function",
                hint=_mismatch_hint(passed),
                cli_hint=_mismatch_hint(passed, flags=True),
            )
    return report


def _mismatch_hint(passed: list[bool], *, flags: bool = False) -> str:
    """Why the graph differs, as far as which inputs it differs on tells."""
    if passed[0]:
        return ("the graph is right on the input it was exported with and wrong on another: the exporter recorded something "
                "that input did as a constant (a size or count read as a Python number, a branch on a value); "
                "make the model's forward compute it with tensor operations, or report the model")
    return f"try another opset with {'--opset' if flags else 'opset='}, or report the model: the exporter mistranslated an op"


_SEEDS = (0, 1)  # the first input is the one the graph is exported with; the second catches a graph that kept
# what that input happened to do (the TorchScript exporter records one run: a branch or a count that depends on
# the data becomes a constant)


def _reference_runs(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype) -> tuple[list[torch.Tensor], list[Any]]:
    """The random inputs and PyTorch's outputs on them."""

    def make(seed: int, sample) -> torch.Tensor:
        return sample(input_shape, generator=torch.Generator().manual_seed(seed)).to(dtype)

    def forward(x: torch.Tensor) -> Any:
        try:
            with torch.no_grad():
                return model(x.clone())  # a copy: an in-place forward must not change the input fed to onnxruntime
        except Exception as error:  # noqa: BLE001 - any failure here is the model's on this shape
            raise PlugsurgeonError(
                f"{type(model).__name__} does not run on a {'x'.join(map(str, input_shape))} input: {type(error).__name__}: {first_line(error)}",
                hint="pass the shape the model takes as input_shape=(N, C, H, W)",
                cli_hint="pass the shape the model takes with --input-shape N,C,H,W",
            ) from None

    # A detector takes images in [0, 1] (torchvision's transform normalises them): noise in that range is what
    # it is built for, and a random-weight head keeps more detections on it than on randn. Other models get
    # randn, which exercises negative inputs too. The first run tells which (a detector's runs are the costly ones).
    first = make(_SEEDS[0], torch.rand)
    output = forward(first)
    if is_detections(output):
        rest = [make(seed, torch.rand) for seed in _SEEDS[1:]]
        return [first, *rest], [output, *(forward(x) for x in rest)]
    inputs = [make(seed, torch.randn) for seed in _SEEDS]
    return inputs, [forward(x) for x in inputs]


def _run_onnx(onnx, ort, path: Path, inputs: list[torch.Tensor]):
    try:
        proto = onnx.load(str(path), load_external_data=False)
        options = ort.SessionOptions()
        # Errors only: onnxruntime warns on stderr (not through Python) when a detector's output is longer
        # than the length the exporter recorded, which is expected for a variable number of detections.
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = session.get_inputs()
        if len(feeds) != 1:
            raise PlugsurgeonError(f"the exported graph takes {len(feeds)} inputs, plugsurgeon feeds one image tensor",
                                   hint="export this model with torch.onnx.export directly")
        actual = [[torch.from_numpy(o) for o in session.run(None, {feeds[0].name: x.numpy()})] for x in inputs]
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - onnx/onnxruntime raise their own types
        raise PlugsurgeonError(f"onnxruntime cannot run the exported '{path}': {type(error).__name__}: {str(error).strip()[:300]}",
                               hint="try another opset with opset=; the exporter produced a graph onnxruntime does not support",
                               cli_hint="try another opset with --opset; the exporter produced a graph onnxruntime does not support") from None
    return proto, session, actual


def _check_detections(report: ExportReport, expected: list[Any], actual: list[list[torch.Tensor]], input_shape, name: str) -> None:
    check, passed = None, []
    for e, a in zip(expected, actual, strict=True):
        leaves, spec = tree_flatten(e)
        if len(leaves) != len(a):  # a non-tensor among the fields: the outputs cannot be lined up with them
            raise VerificationError(f"{name} returns {len(leaves)} values where the exported graph returns {len(a)} tensors; "
                                    f"the file was written to '{report.path}' but its outputs cannot be checked",
                                    hint="export the model with torch.onnx.export directly")
        failures = (check.unmatched, len(check.problems)) if check is not None else (0, 0)
        check = match_detections(e, tree_unflatten(a, spec), float(max(input_shape[-2:])), check)
        passed.append((check.unmatched, len(check.problems)) == failures)
    assert check is not None  # a batch holds one image at least
    report.detections = check
    report.passed = check.passed
    report.max_abs_diff = max([check.max_box_diff, check.max_score_diff, *check.extras.values()])
    report.max_rel_diff = check.max_box_diff / max(input_shape[-2:])
    fields = ", ".join(k for k, v in expected[0][0].items() if isinstance(v, torch.Tensor))
    report.notes.append(
        f"the whole {name} was exported, from images to detections (a torchvision detector's transform, which resizes and "
        f"normalises, and its box selection included): the graph takes a {'x'.join(map(str, input_shape))} batch and returns "
        f"{fields} for each image; detections were matched as sets on images of uniform noise in [0, 1]"
    )
    if not check.compared_any:
        report.notes.append(
            f"no detection could be compared: on {check.runs} random inputs PyTorch kept {check.reference} "
            + ("(a head with random weights scores nothing over its threshold)" if check.reference == 0 else "all tied at the score cut")
            + ", so only that onnxruntime agrees on that was checked; export the trained model to check its detections"
        )
    if not check.passed:
        raise VerificationError(
            f"onnxruntime's detections differ from PyTorch's: {check.unmatched} of {check.reference + check.other} detections "
            f"have no counterpart within {check.box:.3g} px and {check.score:g} in score"
            + (f" ({'; '.join(check.problems[:3])})" if check.problems else "")
            + f"; the file was written to '{report.path}' but does not compute the same detections",
            hint=_mismatch_hint(passed),
            cli_hint=_mismatch_hint(passed, flags=True),
        )


def _detection_names(detections: list[dict]) -> list[str]:
    """ONNX output names for torchvision-style detections: ``boxes``, ``labels``, ... (``boxes_1``, ... for image 1 on)."""
    return [key if index == 0 else f"{key}_{index}"
            for index, image in enumerate(detections) for key, value in image.items() if isinstance(value, torch.Tensor)]


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")  # external weights, for models over 2 GB
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def unfused_parts(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """What deploy would still change: reparameterizable blocks and foldable BatchNorms (as readable phrases)."""
    found = []
    blocks = [paths[0] or "(root)" for paths in find_reparameterizable(model).values()]
    if blocks:
        found.append(f"{len(blocks)} train-time block(s) with reparameterize() ({_some(blocks)})")
    # Only a model that holds a BatchNorm is traced: deploy leaves none where it could fold, and the trace of a
    # detector (a recorded forward and shape propagation of every part) is the slowest step of its export.
    pairs = plan_folds(trace(model, input_shape)).pairs if any(is_norm(m) for m in model.modules()) else []
    if pairs:
        found.append(f"{len(pairs)} BatchNorm layer(s) that fold into the conv before them ({_some([n for _, n in pairs])})")
    return found


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f", ... {len(paths) - 3} more" if len(paths) > 3 else "")


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise PlugsurgeonError(f"ONNX export needs onnx and onnxruntime, and {error.name or 'one of them'} is not installed",
                               hint="pip install 'plugsurgeon[onnx]'") from None
    return onnx, onnxruntime


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int | None, *, output_names: list[str] | None = None,
            detections: bool = False) -> tuple[str, list[str]]:
    """torch's default exporter first, the TorchScript one when it fails (the other way round for
    detections, see below); both quiet (the core never prints)."""
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    attempts: list[tuple[str, dict[str, Any]]] = [("dynamo", dict(dynamo=True, external_data=large, verbose=False)), ("torchscript", dict(dynamo=False))]
    if detections:
        # Detections: torch.export (torch 2.14) cannot export box selection, whose number of boxes depends on
        # the data (it fails in torchvision's batched_nms after tens of seconds on a Faster R-CNN), while the
        # TorchScript exporter exports torchvision's detectors as written for it. Its one recorded run is
        # checked against a second input.
        attempts.reverse()
    errors: list[str] = []
    for name, options in attempts:
        if opset is not None:
            options["opset_version"] = opset
        if output_names:
            options["output_names"] = output_names
        try:
            with warnings.catch_warnings(), _silenced():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), **options)
        except Exception as error:  # noqa: BLE001 - exporters raise many types
            errors.append(f"{name} exporter: {_reason(error)}")
            continue
        if errors:
            return name, [f"the {attempts[0][0]} exporter failed, the {name} exporter was used ({errors[0]})"]
        if detections and name == "torchscript":
            return name, ["exported with the TorchScript exporter: torch.export, the default exporter's front end, cannot follow "
                          "a box selection whose number of boxes depends on the data"]
        return name, []
    raise PlugsurgeonError(f"torch.onnx.export cannot export {type(model).__name__}: " + "; ".join(errors),
                           hint="the model's forward may take or return structures ONNX cannot hold: in Python, export the submodule "
                           "you need with ps.export_onnx(model.get_submodule('PATH'), FILE, input_shape=...)")


@contextlib.contextmanager
def _silenced():
    """Nothing the exporters print reaches the user: Python's streams, and the process's own stdout, which the
    TorchScript exporter writes to from C++ ("Torch IR graph at exception: ..." when it fails; it would break
    ``--json`` output). The process's stderr stays: the CLI's spinner draws there."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            saved = os.dup(1)
        except OSError:  # no stdout descriptor (an embedding host closed it): nothing to silence there
            yield
            return
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 1)
                yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(error: Exception) -> str:
    """One line on why an exporter failed.

    torch.onnx's own errors open with pages of advice; the cause is under "## Exception summary"
    (for a torchvision detector, the data-dependent box count that torch.export cannot guard on).
    """
    text = _ANSI.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        summary = after[0] if after else ""
        caused = next((line for line in after[:12] if line.startswith("Caused by:")), "")
        return f"{summary[:240]}{' ' + caused[:120] if caused else ''}"
    return f"{type(error).__name__}: {lines[0][:240] if lines else ''}"


