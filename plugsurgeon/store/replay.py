"""Replaying recorded steps on a rebuilt model: a saved directory's manifest, or a checkpoint's record.

Replay plans the recorded recipe again with this version's engine (``plan`` / ``apply_plan``, the
engine's public pieces) and refuses unless the plan makes exactly the recorded edits, so a locator
that now finds sites differently, or a new-module name chosen differently, cannot move a module on
load. What a deploy step folds is decided by the structure it is given, and any difference shows up
as weights that do not fit.
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from torch import nn

from plugsurgeon.deployment.deploy import rebuild
from plugsurgeon.errors import ModelLoadError, PlugsurgeonError
from plugsurgeon.store.config import apply_config
from plugsurgeon.store.sources import build_source
from plugsurgeon.surgery.commit import apply_plan
from plugsurgeon.surgery.plan import plan
from plugsurgeon.surgery.recipe import Recipe
from plugsurgeon.surgery.record import (
    STEP_RECORD,
    DeployStep,
    EditRecord,
    RecipeStep,
    describe,
    edit_record,
    recipe_step,
    set_provenance,
)


def replay(model: nn.Module, step: RecipeStep | DeployStep | dict[str, Any], *, where: str = "the manifest", note: str = "") -> nn.Module:
    """Redo one recorded step on ``model`` (in place where possible; returns the new root).

    ``where`` names the step in messages; ``note`` is appended to a refusal caused by a rebuild that
    differs from the record (the versions that differ from the writer's, when some do).
    """
    if isinstance(step, dict):
        try:
            step = STEP_RECORD.validate_python(step)
        except ValidationError as error:
            raise ModelLoadError(f"{where} is not a valid step record: {describe(error)}") from None
    if isinstance(step, DeployStep):
        try:
            return rebuild(model, tuple(step.input_shape))
        except PlugsurgeonError as error:
            raise ModelLoadError(f"{where} (deploy) cannot be redone: {error.message}{note}", hint=error.hint) from None
    recipe = _recipe(step, where)
    try:
        planned = plan(model, recipe, input_shape=tuple(step.input_shape))
    except PlugsurgeonError as error:
        raise ModelLoadError(f"{where} (recipe '{recipe.name}') cannot be planned on the rebuilt model: {error.message}{note}",
                             hint="the model source builds a different network than it did when the directory was written") from None
    found = [EditRecord(**edit_record(edit, recipe)) for edit in planned.edits]
    _check_same_edits(step.edits, found, where, recipe.name, note)
    try:
        return apply_plan(planned).model
    except PlugsurgeonError as error:
        raise ModelLoadError(f"{where} (recipe '{recipe.name}') cannot be redone: {error.message}{note}") from None


def _recipe(step: RecipeStep, where: str):
    """The recorded recipe, each step with the arguments its edits record (the resolved ones)."""
    recipe = _validated_recipe(step.recipe, where)
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    for index in sorted({edit.step for edit in step.edits}):
        recorded = [edit.args for edit in step.edits if edit.step == index]
        if any(args != recorded[0] for args in recorded):
            raise ModelLoadError(f"{where}: the edits of recipe step {index} record different arguments; one step builds every module alike",
                                 hint="the manifest was edited by hand; save the model again with ps.save")
        if index > len(data["steps"]):
            raise ModelLoadError(f"{where}: edits come from recipe step {index}, which the recorded recipe does not have",
                                 hint="the manifest was edited by hand; save the model again with ps.save")
        data["steps"][index - 1]["args"] = recorded[0]
    return _validated_recipe(data, where)


def _validated_recipe(data: dict[str, Any], where: str):
    try:
        return Recipe(**data)
    except ValidationError as error:
        raise ModelLoadError(f"{where} records a recipe that is not valid here: {describe(error)}",
                             hint="it may have been written by another plugsurgeon version") from None
    except (PlugsurgeonError, TypeError) as error:
        raise ModelLoadError(f"{where} records a recipe that is not valid here: {getattr(error, 'message', error)}") from None


def _check_same_edits(recorded: list[EditRecord], found: list[EditRecord], where: str, recipe: str, note: str) -> None:
    if recorded == found:
        return
    missing = [e for e in recorded if e not in found]
    extra = [e for e in found if e not in recorded]
    parts = []
    if missing:
        parts.append(f"recorded but not planned now: {_show(missing)}")
    if extra:
        parts.append(f"planned now but not recorded: {_show(extra)}")
    if not parts:
        parts.append("the same edits in another order")
    raise ModelLoadError(
        f"{where} (recipe '{recipe}'): replaying it would not rebuild the saved model; {'; '.join(parts)}{note}",
        hint="load it with the plugsurgeon (and torchvision/timm) versions the manifest records under 'versions'",
    )


def _show(edits: list[EditRecord]) -> str:
    shown = ", ".join(f"{e.plugin} at '{e.site}' as '{e.path}' (step {e.step})" for e in edits[:3])
    return shown + (f" and {len(edits) - 3} more" if len(edits) > 3 else "")


def resolve(source: str, steps: list[dict[str, Any]], *, config: Sequence[Any] = ()) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Rebuild ``source``, set its recorded configuration (``module_config`` records) and redo ``steps``,
    filling in the edits of recipe steps recorded without them; returns the rebuilt model and the
    complete records. For saving models whose steps were recorded without their edits: the caller
    named (and so trusts) the source."""
    model = build_source(source, trusted=True)
    apply_config(model, list(config), where="the model being saved")
    complete = []
    for index, step in enumerate(steps, start=1):
        if step.get("kind") == "recipe" and "edits" not in step:
            recipe = Recipe(**step["recipe"])
            planned = plan(model, recipe, input_shape=tuple(step["input_shape"]))
            record = recipe_step(planned)
            model = apply_plan(planned).model
        else:
            record = dict(step)
            model = replay(model, record, where=f"step {index}")
        complete.append(record)
    set_provenance(model, {"source": source, "steps": complete})
    return model, complete
