"""Edit records: three kinds, immutable; applying a plan makes new records and leaves the plan as planned."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

import plugsurgeon as ps

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def antialiased() -> ps.Plan:
    return ps.plan(torchvision.models.resnet18(), "antialias", input_shape=SHAPE)


def test_each_edit_is_of_its_kind(antialiased: ps.Plan) -> None:
    kinds = {(type(e).__name__, e.module_path) for e in antialiased.edits}
    # The paper's ResNet: max-pool swapped for max-blur-pool, a blur after each strided conv's activation,
    # which then runs at stride 1 (and the shortcut's 1x1 conv gets its blur before it).
    assert ("PlannedReplacement", "maxpool") in kinds
    assert ("PlannedInsertion", "layer2.0.blur") in kinds
    assert ("PlannedStrideOne", "layer2.0.conv1") in kinds
    twins = [e for e in antialiased.edits if isinstance(e, ps.PlannedStrideOne)]
    assert twins and all(e.mode == "replace" and e.spec.name == "blur" for e in twins)
    assert all(isinstance(e.replaced(antialiased.model), torch.nn.Conv2d) for e in twins)
    assert all(e.replaced(antialiased.model) is None for e in antialiased.edits if isinstance(e, ps.PlannedInsertion))


def test_records_and_plans_are_frozen(antialiased: ps.Plan) -> None:
    edit = antialiased.edits[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        edit.module = torch.nn.Identity()  # type: ignore[misc]  # the point: records cannot be changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        antialiased.model = torch.nn.Identity()  # type: ignore[misc]  # the point: plans cannot be changed


def test_apply_leaves_the_plan_as_planned() -> None:
    model = torchvision.models.resnet18()
    planned = ps.plan(model, "se", input_shape=SHAPE)
    fake_modules = [e.module for e in planned.edits]
    result = ps.apply_plan(planned)
    assert [e.module for e in planned.edits] == fake_modules  # still the plan's (fake) modules
    committed = result.plan.edits
    assert [e.module_path for e in committed] == [e.module_path for e in planned.edits]
    assert all(result.model.get_submodule(e.module_path) is e.module for e in committed)


def test_names_are_chosen_per_owner_without_changing_records() -> None:
    # Two steps of the same plugin at one site: the second insertion gets the next free name.
    recipe = ps.Recipe.model_validate({"name": "two", "steps": [{"plugin": "se", "at": "residual.branch", "where": {"stages": [2]}},
                                                       {"plugin": "se", "at": "residual.branch", "where": {"stages": [2]}}]})
    planned = ps.plan(torchvision.models.resnet18(), recipe, input_shape=SHAPE)
    assert [e.module_path for e in planned.edits] == ["layer1.0.se", "layer1.1.se", "layer1.0.se_1", "layer1.1.se_1"]


def test_an_explicit_default_shape_is_checked_against_the_trace() -> None:
    model = torchvision.models.resnet18()
    traced = ps.trace(model, SHAPE)
    with pytest.raises(ps.PlugsurgeonError, match="differs from the shape the trace was made at"):
        ps.plan(model, "se", input_shape=(1, 3, 224, 224), traced=traced)
