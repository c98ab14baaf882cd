"""Deployed against original, on the same random inputs.

A model traced whole is compared end to end. A model traced in parts (detection) is compared part
by part, on random tensors shaped like each part's recorded inputs: its outer forward selects boxes
with NMS and top-k, which turns fp32 round-off into different detections, so comparing the final
outputs would test the selection, not the deploy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from plugsurgeon.deployment.report import DetectionCheck, PartCheck, Verification
from plugsurgeon.graph.flops import TotalFlops
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
        with torch.no_grad(), TotalFlops() as counter:
            outputs.append(module(*copied))
        flops += counter.total
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
    if len(expected) != len(actual):
        return PartCheck(path, float("inf"), float("inf"), False,
                         problem=f"returns {len(actual)} tensors where the original returns {len(expected)}")
    for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if e.shape != a.shape:
            return PartCheck(path, float("inf"), float("inf"), False,
                             problem=f"returns a {_shape(a)} tensor as output {index} where the original returns {_shape(e)}")
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



# Detections (torchvision's convention: a list with one dict per image holding ``boxes`` (N, 4), ``scores`` (N,),
# ``labels`` (N,) and per-detection extras such as ``masks`` or ``keypoints``) come out of a selection: score
# threshold, non-maximum suppression, top-k. Two runs that differ by round-off keep the same detections, but in
# whatever order the selection met them, and a candidate scored right at the cut may be kept by one run only. So
# detections are compared as sets: each one the reference kept is paired with the other run's nearest detection
# of the same label. Boxes are compared by their coordinates, not by IoU: random weights make slivers a tenth of
# a pixel wide, whose IoU a 1e-4 pixel shift moves by 1%.
MATCH_BOX = 1e-3  # a pair's coordinates differ by at most this times the image's larger side
MATCH_SCORE = 1e-3  # and their scores by at most this; also the width of the band at the cut that may differ
MATCH_EXTRA = 1e-2  # other per-detection fields (masks, keypoints) of a pair: at most this times their largest value
# Masks are resampled from the box (RoIAlign, then pasted at the box), so a sub-pixel box shift moves them
# more than it moves the box: hence the looser bound.


def is_detections(value: Any) -> bool:
    """A list or tuple of per-image dicts with ``boxes`` (N, 4) and ``scores`` (N,) (and ``labels`` (N,), if any)."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    for image in value:
        if not isinstance(image, dict):
            return False
        boxes, scores, labels = image.get("boxes"), image.get("scores"), image.get("labels")
        if not (isinstance(boxes, torch.Tensor) and isinstance(scores, torch.Tensor)):
            return False
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or not boxes.is_floating_point():
            return False
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != scores.shape):
            return False
    return True


def match_detections(expected: list[dict], actual: list[dict], image_size: float, check: DetectionCheck | None = None) -> DetectionCheck:
    """Compare two runs' detections image by image, as sets (see above), adding to ``check``.

    ``image_size`` is the input image's larger side: the box tolerance is relative to it.
    """
    check = check if check is not None else DetectionCheck(box=MATCH_BOX * image_size, score=MATCH_SCORE, extra=MATCH_EXTRA)
    check.runs += 1
    if len(expected) != len(actual):
        check.problems.append(f"{len(expected)} images in PyTorch's output, {len(actual)} in the other")
        return check
    for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
        e = {k: v.detach().cpu() for k, v in e.items() if isinstance(v, torch.Tensor)}
        a = {k: v.detach().cpu() for k, v in a.items() if isinstance(v, torch.Tensor)}
        if e.keys() != a.keys() or any(e[k].shape[1:] != a[k].shape[1:] for k in e):
            check.problems.append(f"image {index}: fields {_fields(e)} in PyTorch's output, {_fields(a)} in the other")
            continue
        n, m = len(e["scores"]), len(a["scores"])
        check.reference += n
        check.other += m
        # distance[i, j]: the largest coordinate difference, or inf where the labels differ
        distance = (e["boxes"].double()[:, None, :] - a["boxes"].double()[None, :, :]).abs().amax(-1) if n and m else torch.empty(n, m)
        if "labels" in e and n and m:
            distance = distance.masked_fill(e["labels"][:, None] != a["labels"][None, :], math.inf)
        taken = torch.zeros(m, dtype=torch.bool)
        pairs = []
        for i in torch.argsort(e["scores"], descending=True, stable=True).tolist():
            if not m:
                break
            row = distance[i].masked_fill(taken, math.inf)
            j = int(row.argmin())
            score_diff = abs(float(e["scores"][i]) - float(a["scores"][j]))
            if float(row[j]) <= check.box and score_diff <= check.score:
                taken[j] = True
                pairs.append((i, j))
                check.max_box_diff = max(check.max_box_diff, float(row[j]))
                check.max_score_diff = max(check.max_score_diff, score_diff)
        check.matched += len(pairs)
        # The cut: round-off can only move a candidate across the selection's boundary (a score threshold, or the
        # last place of a top-k) that it sits at, so what one run kept and the other did not scores within
        # ``score`` of the lowest score kept. The lower of the two runs' lowest: a run that kept too few (a
        # count recorded as a constant) leaves the other's extra detections above that, and they fail.
        lowest = [float(scores.min()) for scores in (e["scores"], a["scores"]) if len(scores)]
        cut = min(lowest) + check.score if lowest else math.inf
        paired_e, paired_a = {i for i, _ in pairs}, {j for _, j in pairs}
        for scores, paired in ((e["scores"], paired_e), (a["scores"], paired_a)):
            for k, value in enumerate(scores.tolist()):
                if k not in paired:
                    if value <= cut:
                        check.at_cut += 1
                    else:
                        check.unmatched += 1
        if pairs:
            rows_e, rows_a = (torch.tensor(side) for side in zip(*pairs, strict=True))
            for key in sorted(set(e) - {"boxes", "scores", "labels"}):
                ref, other = e[key][rows_e].double(), a[key][rows_a].double()
                diff = float((ref - other).abs().max()) if ref.numel() else 0.0
                scale = float(e[key].double().abs().max()) if e[key].numel() else 0.0
                check.extras[key] = max(check.extras.get(key, 0.0), diff)
                if not diff <= check.extra * scale:  # NaN fails too
                    check.problems.append(f"image {index}: '{key}' of matched detections differ by {diff:.3g} (largest value {scale:.3g})")
    return check


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _fields(value: dict) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in value.items())
