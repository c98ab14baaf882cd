"""The edit record: what surgery and deploy did to a model, as plain data carried on the model object.

``source`` is a model spec (never a path); ``steps`` are JSON records. A recipe step records the recipe
and input shape it was planned with and the edits it made: for each new module, the step it came from,
the plugin, its mode and arguments, the site (role and path) and the module's path. A deploy step
records its input shape. ``save`` writes them to a manifest that ``load`` replays (store.replay), and
framework integrations replay them to rebuild an edited model (a trainer that builds from a YAML).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from torch import nn

if TYPE_CHECKING:  # annotations only: the plan records itself through these (no import at run time)
    from plugsurgeon.surgery.edits import PlannedEdit
    from plugsurgeon.surgery.plan import Plan
    from plugsurgeon.surgery.recipe import Recipe, Step

_ATTRIBUTE = "_plugsurgeon_provenance"


def get_provenance(model: nn.Module) -> dict[str, Any]:
    return dict(model.__dict__.get(_ATTRIBUTE, {"source": None, "steps": []}))


def set_provenance(model: nn.Module, provenance: dict[str, Any]) -> None:
    # Written to __dict__ directly: nn.Module.__setattr__ would try to register dicts of tensors.
    model.__dict__[_ATTRIBUTE] = provenance


def record_source(model: nn.Module, source: str) -> None:
    set_provenance(model, {"source": source, "steps": []})


def record_step(old: nn.Module, new: nn.Module, step: dict[str, Any]) -> None:
    provenance = get_provenance(old)
    provenance["steps"] = [*provenance.get("steps", []), step]
    set_provenance(new, provenance)


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


def recipe_step(planned: Plan) -> dict[str, Any]:
    """The record of a committed plan (a ``surgery.Plan``): the recipe, its input shape and the edits made."""
    recipe = planned.recipe
    return {
        "kind": "recipe",
        "recipe": recipe.model_dump(mode="json", exclude_defaults=True),
        "input_shape": list(planned.traced.input_shape),
        "edits": [edit_record(edit, recipe) for edit in planned.edits],
    }


def edit_record(edit: PlannedEdit, recipe: Recipe) -> dict[str, Any]:
    return {
        "step": edit.step_index,
        "plugin": edit.spec.name,
        "mode": edit.mode,
        "role": edit.site.role,
        "site": edit.site.path,
        "path": edit.module_path,
        "args": _resolved_args(recipe.steps[edit.step_index - 1]),
    }


def _resolved_args(step: Step) -> dict[str, Any]:
    """Every argument the module was built with, defaults included, as JSON data: a default that
    changes in a later version then cannot change what a saved directory rebuilds."""
    from pydantic_core import to_jsonable_python

    resolve = getattr(step, "plugin_args", None)
    args = resolve() if callable(resolve) else step.args
    if isinstance(args, BaseModel):
        args = args.model_dump(mode="json")
    return to_jsonable_python(dict(args))


def describe(error: ValidationError) -> str:
    """The first problem of a validation error, with where it is: one line, no input echoed."""
    first = error.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"field '{location}': {message[:200]}{more}"


STEP_RECORD = TypeAdapter(StepRecord)  # validates one step given as plain data
