"""What deploy did, as plain dataclasses with to_dict(); rendering lives in the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Reparameterized:
    """A train-time block converted to its inference form: replaced by the module its method returned,
    or changed in place by a third-party method (timm's ``reparameterize()``), then ``after == before``."""

    path: str
    before: str  # class name
    after: str
    method: str = "reparameterize()"
    in_place: bool = False


@dataclass
class LeftAlone:
    """A block with a third-party deploy method that deploy did not apply, and why; verification
    still compares the model that holds it."""

    path: str
    type: str  # class name
    method: str
    reason: str


@dataclass
class Folded:
    """A BatchNorm folded into the conv (or linear) before it. The BN's path now holds an nn.Identity,
    or, for a norm + activation layer, an nn.Sequential of the children it applied after normalising."""

    layer: str  # path of the conv/linear, which now holds the fused weights
    norm: str  # path of the BatchNorm
    layer_type: str
    norm_type: str
    kept: list[str] = field(default_factory=list)  # children kept at the norm's path, e.g. ["act"]
    # A layer torch.fx cannot trace (a leaf of the graph) that holds both: the pair was read from its own run.
    inside: str = ""


@dataclass
class Skipped:
    """A BatchNorm left in the deployed model, and why."""

    path: str
    reason: str


@dataclass
class PartCheck:
    """Deployed against original, for the whole model or one traced part."""

    part: str  # "" for the whole model
    max_abs_diff: float
    max_rel_diff: float  # max |deployed - original| / max |original|
    passed: bool
    problem: str = ""  # when the outputs cannot be compared value by value: what differs in their structure


@dataclass
class Verification:
    """Max differences between the deployed and the eval-mode original model on random input.

    A part passes when max |deployed - original| <= atol + rtol * max |original|: the tolerance
    scales with the output's magnitude, which is what fp32 round-off does.
    """

    atol: float
    rtol: float
    scope: str  # "whole model" or "traced parts"
    parts: list[PartCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((p.max_abs_diff for p in self.parts), default=0.0)

    @property
    def max_rel_diff(self) -> float:
        return max((p.max_rel_diff for p in self.parts), default=0.0)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parts)


@dataclass
class DeployReport:
    model: str  # class name of the deployed model (the outer model keeps its class)
    input_shape: tuple[int, ...]
    traced: list[str]  # traced part paths, "" for the whole model
    untraced: list[tuple[str, str]] = field(default_factory=list)
    reparameterized: list[Reparameterized] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    eval_mode: bool = True
    params_before: int = 0
    params_after: int = 0
    flops_before: int | None = None  # torch.utils.flop_counter, over the traced parts
    flops_after: int | None = None
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.verification is not None:
            data["verification"].update(
                max_abs_diff=self.verification.max_abs_diff,
                max_rel_diff=self.verification.max_rel_diff,
                passed=self.verification.passed,
            )
        return data



@dataclass
class DetectionCheck:
    """Detections of two runs compared as sets, image by image (deployment.verify.match_detections).

    A detection of the reference is matched when the other run has one of the same label whose box
    coordinates are within ``box`` and whose score is within ``score``. Detections scored within
    ``score`` of the lowest score kept (by either run) sit at the selection's cut, where round-off
    decides, and may be unmatched (``at_cut``); any other unmatched detection, on either side, fails.
    """

    box: float  # largest coordinate difference of a matched pair (pixels)
    score: float  # largest score difference of a matched pair
    extra: float  # other fields of a matched pair: difference at most this times their largest value
    runs: int = 0  # inputs compared
    reference: int = 0  # detections PyTorch returned, over all runs and images
    other: int = 0  # detections the other run (onnxruntime) returned
    matched: int = 0
    at_cut: int = 0
    unmatched: int = 0
    max_box_diff: float = 0.0  # over matched pairs
    max_score_diff: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)  # max abs diff of other fields (masks, keypoints) over matched pairs
    problems: list[str] = field(default_factory=list)  # structural differences, extras out of tolerance

    @property
    def passed(self) -> bool:
        return self.unmatched == 0 and not self.problems

    @property
    def compared_any(self) -> bool:
        """False when no detection could be compared: none at all (a random-weight head scores nothing
        over its threshold), or all of them tied at the cut."""
        return self.matched > 0 or self.unmatched > 0 or bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "compared_any": self.compared_any}
