"""Applying a plan: every edit built and checked before the first change, then committed in one step that cannot fail half-way."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from plugsurgeon import progress
from plugsurgeon.errors import PlugsurgeonError, RecipeError, SiteError, first_line
from plugsurgeon.graph.check import compare
from plugsurgeon.graph.edit import Insertion, build_owner, carry_hooks, commit, overlay
from plugsurgeon.graph.edited import edited_graph
from plugsurgeon.graph.fake import count_params
from plugsurgeon.graph.owner_traces import OwnerTraces
from plugsurgeon.graph.trace import Traced, TracedPart, own_statements
from plugsurgeon.surgery.carried_hooks import check_carried_hooks
from plugsurgeon.surgery.edits import PlannedInsertion
from plugsurgeon.surgery.plan import Plan, owner_call, owner_module, plan, structured_children
from plugsurgeon.surgery.recipe import Recipe
from plugsurgeon.surgery.record import recipe_step, record_step
from plugsurgeon.surgery.report import SurgeryReport


@dataclass
class SurgeryResult:
    """What ``ps.apply`` and ``ps.apply_plan`` return: the edited model, its report and the plan it came from.

    Attributes:
        model: The edited model: a copy of the model given to ``apply``, or that model itself with
            ``inplace=True`` (for a dry run, the unchanged model).
        report: What changed: every edit with its site, parameters and FLOPs added, and notes. In a
            notebook it shows itself as the picture of the edit (``ps.picture``).
        plan: The plan that was committed (or, for a dry run, checked).

    Examples:
        >>> result = ps.apply(torchvision.models.resnet18(), "cbam")
        >>> result.report.params_after - result.report.params_before
        89880
        >>> result.model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """

    model: nn.Module
    report: SurgeryReport
    plan: Plan


def build_edits(planned: Plan) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Every edited owner and replacement module, built without touching ``planned.model``."""
    model, traced = planned.model, planned.traced
    groups: dict[str, list[PlannedInsertion]] = defaultdict(list)
    for edit in planned.edits:
        if isinstance(edit, PlannedInsertion):
            groups[edit.owner].append(edit)
    owners: dict[str, nn.Module] = {}
    traces = OwnerTraces()  # blocks that trace alike are traced once
    for owner_path, edits in groups.items():
        part = traced.part(edits[0].site.part)
        concrete, through = owner_call(part, edits[0].scope)
        insertions = [
            Insertion(e.scope.local, e.attribute, e.module, e.scope.op, e.scope.target, e.extra_locals, e.on_edges)
            for e in sorted(edits, key=lambda e: e.step_index)
        ]
        try:
            owners[owner_path] = build_owner(owner_module(model, owner_path), owner_path, insertions, concrete, through, traces)
        except PlugsurgeonError:
            raise
        except Exception as error:  # noqa: BLE001 - fx raises many types
            raise SiteError(f"cannot edit '{owner_path or type(model).__name__}' (sites {[e.site.path for e in edits]}): "
                            f"{type(error).__name__}: {first_line(error, 200)}",
                            hint="exclude these sites with `where: {exclude: [...]}`") from None
    replacements = {e.module_path: e.module for e in planned.edits if not isinstance(e, PlannedInsertion)}
    for path, module in replacements.items():
        carry_hooks(model.get_submodule(path), module)
    return owners, replacements


def check_edits(planned: Plan, owners: dict[str, nn.Module], replacements: dict[str, nn.Module]) -> None:
    """The edited model runs in train and eval mode wherever the original does, with the same output
    structure (each edited part on its recorded inputs); the failing edit is named."""
    model, traced = planned.model, planned.traced
    for part in traced.parts:
        paths = [p for p in (*owners, *replacements) if _within(p, part.path)]
        if not paths or _proven_locally(planned, part, owners):
            continue
        progress.step(f"checking '{part.path or type(model).__name__}' edited, in train and eval mode")
        problem = _part_problem(model, traced, part, owners, replacements)
        if problem is None:
            continue
        culprit = next((p for p in paths if _part_problem(model, traced, part, *_only(p, owners, replacements)) is not None), None)
        sites = [e.site.path for e in planned.edits if e.module_path == culprit or (culprit and e.owner == culprit)] if culprit else []
        where = f"the edit at '{culprit}' (site {', '.join(sites)})" if culprit else f"the edits in '{part.path or type(model).__name__}'"
        raise SiteError(f"{where} breaks the model: {problem}",
                        hint="exclude the site with `where: {exclude: [...]}`; nothing was changed")
    check_carried_hooks(planned, replacements)  # the runs above suspend hooks; a replacement's carried ones must work too


def _proven_locally(planned: Plan, part: TracedPart, owners: dict[str, nn.Module]) -> bool:
    """True when every edit in ``part`` is proven on its own (``PlannedEdit.proven``) and every owner
    it edits traced alone exactly as inside the model: the edited graph is then the original one with
    modules that keep shapes and dtypes spliced in, and running the whole part would find nothing."""
    edits = [e for e in planned.edits if e.site.part == part.path]
    if not all(e.proven for e in edits):
        return False
    scopes = {e.owner: e.scope for e in edits if isinstance(e, PlannedInsertion)}  # one call per owner (_choose_scope)
    for path, scope in scopes.items():
        graph = edited_graph(owners[path]) if path in owners else None
        if (structured_children(part, scope.owner, scope.call) or graph is None
                or own_statements(graph) != part.statements(scope.owner, scope.call)):
            return False
    return True


def _within(path: str, part_path: str) -> bool:
    return part_path == "" or path == part_path or path.startswith(part_path + ".")


def _only(path: str, owners: dict[str, nn.Module],
          replacements: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    return ({path: owners[path]} if path in owners else {}), ({path: replacements[path]} if path in replacements else {})


def _part_problem(model: nn.Module, traced: Traced, part: TracedPart, owners: dict[str, nn.Module],
                  replacements: dict[str, nn.Module]) -> str | None:
    edited = overlay(model, owners, replacements)
    original_part = owner_module(model, part.path)
    edited_part = owner_module(edited, part.path)
    # The traced graph's output stands for the original's only while the part keeps its own class.
    known = part.eval_structure if part.path not in owners else None
    return compare(original_part, edited_part, part.example_inputs, traced.fake_mode, known, part.outcomes)


def apply_plan(planned: Plan) -> SurgeryResult:
    """Commit a plan into ``planned.model``, in place.

    The plan's modules were built on fake tensors: every new module is built for real first (from the
    model's own layers, for a replacement), the edited model is checked to run in train and eval mode
    wherever the original does, and only then is the first attribute set, so a failure leaves the
    model unchanged. The edit is not recorded for ``ps.save``; ``ps.apply`` records it.

    Args:
        planned: A plan from ``ps.plan``, of a model not changed since.

    Returns:
        The edited model (``planned.model`` itself, or a new root for a model whose own forward was
        edited), its report, and the plan.

    Raises:
        RecipeError: A plugin module cannot be built with the step's arguments.
        SiteError: The edited model fails where the original runs, or returns another output
            structure; the edit responsible is named.

    Examples:
        >>> planned = ps.plan(model, "cbam")
        >>> [edit.site.path for edit in planned.edits][:2]
        ['layer1.0.bn2', 'layer1.1.bn2']
        >>> result = ps.apply_plan(planned)
    """
    model = planned.model
    progress.step(f"building {len(planned.edits)} edits")
    # The plan's modules are fake: the committed plan holds the real ones, built from the model's layers.
    planned = replace(planned, edits=tuple(edit.materialized(model) for edit in planned.edits))
    owners, replacements = build_edits(planned)
    check_edits(planned, owners, replacements)
    keys_before = set(model.state_dict())
    report = planned.report()
    root = commit(model, owners, replacements)
    keys_after = set(root.state_dict())
    report.applied = True
    report.new_keys = sorted(keys_after - keys_before)
    report.renamed_keys = sorted(keys_before - keys_after)
    if report.renamed_keys:
        report.notes.append(f"{len(report.renamed_keys)} original state_dict keys are gone or renamed: {report.renamed_keys[:5]}")
    report.params_after = count_params(root)
    return SurgeryResult(root, report, planned)


def apply(model: nn.Module, recipe: str | Path | Recipe | dict, *, input_shape: Sequence[int] | None = None, inplace: bool = False,
          dry_run: bool = False, traced: Traced | None = None) -> SurgeryResult:
    """Apply a recipe: insert or swap in its plugin modules at the sites of the roles it names.

    The model is traced, every step's sites found and every new module built and checked (``ps.plan``),
    then the edits are committed at once (``ps.apply_plan``) and recorded on the model, so that
    ``ps.save`` can write how it was made. The caller's model is copied unless ``inplace``; a
    failure leaves it exactly as it was.

    Args:
        model: The model to edit.
        recipe: A built-in recipe's name (``"cbam"``; ``plugsurgeon recipes`` lists them), a path to
            a recipe YAML file, its content as a mapping, or a ``Recipe``.
        input_shape: The input the model is traced at, N,C,H,W; default ``(1, 3, 224, 224)``, or the
            shape of ``traced``.
        inplace: Edit ``model`` itself instead of a copy.
        dry_run: Plan, build and check every edit and report it, but change and copy nothing.
        traced: A trace of ``model`` as it is now (``ps.trace``), reused instead of tracing again:
            trying several recipes on one model then traces it once.

    Returns:
        The edited model, the report of the edits, and the plan.

    Raises:
        PlugsurgeonError: ``model`` is not an ``nn.Module``, ``traced`` is not a trace of it as it
            is, or ``input_shape`` differs from the trace's.
        UnknownNameError: ``recipe`` names no built-in recipe.
        RecipeError: The recipe is malformed, a plugin cannot be built with its arguments, or two
            steps replace the same module.
        SiteError: A step matches no site, or a site its plugin cannot take, or the edited model
            fails where the original runs.
        TraceError: The model does not run on ``input_shape``.

    Examples:
        >>> import torchvision
        >>> import plugsurgeon as ps
        >>> result = ps.apply(torchvision.models.resnet18(), "cbam")
        >>> print(result.report)  # every edit: site, module added, parameters and FLOPs
        >>> ps.apply(model, "se", dry_run=True).report.edits  # what it would do, nothing changed
    """
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="load one with ps.load_model('resnet50')")
    if dry_run:  # the same plan, edits and checks as a real call, only not committed
        planned = plan(model, recipe, input_shape=input_shape, traced=traced)
        check_edits(planned, *build_edits(planned))
        return SurgeryResult(model, planned.report(), planned)
    # Planning reads the caller's model and changes nothing: the copy is made only once the plan
    # holds (a recipe that matches nothing costs no copy), and it is the one copy surgery makes.
    planned = plan(model, recipe, input_shape=input_shape, traced=traced)
    # Everything that can fail runs before the commit: the step is recorded as plain JSON data.
    try:
        step = recipe_step(planned)  # the recipe, its input shape and the resolved edits (record.py)
        json.dumps(step, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"recipe '{planned.recipe.name}' holds a value that cannot be saved: {error}",
                          hint="recipe arguments are plain numbers, strings, booleans and lists of them") from None
    if not inplace:
        # Edits are paths and shapes: they apply to the copy as they would to the model; apply_plan
        # builds every new module from the copy's own layers (a replaced conv's weights included).
        planned = replace(planned, model=_copy_of(model))
    target = planned.model
    result = apply_plan(planned)
    record_step(target, result.model, step)
    return result


def _copy_of(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as error:  # noqa: BLE001 - a model may hold anything (locks, open files, handles)
        raise PlugsurgeonError(f"cannot copy {type(model).__name__} to edit the copy: {type(error).__name__}: {str(error)[:200]}",
                               hint="pass inplace=True to edit the model itself (a failure still leaves it unchanged)") from None
