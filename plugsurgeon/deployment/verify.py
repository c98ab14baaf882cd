"""Deployed against original, on the same random inputs.

A model traced whole is compared end to end. A model traced in parts (detection) is compared part
by part, on random tensors shaped like each part's recorded inputs: its outer forward selects boxes
with NMS and top-k, which turns fp32 round-off into different detections, so comparing the final
outputs would test the selection, not the deploy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import FlopCounterMode

from plugsurgeon.deployment.report import PartCheck, Verification
from plugsurgeon.graph.trace import Traced

Calls = list[tuple[str, tuple[Any, ...]]]  # (part path, inputs of its forward)


def probe_calls(traced: Traced, seed: int = 0) -> Calls:
    """Random inputs for every traced part, shaped like the inputs it was traced with."""
    generator = torch.Generator().manual_seed(seed)

    def fill(value):
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return torch.randn(value.shape, generator=generator, dtype=torch.float32).to(value.dtype)
        return torch.zeros(value.shape, dtype=value.dtype)

    return [(part.path, tree_map(fill, part.example_inputs)) for part in traced.parts]


def module_at(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def run(model: nn.Module, calls: Calls) -> tuple[list[Any], int]:
    """One real forward of every call's module, and the FLOPs torch's counter saw on the way.

    Each run gets a copy of the inputs, so in-place ops cannot leak from one model's run into the other's.
    """
    outputs, flops = [], 0
    for path, inputs in calls:
        module = module_at(model, path)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        copied = tree_map(lambda v, device=device: v.to(device, copy=True) if isinstance(v, torch.Tensor) else v, inputs)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            outputs.append(module(*copied))
        flops += counter.get_total_flops()
    return outputs, flops


def compare(expected: list[Any], actual: list[Any], calls: Calls, *, atol: float, rtol: float) -> Verification:
    """Outputs of ``run`` on the original and the deployed model; a part passes when
    max|deployed - original| <= atol + rtol * max|original|, output by output."""
    scope = "whole model" if [path for path, _ in calls] == [""] else "traced parts"
    verification = Verification(atol, rtol, scope)
    for (path, _), e, a in zip(calls, expected, actual, strict=True):
        verification.parts.append(check_outputs(path, tree_leaves(e), tree_leaves(a), atol, rtol))
    return verification


def check_outputs(path: str, expected: list, actual: list, atol: float, rtol: float) -> PartCheck:
    expected = [t for t in expected if isinstance(t, torch.Tensor)]
    actual = [t for t in actual if isinstance(t, torch.Tensor)]
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual, strict=True)):
        return PartCheck(path, float("inf"), float("inf"), False)
    worst_abs, worst_rel, passed = 0.0, 0.0, True
    for e, a in zip(expected, actual, strict=True):
        if e.numel() == 0:
            continue
        e, a = e.detach().double().cpu(), a.detach().double().cpu()
        diff = torch.where(e == a, torch.zeros_like(e), (a - e).abs())
        max_abs = float(diff.max())
        scale = float(e.abs().max())
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        ok = max_abs <= atol + rtol * scale  # False for NaN
        worst_abs = max(worst_abs, max_abs) if max_abs == max_abs else float("nan")
        worst_rel = max(worst_rel, max_rel) if max_rel == max_rel else float("nan")
        passed = passed and ok
    return PartCheck(path, worst_abs, worst_rel, passed)
