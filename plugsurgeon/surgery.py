"""Plan, then apply: every check runs before the first change, and the commit cannot fail half-way."""

from __future__ import annotations

import copy
import keyword
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from plugsurgeon.errors import PlugsurgeonError, RecipeError, SiteError
from plugsurgeon.graph.edit import Insertion, build_owner, commit
from plugsurgeon.graph.fake import count_params, run_fake
from plugsurgeon.graph.modes import differs_between_modes
from plugsurgeon.graph.shapes import shape_of
from plugsurgeon.graph.trace import Scope, Traced, trace
from plugsurgeon.plugins.registry import PluginSpec, get_plugin
from plugsurgeon.provenance import record_step
from plugsurgeon.recipe import Recipe, Step, load_recipe
from plugsurgeon.report import EditReport, SurgeryReport
from plugsurgeon.sites.find import locate
from plugsurgeon.sites.select import select
from plugsurgeon.sites.site import ROLES, Site, role_matches

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


@dataclass
class PlannedEdit:
    step_index: int  # 1-based, as users count recipe steps
    spec: PluginSpec
    site: Site
    module: nn.Module
    attribute: str  # new attribute of the owner ("after"), or the replaced module's path ("replace")
    params_added: int
    flops_added: int | None
    owner: str  # absolute path of the module whose forward gets the insertion
    scope: Scope
    extra_locals: tuple[int, ...] = ()

    @property
    def module_path(self) -> str:
        if self.spec.mode == "replace":
            return self.attribute
        return f"{self.owner}.{self.attribute}" if self.owner else self.attribute


@dataclass
class Plan:
    model: nn.Module
    traced: Traced
    recipe: Recipe
    edits: list[PlannedEdit]
    notes: list[str] = field(default_factory=list)

    def report(self) -> SurgeryReport:
        return SurgeryReport(
            model=type(self.model).__name__,
            recipe=self.recipe.name,
            input_shape=self.traced.input_shape,
            traced=[p.path or "(whole model)" for p in self.traced.parts],
            untraced=list(self.traced.untraced) if not self.traced.whole else [],
            edits=[
                EditReport(e.step_index, e.spec.name, e.spec.mode, e.site.role, e.site.path, e.module_path, e.site.channels,
                           e.site.spatial, e.site.stage, e.params_added, e.flops_added)
                for e in self.edits
            ],
            notes=list(self.notes),
            params_before=count_params(self.model),
            params_after=count_params(self.model) + sum(e.params_added for e in self.edits),
            flops_before=self.traced.flops,
        )


@dataclass
class SurgeryResult:
    model: nn.Module
    report: SurgeryReport
    plan: Plan


def plan(model: nn.Module, recipe: str | Path | Recipe, *, input_shape=DEFAULT_INPUT_SHAPE, traced: Traced | None = None) -> Plan:
    """Trace, find sites, build and check every plugin module; the model is not modified."""
    recipe = load_recipe(recipe)
    traced = traced or trace(model, input_shape)
    all_sites = locate(traced)
    dtype = _host_dtype(model)
    edits: list[PlannedEdit] = []
    notes: list[str] = []
    for index, step in enumerate(recipe.steps, start=1):
        spec = get_plugin(step.plugin)
        sites = _sites_for(step, spec, all_sites, index, recipe, model)
        for site in sites:
            edits.append(_plan_edit(model, traced, step, spec, site, index, dtype))
    _check_conflicts(edits, notes)
    _name_new_modules(model, edits)
    if not edits:
        raise SiteError(f"recipe '{recipe.name}' matched no site in {type(model).__name__}", hint="`plugsurgeon sites MODEL` lists the sites it has")
    if any(e.owner == "" and e.spec.mode == "after" for e in edits):
        notes.append(f"sites in the model's own forward: the edited model is an fx GraphModule, not a {type(model).__name__}")
    return Plan(model, traced, recipe, edits, notes)


def _sites_for(step: Step, spec: PluginSpec, all_sites: list[Site], index: int, recipe: Recipe, model: nn.Module) -> list[Site]:
    role = step.role()
    of_role = [s for s in all_sites if role_matches(s.role, role) and spec.fits(s.role)]
    if spec.mode == "replace":  # one replacement per module, however many times it runs
        first_call = {}
        for site in of_role:
            first_call.setdefault((site.role, site.target), site)
        of_role = list(first_call.values())
    if spec.inputs == "site":
        of_role = [s for s in of_role if len(s.shape) == 4]
    chosen = select(of_role, step.selector())
    if not chosen and not step.allow_empty:
        where = f"step {index} of recipe '{recipe.name}' ({step.plugin} at {step.at})"
        if not of_role:
            raise SiteError(
                f"{where}: {type(model).__name__} has no {role} sites ({ROLES.get(role, role)}) on N,C,H,W feature maps",
                hint=f"`plugsurgeon sites MODEL --kind {role}` lists them; set `allow_empty: true` on the step to skip models without them",
            )
        raise SiteError(
            f"{where}: none of the {len(of_role)} {role} sites passes `where: {step.where.model_dump(exclude_defaults=True)}`",
            hint=f"`plugsurgeon sites MODEL --kind {role}` shows paths, channels and stages to select on",
        )
    return chosen


def _choose_scope(site: Site, spec: PluginSpec, where: str) -> tuple[Scope, tuple[int, ...]]:
    """The smallest module forward that sees the site's node (and, for multi-input plugins, all its extra nodes)."""
    if spec.inputs == "site":
        return site.scopes[0], ()
    for scope in site.scopes:
        extras = []
        for extra_scopes in site.extra_scopes:
            match = next((s for s in extra_scopes if (s.owner, s.call) == (scope.owner, scope.call)), None)
            if match is None:
                break
            extras.append(match.local)
        else:
            return scope, tuple(extras)
    raise SiteError(f"{where}: the plugin reads {list(site.extra)}, which no single module forward computes together with the site",
                    hint="multi-input plugins need all their inputs inside one module's forward")


def _plan_edit(model, traced, step, spec, site, index, dtype) -> PlannedEdit:
    part = traced.part(site.part)
    where = f"step {index} ({spec.name}) at '{site.path}'"
    node = _node(part, site.node)
    replaced = None
    scope, extra_locals = _choose_scope(site, spec, where)
    if spec.mode == "replace":
        if site.target is None:
            raise SiteError(f"{where}: the site is a functional op, and '{spec.name}' replaces modules", hint="choose a site that calls a module")
        replaced = model.get_submodule(site.target)
    elif part.call_count(scope.owner) > 1 or scope.call > 0:
        raise SiteError(f"{where}: module '{part.absolute(scope.owner)}' runs more than once in forward, so one insertion would change every call",
                        hint="exclude the site with `where: {exclude: [...]}`")
    else:
        _check_mode_independent(model, part, scope, where)
    try:
        module = spec.build(site, replaced, dict(step.args))
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - constructors raise anything on bad arguments
        raise RecipeError(f"{where}: cannot build the plugin: {error}", hint=f"`plugsurgeon plugins` shows what '{spec.name}' takes") from None
    module = module.to(dtype=dtype, device=_host_device(model))
    flops = _check_runs(module, _calls_to_check(part, node, site, spec), dtype, where)
    params_added = count_params(module)
    if replaced is not None:
        kept = {id(p) for p in module.parameters()} & {id(p) for p in replaced.parameters()}
        params_added = sum(p.numel() for p in module.parameters() if id(p) not in kept) - sum(
            p.numel() for p in replaced.parameters() if id(p) not in kept)
        old_flops = sum(run_fake(replaced, inputs, dtype)[1] for inputs, _out in _calls_to_check(part, node, site, spec))
        flops = flops - old_flops
    attribute = site.target if spec.mode == "replace" else (step.name or spec.name)
    return PlannedEdit(index, spec, site, module, attribute, params_added, flops, part.absolute(scope.owner), scope, extra_locals)


def _calls_to_check(part, node, site: Site, spec: PluginSpec) -> list[tuple[list[tuple[int, ...]], tuple[int, ...]]]:
    """(input shapes, output shape) of every call the new module will serve.

    A replaced module shared by several calls (a detection head run on every pyramid level) is
    replaced for all of them, so each call's shapes are checked.
    """
    if spec.mode == "after":
        return [([site.shape, *site.extra_shapes] if spec.inputs == "site+extra" else [site.shape], site.shape)]
    calls = [n for n in part.gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    return [([shape_of(n.all_input_nodes[0])], shape_of(n)) for n in calls]


def _check_runs(module: nn.Module, calls, dtype: torch.dtype, where: str) -> int:
    """Run the new module on fake inputs of every call; returns the FLOPs of all calls together."""
    total = 0
    for inputs, expected in calls:
        try:
            output, flops = run_fake(module, inputs, dtype)
        except Exception as error:  # noqa: BLE001
            raise SiteError(f"{where}: the plugin does not run on {inputs}: {str(error).splitlines()[0][:200]}",
                            hint="the feature map may be too small for it; narrow the step with `where`") from None
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise SiteError(f"{where}: the plugin turns {inputs[0]} into {got}, but the site needs {expected}",
                            hint="this plugin cannot go at this site; narrow the step with `where`")
        total += flops
    return total


def _check_mode_independent(model: nn.Module, part, scope: Scope, where: str) -> None:
    owner_path = part.absolute(scope.owner)
    owner = model.get_submodule(owner_path) if owner_path else model
    record = part.call_record(scope.owner) if scope.owner else None
    concrete = record.concrete_args if record is not None else part.concrete_args
    if differs_between_modes(owner, concrete):
        raise SiteError(
            f"{where}: the forward of '{owner_path or type(model).__name__}' differs between train and eval mode "
            "(it reads self.training), so an edited copy would keep only one of them",
            hint="exclude this site with `where: {exclude: [...]}`, or target sites inside its blocks",
        )


def _node(part, name):
    for node in part.gm.graph.nodes:
        if node.name == name:
            return node
    raise KeyError(name)


def _check_conflicts(edits: list[PlannedEdit], notes: list[str]) -> None:
    replaced: dict[str, PlannedEdit] = {}
    for edit in edits:
        if edit.spec.mode == "replace":
            if edit.attribute in replaced:
                other = replaced[edit.attribute]
                raise RecipeError(f"steps {other.step_index} ({other.spec.name}) and {edit.step_index} ({edit.spec.name}) both replace '{edit.attribute}'",
                                  hint="narrow one of the steps with `where: {exclude: [...]}`")
            replaced[edit.attribute] = edit
    stacked: dict[tuple, list[PlannedEdit]] = defaultdict(list)
    for edit in edits:
        if edit.spec.mode == "after":
            stacked[edit.site.key].append(edit)
    for group in stacked.values():
        if len({e.step_index for e in group}) > 1:
            order = " then ".join(f"{e.spec.name} (step {e.step_index})" for e in group)
            notes.append(f"'{group[0].site.path}' takes {order}, in step order, the first closest to the site")


def _name_new_modules(model: nn.Module, edits: list[PlannedEdit]) -> None:
    taken: dict[str, set[str]] = defaultdict(set)
    for edit in edits:
        if edit.spec.mode != "after":
            continue
        owner = model.get_submodule(edit.owner) if edit.owner else model
        # A keyword (the `nonlocal` plugin) cannot be an attribute in fx's generated code.
        base = edit.attribute + "_" if keyword.iskeyword(edit.attribute) else edit.attribute
        name, suffix = base, 1
        while hasattr(owner, name) or name in taken[edit.owner]:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken[edit.owner].add(name)
        edit.attribute = name


def apply_plan(planned: Plan) -> SurgeryResult:
    """Commit a plan into ``planned.model``. All new modules are built before the first attribute is set."""
    model, traced = planned.model, planned.traced
    groups: dict[str, list[PlannedEdit]] = defaultdict(list)
    for edit in planned.edits:
        if edit.spec.mode == "after":
            groups[edit.owner].append(edit)
    owners: dict[str, nn.Module] = {}
    for owner_path, edits in groups.items():
        part = traced.part(edits[0].site.part)
        record = part.call_record(edits[0].scope.owner) if edits[0].scope.owner else None
        concrete = record.concrete_args if record is not None else part.concrete_args
        insertions = [
            Insertion(e.scope.local, e.attribute, e.module, e.scope.op, e.scope.target, e.extra_locals)
            for e in sorted(edits, key=lambda e: e.step_index)
        ]
        owner_module = model.get_submodule(owner_path) if owner_path else model
        owners[owner_path] = build_owner(owner_module, owner_path, insertions, concrete)
    replacements = {e.attribute: e.module for e in planned.edits if e.spec.mode == "replace"}
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


def apply(model: nn.Module, recipe: str | Path | Recipe, *, input_shape=DEFAULT_INPUT_SHAPE, inplace: bool = False, dry_run: bool = False) -> SurgeryResult:
    """Apply a recipe. The caller's model is copied unless ``inplace``; a failure leaves it exactly as it was.

    With ``dry_run`` the plan is made and reported and nothing is changed.
    """
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="load one with ps.load_model('resnet50')")
    if dry_run:
        planned = plan(model, recipe, input_shape=input_shape)
        return SurgeryResult(model, planned.report(), planned)
    target = model if inplace else copy.deepcopy(model)
    planned = plan(target, recipe, input_shape=input_shape)
    result = apply_plan(planned)
    step = {"kind": "recipe", "recipe": planned.recipe.model_dump(mode="json", exclude_defaults=True), "input_shape": list(planned.traced.input_shape)}
    record_step(target, result.model, step)
    return result


def _host_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def _host_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
