"""Candidates to edits: each candidate's recipe dry-run on one trace, and candidates that resolve to the same edits made one.

Two choices are the same candidate when the model would get the same edits: the same plugins, with the
same arguments (defaults filled in), at the same sites, in the same order at each site. That is decided
from the plans, never from the YAML (``last`` of stages 4 and 5 is ``last`` of stage 5).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.graph.fake import count_params
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.surgery.commit import apply
from plugsurgeon.surgery.plan import Plan
from plugsurgeon.surgery.recipe import Recipe
from plugsurgeon.sweep.space import Space, check_model, describe, grid, load_space, resolve


def edits_key(planned: Plan | None) -> str:
    """What a candidate does to the model, as a string: equal for candidates with the same edits.

    Args:
        planned: The candidate's plan; None for the unedited model.

    Returns:
        JSON of (site, role, plugin, mode, arguments with defaults) per edit, by site, in step order at a site.
    """
    if planned is None:
        return "[]"
    edits = []
    for edit in planned.edits:
        args = edit.spec.validate_args(edit.args).model_dump(mode="json") if edit.args or edit.spec.args.model_fields else {}
        edits.append([edit.site.path, edit.site.role, edit.spec.name, edit.spec.mode, args])
    edits.sort(key=lambda e: (e[0], e[1]))  # stable: several edits at one site keep their order
    return json.dumps(edits, sort_keys=True)


@dataclass
class Candidate:
    """One distinct placement: its recipe, what it costs, and the choices that give it.

    Attributes:
        label: The candidate in a few words.
        recipe: Its recipe (None: the unedited model).
        key: Its edits (``edits_key``).
        values: The first choice of dimension values that gives it.
        same: How many choices give it (duplicates collapse here).
        edits: How many edits it makes.
        params: The edited model's parameters.
        params_added: Parameters it adds.
        flops: The edited model's FLOPs for one forward at the input shape (None if not counted).
        flops_added: FLOPs it adds.
        error: Why the candidate cannot be built (a placement the model refuses), else None.
    """

    label: str
    recipe: Recipe | None
    key: str
    values: dict[str, Any]
    same: int = 1
    edits: int = 0
    params: int = 0
    params_added: int = 0
    flops: int | None = None
    flops_added: int | None = 0
    error: str | None = None

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates: torch's flop counter counts two FLOPs per MAC."""
        return None if self.flops is None else self.flops // 2

    @property
    def macs_added(self) -> int | None:
        return None if self.flops_added is None else self.flops_added // 2

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "recipe": None if self.recipe is None else self.recipe.model_dump(mode="json", exclude_defaults=True),
                "values": self.values, "same": self.same, "edits": self.edits, "params": self.params,
                "params_added": self.params_added, "macs": self.macs, "macs_added": self.macs_added, "error": self.error}


def price(model: nn.Module, recipe: Recipe | None, traced: Traced, values: dict[str, Any] | None = None) -> Candidate:
    """Dry-run one candidate on a trace of ``model``: its edits, parameters and FLOPs, nothing built or changed.

    A candidate the model refuses (no site left, a plugin that does not fit) comes back with ``error``.
    """
    base_params = count_params(model)
    if recipe is None:
        return Candidate("(unedited)", None, edits_key(None), dict(values or {}), params=base_params, flops=traced.flops)
    label = describe(recipe)
    try:
        result = apply(model, recipe, traced=traced, dry_run=True)
    except PlugsurgeonError as error:
        return Candidate(label, recipe, f"error: {error.message}", dict(values or {}), error=error.message.splitlines()[0][:300] if error.message else "")
    report = result.report
    added = report.flops_added
    flops = None if traced.flops is None or (added is None and report.edits) else traced.flops + (added or 0)
    return Candidate(label, recipe, edits_key(result.plan), dict(values or {}), edits=len(report.edits),
                     params=report.params_after, params_added=report.params_after - base_params, flops=flops, flops_added=added)


@dataclass
class Expansion:
    """A space expanded on a model: its distinct candidates, priced, and those the model refuses.

    Attributes:
        combinations: How many choices the space has.
        candidates: The distinct placements, in the order first met.
        refused: Candidates that cannot be built, with why (``Candidate.error``), one per distinct reason.
        baseline: The unedited model, priced.
    """

    combinations: int
    candidates: list[Candidate]
    refused: list[Candidate] = field(default_factory=list)
    baseline: Candidate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"combinations": self.combinations, "candidates": [c.to_dict() for c in self.candidates],
                "refused": [c.to_dict() for c in self.refused], "baseline": None if self.baseline is None else self.baseline.to_dict()}


def expand(model: nn.Module, space: str | Space | dict, *, input_shape: Sequence[int] | None = None, traced: Traced | None = None,
           model_name: str | None = None, on_candidate: Callable[[int, int], None] | None = None) -> Expansion:
    """Every distinct placement a space expands to on a model, priced by dry runs on one trace.

    Args:
        model: The model.
        space: A space YAML path, its content as a mapping, or a ``Space``.
        input_shape: The input shape, N,C,H,W (default 1,3,224,224, or the trace's).
        traced: A trace of ``model`` to reuse (``ps.trace``).
        model_name: The model's name in messages (default: its class name).
        on_candidate: Called with (done, total) after each combination is priced.

    Returns:
        The expansion: distinct candidates with parameters and FLOPs, and refused ones.

    Raises:
        RecipeError: The space is malformed or names a stage the model lacks.
        PlugsurgeonError: The space has a continuous range, or too many combinations to list.
    """
    space = load_space(space)
    combos = grid(space)  # a continuous or huge space is refused before the model is traced
    traced = traced or trace(model, tuple(input_shape or DEFAULT_INPUT_SHAPE))
    check_model(space, traced, model_name or type(model).__name__)
    baseline = price(model, None, traced)
    by_recipe: dict[str, Candidate] = {}  # choices that give the same recipe are not planned twice
    by_key: dict[str, Candidate] = {}
    for done, values in enumerate(combos, start=1):
        recipe = resolve(space, values)
        text = "" if recipe is None else recipe.model_dump_json()
        known = by_recipe.get(text)
        if known is None:
            known = price(model, recipe, traced, values)
            by_recipe[text] = known
            if known.key in by_key:
                by_key[known.key].same += 1
            else:
                by_key[known.key] = known
        else:
            by_key[known.key].same += 1
        if on_candidate is not None:
            on_candidate(done, len(combos))
    candidates = [c for c in by_key.values() if c.error is None]
    refused = [c for c in by_key.values() if c.error is not None]
    return Expansion(len(combos), candidates, refused, baseline)
