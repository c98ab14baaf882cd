"""ONNX export of a deployed model, checked with onnxruntime against PyTorch.

onnx and onnxruntime are the optional extra ``plugsurgeon[onnx]``, imported only here and only when
called. The exporter is torch's default (torch.export based, which needs onnxscript); when it cannot
export a model, the TorchScript exporter is tried and the report says so.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from plugsurgeon import progress
from plugsurgeon.errors import PlugsurgeonError, VerificationError
from plugsurgeon.graph.shapes import validate_input_shape

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold more than 2 GB in one file


@dataclass
class ExportReport:
    path: str
    exporter: str  # "dynamo" (torch.export based) or "torchscript"
    opset: int | None
    input_shape: tuple[int, ...]
    input_names: list[str]
    output_names: list[str]
    max_abs_diff: float
    max_rel_diff: float  # max |onnxruntime - torch| / max |torch|
    atol: float
    rtol: float
    passed: bool
    size_bytes: int
    unfused: list[str] = field(default_factory=list)  # what --allow-unfused let through
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(model: nn.Module, path: str | Path, *, input_shape=DEFAULT_INPUT_SHAPE, allow_unfused: bool = False,
                opset: int | None = None, atol: float = 1e-4, rtol: float = 1e-4) -> ExportReport:
    """Write ``model`` (in eval mode) to ``path`` as ONNX, run it with onnxruntime on random input and
    compare with PyTorch; a difference over ``atol + rtol * max|output|`` raises VerificationError.

    A model that still holds train-time blocks (modules with ``reparameterize()``) or BatchNorm
    layers that deploy would fold is refused unless ``allow_unfused``: deploy it first.
    The caller's model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="load one with ps.load('DIR')")
    input_shape = validate_input_shape(input_shape)
    onnx, ort = _require_onnx()
    work = copy.deepcopy(model).eval()
    unfused = unfused_parts(work, input_shape)
    if unfused and not allow_unfused:
        raise PlugsurgeonError(
            f"{type(model).__name__} is not deployed: it still holds {'; '.join(unfused)}. Exporting it would ship the slower train-time structure",
            hint="run `plugsurgeon deploy DIR -o OUT` first (ps.deploy(model) in Python), or pass --allow-unfused to export it as it is",
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        expected = [t for t in tree_leaves(work(x.clone())) if isinstance(t, torch.Tensor)]
    progress.step(f"exporting {type(model).__name__} to ONNX")
    exporter, notes = _export(work, x, path, opset)
    progress.step("checking the exported graph in onnxruntime")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise PlugsurgeonError(f"the exported graph takes {len(inputs)} inputs, plugsurgeon feeds one image tensor",
                                   hint="export this model with torch.onnx.export directly")
        outputs = session.run(None, {inputs[0].name: x.numpy()})
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - onnx/onnxruntime raise their own types
        raise PlugsurgeonError(f"onnxruntime cannot run the exported '{path}': {type(error).__name__}: {str(error).strip()[:300]}",
                               hint="try another opset with --opset; the exporter produced a graph onnxruntime does not support") from None
    from plugsurgeon.deployment.verify import check_outputs

    check = check_outputs("", expected, [torch.from_numpy(o) for o in outputs], atol, rtol)
    data = path.with_name(path.name + ".data")  # external weights, for models over 2 GB
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    report = ExportReport(
        path=str(path), exporter=exporter,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
        input_shape=input_shape, input_names=[i.name for i in inputs], output_names=[o.name for o in session.get_outputs()],
        max_abs_diff=check.max_abs_diff, max_rel_diff=check.max_rel_diff, atol=atol, rtol=rtol, passed=check.passed,
        size_bytes=size, unfused=unfused if allow_unfused else [], notes=notes,
    )
    if not check.passed:
        raise VerificationError(
            f"onnxruntime's output differs from PyTorch's by {check.max_abs_diff:.3g} (relative {check.max_rel_diff:.3g}), "
            f"over atol={atol:g} + rtol={rtol:g} x max|output|; the file was written to '{path}' but does not compute the same function",
            hint="try another opset with --opset, or report the model: the exporter mistranslated an op",
        )
    return report


def unfused_parts(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """What deploy would still change: reparameterizable blocks and foldable BatchNorms (as readable phrases)."""
    from plugsurgeon.deployment.fold import plan_folds
    from plugsurgeon.deployment.reparameterize import find_reparameterizable
    from plugsurgeon.graph.trace import trace

    found = []
    blocks = [paths[0] or "(root)" for paths in find_reparameterizable(model).values()]
    if blocks:
        found.append(f"{len(blocks)} train-time block(s) with reparameterize() ({_some(blocks)})")
    pairs = plan_folds(trace(model, input_shape)).pairs
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


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int | None) -> tuple[str, list[str]]:
    """torch's default exporter first, the TorchScript one when it fails; both quiet (the core never prints)."""
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    attempts = [("dynamo", dict(dynamo=True, external_data=large, verbose=False)), ("torchscript", dict(dynamo=False))]
    errors: list[str] = []
    for name, options in attempts:
        if opset is not None:
            options["opset_version"] = opset
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), **options)
        except Exception as error:  # noqa: BLE001 - exporters raise many types
            errors.append(f"{name} exporter: {type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}")
            continue
        return name, [f"the dynamo exporter failed, the TorchScript exporter was used ({errors[0]})"] if errors else []
    raise PlugsurgeonError(f"torch.onnx.export cannot export {type(model).__name__}: " + "; ".join(errors),
                           hint="the model's forward may take or return structures ONNX cannot hold; export its traceable part instead")
