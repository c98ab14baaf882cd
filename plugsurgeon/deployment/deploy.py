"""deploy(): reparameterize train-time blocks, re-trace, fold BatchNorm into the layer before it, verify.

The order matters: an ACBlock becomes a Conv2d (a timm RepVGG block gets its fused conv), and only
then can the model's own BN after it fold into that conv. The caller's model is never modified: deploy works on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from plugsurgeon import progress
from plugsurgeon.deployment.fold import FoldPlan, apply_folds, plan_folds
from plugsurgeon.deployment.measure import count_flops, count_params
from plugsurgeon.deployment.reparameterize import Outcome, reparameterize_all
from plugsurgeon.deployment.report import DeployReport, Folded, LeftAlone, Reparameterized
from plugsurgeon.deployment.verify import compare, probe_calls, run
from plugsurgeon.errors import PlugsurgeonError, VerificationError
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE, validate_input_shape
from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.surgery.record import record_step


@dataclass
class DeployResult:
    """What ``ps.deploy`` returns: the inference model and what was done to it.

    Attributes:
        model: The deployed model, in eval mode: train-time blocks reparameterized, BatchNorms folded.
        report: What was reparameterized, folded, skipped (with why) and left alone; parameters and
            FLOPs before and after; the verification's differences.

    Examples:
        >>> deployed = ps.deploy(ps.apply(torchvision.models.resnet18(), "acnet").model)
        >>> deployed.report.params_after < deployed.report.params_before
        True
    """

    model: nn.Module
    report: DeployReport


def deploy(model: nn.Module, *, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE, verify: bool = True, atol: float = 1e-4, rtol: float = 1e-4) -> DeployResult:
    """The fastest inference model that computes what ``model`` computes in eval mode.

    Every plugsurgeon block with ``reparameterize()`` is replaced by the module it returns, and
    third-party blocks are converted by their own deploy methods as their library calls them (timm's
    in-place ``reparameterize()``, ``fuse()``, an Ultralytics model's ``fuse()``) or left alone, and
    reported either way; then every BatchNorm (or BatchNorm + activation) that follows a conv (or a
    Linear, for BatchNorm1d) and can be folded is folded into it with torch's fusion helpers, keeping
    the activation. With ``verify`` the result is compared with the eval-mode
    original on random input, and a difference over ``atol + rtol * max|output|`` raises
    VerificationError. The caller's model is not modified; the deployed model is in eval mode.

    Args:
        model: The model to deploy, edited by plugsurgeon or not.
        input_shape: The input the model is traced and verified at, N,C,H,W.
        verify: Compare the deployed model with the original on random input.
        atol: Absolute tolerance of the comparison.
        rtol: Tolerance relative to the largest output magnitude.

    Returns:
        The deployed model (a copy) and the report of what was done.

    Raises:
        PlugsurgeonError: ``model`` is not an ``nn.Module``, cannot be copied, or a tolerance or
            ``input_shape`` is invalid.
        VerificationError: The deployed model differs from the original by more than the
            tolerance, or returns another output structure; nothing is returned.
        TraceError: The model does not run on ``input_shape``.

    Examples:
        >>> result = ps.apply(torchvision.models.resnet18(), "acnet")  # train-time ACBlocks
        >>> deployed = ps.deploy(result.model)  # each ACBlock is one 3x3 conv again, BNs folded
        >>> deployed.report.verification.passed
        True
    """
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="load one with ps.load_model('resnet50')")
    input_shape = validate_input_shape(input_shape)
    if not (atol >= 0 and rtol >= 0):
        raise PlugsurgeonError(f"tolerances must be non-negative, got atol={atol}, rtol={rtol}", hint="for example atol=1e-4, rtol=1e-4",
                               cli_hint="for example --atol 1e-4 --rtol 1e-4")
    was_training = any(m.training for m in model.modules())
    progress.step(f"deploying {type(model).__name__}: copying it (the model you pass is never changed)")
    reference = _copy(model).eval()
    deployed, traced, outcome, folded, plan = transform(_copy(model), input_shape)
    reparameterized = outcome.reparameterized
    calls = probe_calls(traced)
    report = DeployReport(
        model=type(deployed).__name__,
        input_shape=input_shape,
        traced=[p.path for p in traced.parts],
        untraced=[] if traced.whole else list(traced.untraced),
        reparameterized=reparameterized,
        left_alone=outcome.left_alone,
        folded=folded,
        skipped=plan.skipped,
        eval_mode=True,
        params_before=count_params(reference),
        params_after=count_params(deployed),
        notes=_notes(traced, reparameterized, outcome.left_alone, was_training),
    )
    if plan.checked_alone:
        report.notes.append(f"folded inside modules that no traced part calls, each compared alone with its folded copy "
                            f"(the verification below does not reach them): {', '.join(plan.checked_alone[:5])}")
    if verify:
        progress.step("verifying the deployed model against the original")
        expected, report.flops_before = run(reference, calls)
        actual, report.flops_after = run(deployed, calls)
        report.verification = compare(expected, actual, calls, atol=atol, rtol=rtol)
        if not report.verification.passed:
            raise _verification_error(report)
    else:
        report.flops_before, report.flops_after = count_flops(reference, calls), count_flops(deployed, calls)
    record_step(model, deployed, {"kind": "deploy", "input_shape": list(input_shape)})
    return DeployResult(deployed, report)


def transform(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, Traced, Outcome, list[Folded], FoldPlan]:
    """Reparameterize, re-trace, fold: ``model`` is modified in place (deploy passes a copy)."""
    model.eval()
    progress.step(f"reparameterizing the train-time blocks of {type(model).__name__}")
    outcome = reparameterize_all(model)
    root = outcome.root.eval()
    traced = trace(root, input_shape)
    plan = plan_folds(traced)
    progress.step(f"folding {len(plan.pairs)} BatchNorm layers into the layers before them")
    folded = apply_folds(root, plan)
    return root.eval(), traced, outcome, folded, plan


def rebuild(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """The deployed structure without verification, in place: how ``load`` replays a recorded deploy
    before it loads the fused weights (which the weights of ``model`` do not matter for)."""
    root = transform(model, validate_input_shape(input_shape))[0]
    record_step(model, root, {"kind": "deploy", "input_shape": list(input_shape)})
    return root


def _copy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as error:  # noqa: BLE001 - deepcopy fails in many ways on exotic modules
        raise PlugsurgeonError(f"cannot copy {type(model).__name__} to deploy it: {type(error).__name__}: {error}",
                               hint="deploy never modifies the caller's model, so it must be able to deep-copy it") from None


def _notes(traced: Traced, reparameterized: list[Reparameterized], left_alone: list[LeftAlone], was_training: bool) -> list[str]:
    notes = ["the deployed model is in eval mode: BatchNorm statistics are frozen into the convs and dropout is off"]
    if was_training:
        notes.append("the original was in train mode; it was compared in eval mode")
    in_place = sorted({f"{r.before}.{r.method}" for r in reparameterized if r.in_place})
    if in_place:
        notes.append(f"converted in place by their own deploy methods: {', '.join(in_place)}")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for item in left_alone:
        groups.setdefault((item.type, item.method, item.reason), []).append(item.path or "(root)")
    for (kind, method, reason), paths in groups.items():
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        notes.append(f"left alone, {kind}.{method} at {', '.join(paths[:3])}{more}: {reason}")
    if not traced.whole:
        parts = ", ".join(p.path or "(model)" for p in traced.parts)
        notes.append(f"verified part by part ({parts}) on random inputs shaped like each part's inputs: the outer "
                     "forward's NMS/top-k selection turns fp32 round-off into different detections, so its final outputs are not compared")
        outside = [r.path for r in reparameterized if not any(_within(r.path, p.path) for p in traced.parts)]
        if outside:
            notes.append(f"reparameterized outside the traced parts, so not verified: {outside[:5]}")
    return notes


def _within(path: str, part: str) -> bool:
    return part == "" or path == part or path.startswith(part + ".")


def _verification_error(report: DeployReport) -> VerificationError:
    v = report.verification
    assert v is not None  # called on a verification that failed
    worst = max(v.parts, key=lambda p: (not p.passed, p.max_rel_diff))
    where = "" if worst.part == "" else f" in '{worst.part}'"
    blocks = sorted({r.before for r in report.reparameterized})
    if worst.problem:
        # Not a numeric difference: deploy changed what the model returns. Our blocks return one module of the
        # same function, so it is a third-party deploy method (an end-to-end YOLO's fuse() drops its one-to-many
        # head, whose outputs only training reads).
        foreign = sorted({f"{r.before}.{r.method}" for r in report.reparameterized if r.method != "reparameterize()" or r.in_place})
        return VerificationError(
            f"the deployed {report.model}{where} {worst.problem}: deploy changed what it returns, so the two cannot be compared "
            "and nothing was deployed; the model you passed is unchanged",
            hint=(f"{', '.join(foreign)}, called as its library calls it, changed the outputs: deploy the model with its "
                  "library's own tools (Ultralytics: model.fuse(), model.export(format='onnx')), or report it"
                  if foreign else "a block's reparameterize() changed what the model returns: report it"),
        )
    check = f"check reparameterize() of {', '.join(blocks)}; " if blocks else ""
    return VerificationError(
        f"the deployed {report.model} differs from the original{where} by {worst.max_abs_diff:.3g} "
        f"(relative {worst.max_rel_diff:.3g}), over atol={v.atol:g} + rtol={v.rtol:g} x max|output|; the model you passed is unchanged",
        hint=check + "for fp16/bf16 models raise the tolerance with atol=/rtol=",
        cli_hint=check + "for fp16/bf16 models raise the tolerance with --atol/--rtol",
    )
