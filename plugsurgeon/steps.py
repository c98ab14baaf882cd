"""Recorded steps: what surgery and deploy did to a model, as data, and replaying them when a saved model is loaded.

A recipe step records the recipe and input shape it was planned with and the edits it made: for
each new module, the step it came from, the plugin, its mode and arguments, the site (role and
path) and the module's path. Replay plans the recorded recipe again with this version's engine
(``plan`` / ``apply_plan``, the engine's public pieces) and refuses unless the plan makes exactly
the recorded edits, so a locator that now finds sites differently, or a new-module name chosen
differently, cannot move a module on load. A deploy step records its input shape; what it folds is
decided by the structure it is given, and any difference shows up as weights that do not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from torch import nn

from plugsurgeon.errors import ModelLoadError, PlugsurgeonError

MAX_STEPS = 64
MAX_EDITS = 10_000  # per step: every conv of a large model, with room to spare
MAX_DIM = 1 << 16

Short = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ModulePath = Annotated[str, StringConstraints(max_length=1024)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
InputShape = Annotated[list[Dim], Field(min_length=3, max_length=8)]


class _Record(BaseModel):
    # strict: a manifest is JSON written by a program, so "1" is not 1 and true is not 1.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EditRecord(_Record):
    step: int = Field(ge=1, le=MAX_STEPS * 16, description="1-based index of the recipe step that made the edit")
    plugin: Short
    mode: Literal["after", "replace"]
    role: Short
    site: ModulePath = Field(description="path of the site the module was put at")
    path: ModulePath = Field(description="path of the new (or replacing) module")
    args: dict[Short, Any] = Field(default_factory=dict, max_length=64, description="the step's plugin arguments")


class RecipeStep(_Record):
    kind: Literal["recipe"]
    recipe: dict[Short, Any]
    input_shape: InputShape
    edits: list[EditRecord] = Field(min_length=1, max_length=MAX_EDITS)


class DeployStep(_Record):
    kind: Literal["deploy"]
    input_shape: InputShape


StepRecord = Annotated[RecipeStep | DeployStep, Field(discriminator="kind")]


def recipe_step(planned) -> dict[str, Any]:
    """The record of a committed plan (a ``surgery.Plan``): the recipe, its input shape and the edits made."""
    recipe = planned.recipe
    return {
        "kind": "recipe",
        "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
        "input_shape": list(planned.traced.input_shape),
        "edits": [_edit_record(edit, recipe) for edit in planned.edits],
    }


def _edit_record(edit, recipe) -> dict[str, Any]:
    return {
        "step": edit.step_index,
        "plugin": edit.spec.name,
        "mode": edit.spec.mode,
        "role": edit.site.role,
        "site": edit.site.path,
        "path": edit.module_path,
        "args": _resolved_args(recipe.steps[edit.step_index - 1]),
    }


def _resolved_args(step) -> dict[str, Any]:
    """Every argument the module was built with, defaults included, as JSON data: a default that
    changes in a later version then cannot change what a saved directory rebuilds."""
    from pydantic_core import to_jsonable_python

    resolve = getattr(step, "plugin_args", None)
    args = resolve() if callable(resolve) else step.args
    if isinstance(args, BaseModel):
        args = args.model_dump(mode="json")
    return to_jsonable_python(dict(args))


def replay(model: nn.Module, step: RecipeStep | DeployStep | dict[str, Any], *, where: str = "the manifest", note: str = "") -> nn.Module:
    """Redo one recorded step on ``model`` (in place where possible; returns the new root).

    ``where`` names the step in messages; ``note`` is appended to a refusal caused by a rebuild that
    differs from the record (the versions that differ from the writer's, when some do).
    """
    if isinstance(step, dict):
        try:
            step = _STEP.validate_python(step)
        except ValidationError as error:
            raise ModelLoadError(f"{where} is not a valid step record: {describe(error)}") from None
    if isinstance(step, DeployStep):
        from plugsurgeon.deployment.deploy import rebuild

        try:
            return rebuild(model, tuple(step.input_shape))
        except PlugsurgeonError as error:
            raise ModelLoadError(f"{where} (deploy) cannot be redone: {error.message}{note}", hint=error.hint) from None
    from plugsurgeon.surgery import apply_plan, plan

    recipe = _recipe(step, where)
    try:
        planned = plan(model, recipe, input_shape=tuple(step.input_shape))
    except PlugsurgeonError as error:
        raise ModelLoadError(f"{where} (recipe '{recipe.name}') cannot be planned on the rebuilt model: {error.message}{note}",
                             hint="the model source builds a different network than it did when the directory was written") from None
    found = [EditRecord(**_edit_record(edit, recipe)) for edit in planned.edits]
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
    from plugsurgeon.recipe import Recipe

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
    from plugsurgeon.models import build_source
    from plugsurgeon.module_config import apply_config
    from plugsurgeon.provenance import set_provenance
    from plugsurgeon.recipe import Recipe
    from plugsurgeon.surgery import apply_plan, plan

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


def describe(error: ValidationError) -> str:
    """The first problem of a validation error, with where it is: one line, no input echoed."""
    first = error.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"field '{location}': {message[:200]}{more}"


def _step_adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(StepRecord)


_STEP = _step_adapter()
