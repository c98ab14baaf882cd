"""Planning: every site matched, every plugin module built on fake tensors and checked, before anything changes."""

from __future__ import annotations

import keyword
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn

from plugsurgeon import progress
from plugsurgeon.errors import PlugsurgeonError, RecipeError, SiteError, first_line
from plugsurgeon.graph.check import carries_metadata
from plugsurgeon.graph.fake import count_params, run_fake
from plugsurgeon.graph.inputs import resize_notes
from plugsurgeon.graph.modes import differs_between_modes
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE, shape_of
from plugsurgeon.graph.trace import ModuleTraceError, Scope, Traced, TracedPart, trace
from plugsurgeon.plugins._conv import stride_one
from plugsurgeon.plugins.registry import PluginSpec, check_budget, get_plugin
from plugsurgeon.sites.blocks import report_blocks  # the picture's boxes, plain data
from plugsurgeon.sites.find import locate
from plugsurgeon.sites.missing import why_no_sites
from plugsurgeon.sites.roles import placement_of
from plugsurgeon.sites.select import select
from plugsurgeon.sites.site import ROLES, Site, role_matches
from plugsurgeon.surgery.edits import (
    PlannedEdit,
    PlannedInsertion,
    PlannedReplacement,
    PlannedStrideOne,
    build_plugin,
)
from plugsurgeon.surgery.recipe import Recipe, Step, load_recipe
from plugsurgeon.surgery.report import EditReport, SurgeryReport
from plugsurgeon.surgery.seeds import check_seed_stable

# (input shapes, output shape) of each call a new module serves.
Calls = list[tuple[list[tuple[int, ...]], tuple[int, ...]]]


@dataclass(frozen=True)
class Plan:
    """A recipe planned on a model, every edit built on fake tensors and checked; nothing is changed yet.

    Made by ``ps.plan``; ``ps.apply_plan`` commits it.

    Attributes:
        model: The model the plan edits.
        traced: The trace it was planned on (``ps.trace``).
        recipe: The recipe, validated.
        edits: The edits, immutable records of three kinds (``PlannedInsertion``,
            ``PlannedReplacement``, ``PlannedStrideOne``): the step, the plugin, the site, the new
            module and where it goes, its parameters and FLOPs.
        notes: What the report will say besides the edits (sites skipped and why, shared modules).
        sites: Every site of the model, of every role.

    Examples:
        >>> planned = ps.plan(torchvision.models.resnet18(), "cbam")
        >>> len(planned.edits), planned.report().params_added
        (8, 89880)
    """

    model: nn.Module
    traced: Traced
    recipe: Recipe
    edits: tuple[PlannedEdit, ...]
    notes: tuple[str, ...] = ()
    sites: tuple[Site, ...] = ()  # every site of the model: the report's picture groups blocks by them

    def report(self) -> SurgeryReport:
        """The report of the planned edits, as ``ps.apply`` would return it (``applied`` false).

        Returns:
            A new report.
        """
        return SurgeryReport(
            model=type(self.model).__name__,
            recipe=self.recipe.name,
            input_shape=self.traced.input_shape,
            traced=[p.path or "(whole model)" for p in self.traced.parts],
            untraced=list(self.traced.untraced) if not self.traced.whole else [],
            edits=[
                EditReport(e.step_index, e.spec.name, e.mode, e.site.role, e.site.path, e.module_path, e.site.channels,
                           e.site.spatial, e.site.stage, e.params_added, e.flops_added)
                for e in self.edits
            ],
            notes=list(self.notes),
            params_before=count_params(self.model),
            params_after=count_params(self.model) + sum(e.params_added for e in self.edits),
            flops_before=self.traced.flops,
            blocks=report_blocks(self.traced, list(self.sites)),
        )


def plan(model: nn.Module, recipe: str | Path | Recipe | dict, *, input_shape: Sequence[int] | None = None,
         traced: Traced | None = None) -> Plan:
    """Trace, find sites, build and check every plugin module; the model is not modified.

    Each step's sites are found by role and narrowed by its ``where:``; each new module is built on
    fake tensors (no memory) and run at its site's shapes. ``ps.apply_plan`` commits the result.

    Args:
        model: The model to plan on.
        recipe: A built-in recipe's name, a path to a recipe YAML file, its content as a mapping, or
            a ``Recipe``.
        input_shape: The input the model is traced at, N,C,H,W; default ``(1, 3, 224, 224)``.
        traced: A trace of this model made earlier (``ps.trace(model, input_shape)``), to try several
            recipes on one model without tracing it again; its input shape is the one used, and
            another one given is refused.

    Returns:
        The plan: every edit with its site, new module (fake), parameters and FLOPs.

    Raises:
        PlugsurgeonError: ``traced`` is not a trace of ``model`` as it is, or was made at another
            ``input_shape``.
        UnknownNameError: ``recipe`` names no built-in recipe.
        RecipeError: The recipe is malformed, a plugin cannot be built with its arguments, or two
            steps replace the same module.
        SiteError: A step matches no site, or a site its plugin cannot take.
        TraceError: The model does not run on ``input_shape``.

    Examples:
        >>> traced = ps.trace(model, (1, 3, 224, 224))
        >>> for name in ("se", "cbam", "eca"):  # several recipes, one trace
        ...     print(name, ps.plan(model, name, traced=traced).report().params_added)
    """
    recipe = load_recipe(recipe)
    if traced is not None and input_shape is not None and tuple(input_shape) != traced.input_shape:
        raise PlugsurgeonError(f"input shape {tuple(input_shape)} differs from the shape the trace was made at, {traced.input_shape}",
                               hint="leave input_shape out when passing a trace, or trace at that shape")
    if traced is not None and not traced.describes(model):
        raise PlugsurgeonError(f"the trace passed as `traced` is not of this {type(model).__name__} as it is now "
                               "(another model, or this one since edited in place)",
                               hint="trace the model again: ps.trace(model, input_shape)")
    traced = traced or trace(model, tuple(input_shape or DEFAULT_INPUT_SHAPE))
    all_sites = locate(traced)
    dtype = _host_dtype(model)
    edits: list[PlannedEdit] = []
    notes: list[str] = resize_notes(traced)  # a model that resizes its input: at which size the numbers are
    notes += check_seed_stable(model, traced, recipe, all_sites, _sites_for)  # traces again only if the trace drew random numbers
    checked: dict[tuple, _Checked] = {}  # what each (plugin, arguments, shapes) signature gave
    for index, step in enumerate(recipe.steps, start=1):
        spec = get_plugin(step.plugin)
        sites = _sites_for(step, spec, all_sites, index, recipe, model, traced)
        progress.step(f"planning step {index} of '{recipe.name}': {spec.name} at {len(sites)} {step.at} sites")
        for site in sites:
            try:
                _check_destride(model, traced, spec, site, index)  # before the plugin: an unfit conv is the reason
                edits.append(_plan_edit(model, traced, step, spec, site, index, dtype, checked))
            except SiteError as unfit:
                if step.on_unfit != "skip":
                    raise
                # The refusal may already open with where it happened (_plan_edit's `where`); say it once.
                reason = unfit.message.removeprefix(f"step {index} ({spec.name}) at '{site.path}': ")
                notes.append(f"step {index} ({spec.name}) skipped '{site.path}': {reason}")
        if not any(e.step_index == index for e in edits) and sites and not step.allow_empty:
            raise SiteError(f"step {index} of recipe '{recipe.name}' ({step.plugin} at {step.at}): every matched site was skipped as unfit",
                            hint="the report's notes say why; set `allow_empty: true` to accept a step that changes nothing")
    edits = _with_destrides(model, traced, recipe, edits, notes)
    notes += [_on_edges_note(traced, e) for e in edits if isinstance(e, PlannedInsertion) and e.on_edges]
    check_budget(model, [(e.module, e.replaced(model)) for e in edits], f"recipe '{recipe.name}' ({len(edits)} edits)")
    _check_conflicts(edits, notes)
    _note_shared_instances(model, edits, notes)
    if not edits:
        raise SiteError(f"recipe '{recipe.name}' matched no site in {type(model).__name__}", hint="ps.find_sites(model) lists the sites it has",
                        cli_hint="`plugsurgeon sites MODEL` lists the sites it has")
    return Plan(model, traced, recipe, tuple(_named(model, edits)), tuple(notes), tuple(all_sites))


def _sites_for(step: Step, spec: PluginSpec, all_sites: list[Site], index: int, recipe: Recipe, model: nn.Module,
               traced: Traced) -> list[Site]:
    role = step.role()
    of_role = [s for s in all_sites if role_matches(s.role, role) and spec.fits(s.role)]
    if spec.mode == "replace":  # one replacement per module, however many times it runs
        first_call: dict[tuple[str, str | None], Site] = {}
        for site in of_role:
            first_call.setdefault((site.role, site.target), site)
        of_role = list(first_call.values())
    if spec.inputs == "site":
        of_role = [s for s in of_role if len(s.shape) == 4]
    chosen = select(of_role, step.selector())
    if not chosen and not step.allow_empty:
        where = f"step {index} of recipe '{recipe.name}' ({step.plugin} at {step.at})"
        if not of_role:
            why = why_no_sites(traced, role)  # what the trace holds instead (channels-last blocks, untraceable modules)
            raise SiteError(
                f"{where}: {type(model).__name__} has no {role} sites ({ROLES.get(role, role)}) on N,C,H,W feature maps"
                + (f": {why}" if why else ""),
                hint=f"ps.find_sites(model, '{role}') lists them; set `allow_empty: true` on the step to skip models without them"
                if why is None else "set `allow_empty: true` on the step to skip models like this one",
                cli_hint=f"`plugsurgeon sites MODEL --kind {role}` lists them; set `allow_empty: true` on the step to skip models without them"
                if why is None else None,
            )
        raise SiteError(
            f"{where}: none of the {len(of_role)} {role} sites passes `where: {step.where.model_dump(exclude_defaults=True)}`",
            hint=f"ps.find_sites(model, '{role}') shows paths, channels and stages to select on",
            cli_hint=f"`plugsurgeon sites MODEL --kind {role}` shows paths, channels and stages to select on",
        )
    return chosen


def _computed_from(part: TracedPart, node: fx.Node, names: tuple[str, ...]) -> set[str]:
    """Which of the nodes ``names`` the model computes from ``node``."""
    later: set[fx.Node] = set()
    frontier = [node]
    while frontier:
        for user in frontier.pop().users:
            if user not in later:
                later.add(user)
                frontier.append(user)
    return {name for name in names if _node(part, name) in later}


def _read_after(part: TracedPart, node: fx.Node, names: tuple[str, ...]) -> list[fx.Node]:
    """The readers of ``node`` that run after every node of ``names`` exists: the edges into the
    modules where they all meet (a detection head reading every pyramid level, a merge)."""
    position = {n: i for i, n in enumerate(part.gm.graph.nodes)}
    last = max(position[_node(part, name)] for name in names)
    return [user for user in node.users if position[user] > last and user.op != "output"]


def _on_edges_note(traced: Traced, edit: PlannedInsertion) -> str:
    part = traced.part(edit.site.part)
    readers = _read_after(part, _node(part, edit.site.node), edit.site.extra)
    first = next((part.absolute(str(r.target)) for r in readers if r.op == "call_module"), readers[0].name)
    more = f" and {len(readers) - 1} more" if len(readers) > 1 else ""
    return (f"step {edit.step_index} ({edit.spec.name}) at '{edit.site.path}' goes where its inputs meet: '{first}'{more} {'read' if more else 'reads'} "
            "its output; the layers that build its other inputs keep reading the original map")


def _scope_candidates(part: TracedPart, site: Site, spec: PluginSpec) -> list[tuple[Scope, tuple[int, ...], bool]]:
    """Module forwards that see the site's node (and, for multi-input plugins, all its extra nodes), in
    order of preference (the role's ``Placement``, sites/roles.py): the smallest first, except that a
    residual branch end goes into the block that holds the add ("before the add" is a place in that
    block, and its class is what changes). The flag: the module goes on the edges into the readers
    that run after its inputs exist (``PlannedInsertion.on_edges``)."""
    if spec.inputs == "site":
        scopes = list(site.scopes)
        return [(s, (), False) for s in (reversed(scopes) if placement_of(site.role).outermost_first else scopes)]
    # The lateral input of a merge is changed for the merge only: where the merging block gets it as
    # an argument (a U-Net decoder block's skip connection), that is the place.
    own = [*part.input_scopes(_node(part, site.node)), *site.scopes] if placement_of(site.role).where_passed_in else list(site.scopes)
    # An extra input is readable wherever it is computed or passed in whole (smp's FPN block gets the
    # top-down map as an argument and computes the lateral itself) ...
    readable = [(*scopes, *part.input_scopes(_node(part, name))) for name, scopes in zip(site.extra, site.extra_scopes, strict=True)]
    # ... An extra computed after the site, from the site itself, cannot flow back into it: the module
    # then goes where they all meet, on the edges into the readers of the site that come after them
    # (ASFF's levels where YOLO's head reads them; a PAN builds P4 and P5 from P3).
    later = _computed_from(part, _node(part, site.node), site.extra)
    readers = _read_after(part, _node(part, site.node), site.extra) if later else []
    # The forwards that run such a reader: there the module can go on the reader's edge.
    meeting = {(s.owner, s.call) for reader in readers for s in part.scopes(reader)}
    found = []
    for scope in own:
        extras, on_edges = [], False
        for name, extra_scopes in zip(site.extra, readable, strict=True):
            match = next((s for s in extra_scopes if (s.owner, s.call) == (scope.owner, scope.call)), None)
            if match is not None and match.op != "placeholder" and name in later:
                if (scope.owner, scope.call) not in meeting:
                    break
                on_edges = True
            if match is None:
                break
            extras.append(match.local)
        else:
            found.append((scope, tuple(extras), on_edges))
    return found


def _choose_scope(model: nn.Module, part: TracedPart, site: Site, spec: PluginSpec, where: str) -> tuple[Scope, tuple[int, ...], bool]:
    """The preferred module forward that can be edited: called once, and tracing to the same graph in
    train and eval mode (else the edit would keep only one of them)."""
    candidates = _scope_candidates(part, site, spec)
    if not candidates:
        later = sorted(_computed_from(part, _node(part, site.node), site.extra))
        if later:
            raise SiteError(f"{where}: the plugin reads {later}, which the model computes from this site itself, and nothing "
                            "reads the site after they exist, so there is no place where they all meet",
                            hint="this plugin needs levels read together by one module (a head, a merge); choose another plugin or role")
        raise SiteError(f"{where}: the plugin reads {list(site.extra)}, which no single module forward computes together with the site",
                        hint="multi-input plugins need all their inputs inside one module's forward")
    refusals = []
    for scope, extras, on_edges in candidates:
        owner_path = part.absolute(scope.owner)
        if part.call_count(scope.owner) > 1 or scope.call > 0:
            refusals.append(SiteError(
                f"{where}: module '{owner_path}' runs {part.call_count(scope.owner)} times in forward, so one insertion would change every call",
                hint="exclude the site with `where: {exclude: [...]}`, or choose a site of a module that runs once"))
        elif _differs_between_modes(model, part, scope):
            refusals.append(SiteError(
                f"{where}: the forward of '{owner_path or type(model).__name__}' ({type(owner_module(model, owner_path)).__name__}) "
                "differs between train and eval mode (it branches on self.training), so an edited copy would keep only one of its two graphs",
                hint="exclude this site with `where: {exclude: [...]}`, or target sites inside its blocks"))
        else:
            return scope, extras, on_edges
    raise refusals[0]


def _plan_edit(model: nn.Module, traced: Traced, step: Step, spec: PluginSpec, site: Site, index: int, dtype: torch.dtype,
               checked: dict[tuple, _Checked]) -> PlannedEdit:
    part = traced.part(site.part)
    where = f"step {index} ({spec.name}) at '{site.path}'"
    node = _node(part, site.node)
    replaced: nn.Module | None = None
    extra_locals: tuple[int, ...]
    if spec.mode == "replace":
        scope, extra_locals, on_edges = site.scopes[0], (), False
        if site.target is None:
            raise SiteError(f"{where}: the site is a functional op, and '{spec.name}' replaces modules", hint="choose a site that calls a module")
        replaced = model.get_submodule(site.target)
    else:
        scope, extra_locals, on_edges = _choose_scope(model, part, site, spec, where)
    # The new module's dtype and device come from what it joins: the replaced module, or the map it
    # reads (a bfloat16 block in a float model), else the model's; only tensors the module makes are
    # converted, never one it shares.
    holds = replaced is not None and next(replaced.parameters(), None) is not None
    read = getattr(node.meta.get("tensor_meta"), "dtype", None)
    if holds and replaced is not None:  # holds implies a replaced module
        dtype = _host_dtype(replaced)
    elif replaced is None and read is not None and read.is_floating_point:
        dtype = read
    device = _host_device(replaced if holds and replaced is not None else model)
    calls = _calls_to_check(part, node, site, spec)
    signature = _signature(spec, site, replaced, step, calls, dtype, device)
    known = checked.get(signature) if signature is not None else None
    if known is not None and spec.mode == "after":
        # Planning's modules are fake (apply builds each edit's own): one planned at an earlier site
        # of the same signature stands for this one, once the site is checked to fit.
        spec.fitting_args(site, replaced, step.args)
        module = known.module
    else:
        # Planning builds on fake tensors (shapes, FLOPs and checks without memory), refused beyond
        # the model's budget; apply_plan builds the real modules of the edits it commits.
        module = build_plugin(spec, site, replaced, step.args, where, host=model, fake=True, dtype=dtype, device=device)
    if known is None:
        flops, dtype_kept = _check_runs(module, calls, dtype, where)
        if replaced is not None:
            flops -= sum(run_fake(replaced, inputs, dtype)[1] for inputs, _out in calls)
        # A site whose conv gives up its stride changes the shapes between the conv and the plugin.
        known = _Checked(module, flops, dtype_kept and site.destride is None and carries_metadata(module, calls, dtype, device))
        if signature is not None:
            checked[signature] = known
    flops, proven = known.flops, known.proven and _of_dtype(part, node, site, spec, dtype)
    params_added = count_params(module)
    if replaced is not None:
        kept = {id(p) for p in module.parameters()} & {id(p) for p in replaced.parameters()}
        params_added = sum(p.numel() for p in module.parameters() if id(p) not in kept) - sum(
            p.numel() for p in replaced.parameters() if id(p) not in kept)
    common = dict(step_index=index, spec=spec, site=site, module=module, params_added=params_added, flops_added=flops,
                  owner=part.absolute(scope.owner), scope=scope, args=dict(step.args), dtype=dtype, device=device, proven=proven)
    if replaced is not None:
        return PlannedReplacement(path=cast(str, site.target), **common)  # checked above: a replace site calls a module
    return PlannedInsertion(attribute=step.name or spec.name, extra_locals=extra_locals, on_edges=on_edges, **common)


def _of_dtype(part: TracedPart, node: fx.Node, site: Site, spec: PluginSpec, dtype: torch.dtype) -> bool:
    """Whether the model's tensors where the new module goes are of the dtype planning ran it in: a
    half-precision block in a float model is not, and there planning's runs prove nothing."""
    if spec.mode == "after":
        nodes = [node, *(_node(part, name) for name in site.extra)] if spec.inputs == "site+extra" else [node]
    else:
        calls = [n for n in part.gm.graph.nodes if n.op == "call_module" and n.target == node.target]
        nodes = [v for call in calls for v in (call, *call.all_input_nodes[:1])]
    return all(getattr(n.meta.get("tensor_meta"), "dtype", None) == dtype for n in nodes)


@dataclass(frozen=True)
class _Checked:
    """What planning learnt of one (plugin, arguments, shapes) signature: a fake module of it, its
    FLOPs over the site's calls (less the replaced module's), and ``PlannedEdit.proven``."""

    module: nn.Module
    flops: int
    proven: bool


def _signature(spec: PluginSpec, site: Site, replaced: nn.Module | None, step: Step, calls: Calls, dtype: torch.dtype,
               device: torch.device) -> tuple | None:
    """What the fake run of a new module depends on: its constructor's arguments, the shapes of its
    calls, dtype and device -- and, for a replacement, the replaced layer's configuration, known only
    for torch's own layers (their repr is it). Sites sharing a signature are checked once (a ResNet's
    16 CBAMs come in 4 shapes). None: check this site on its own."""
    if replaced is not None and not type(replaced).__module__.startswith("torch.nn.modules."):
        return None
    try:
        kwargs = spec.constructor_kwargs(site, replaced, step.args)
    except PlugsurgeonError:
        return None
    return (spec.name, repr(sorted(kwargs.items())), repr(calls), str(dtype), str(device), repr(replaced))


def _calls_to_check(part: TracedPart, node: fx.Node, site: Site, spec: PluginSpec) -> Calls:
    """(input shapes, output shape) of every call the new module will serve.

    A replaced module shared by several calls (a detection head run on every pyramid level) is
    replaced for all of them, so each call's shapes are checked.
    """
    if spec.mode == "after" and site.destride is not None:  # it takes over a conv's stride: it reads that conv's dense map
        return [([site.destride_shape], site.shape)]
    if spec.mode == "after":
        return [([site.shape, *site.extra_shapes] if spec.inputs == "site+extra" else [site.shape], site.shape)]
    calls = [n for n in part.gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    return [([_known_shape(n.all_input_nodes[0])], _known_shape(n)) for n in calls]


def _check_runs(module: nn.Module, calls: Calls, dtype: torch.dtype, where: str) -> tuple[int, bool]:
    """Run the new module on fake inputs of every call; returns the FLOPs of all calls together, and
    whether every output kept the input dtype."""
    total, dtype_kept = 0, True
    for inputs, expected in calls:
        try:
            output, flops = run_fake(module, inputs, dtype)
        except Exception as error:  # noqa: BLE001
            raise SiteError(f"{where}: the plugin does not run on {inputs}: {first_line(error, 200)}",
                            hint="the feature map may be too small for it; narrow the step with `where`") from None
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise SiteError(f"{where}: the plugin turns {inputs[0]} into {got}, but the site needs {expected}",
                            hint="this plugin cannot go at this site; narrow the step with `where`")
        total += flops
        dtype_kept = dtype_kept and output.dtype == dtype
    return total, dtype_kept


def _with_destrides(model: nn.Module, traced: Traced, recipe: Recipe, edits: list[PlannedEdit], notes: list[str]) -> list[PlannedEdit]:
    """Each edit at a site that takes over a strided conv's stride (``Site.destride``: the blur of
    anti-aliasing, after the conv's activation) followed by its second half: that conv replaced by its
    stride-1 twin (same weight and bias: same names). Neither half keeps the shapes alone, so they are
    planned, skipped and committed together; a conv the twin cannot reproduce (a subclass with its own
    forward) makes the site unfit."""
    paired: list[PlannedEdit] = []
    for edit in edits:
        if edit.site.destride is None or not isinstance(edit, PlannedInsertion):
            paired.append(edit)
            continue
        step = recipe.steps[edit.step_index - 1]
        try:
            paired += [edit, _plan_destride(model, traced, edit)]
        except SiteError as unfit:
            if step.on_unfit != "skip":
                raise
            reason = unfit.message.removeprefix(f"step {edit.step_index} ({edit.spec.name}) at '{edit.site.path}': ")
            notes.append(f"step {edit.step_index} ({edit.spec.name}) skipped '{edit.site.path}': {reason}")
    for index, step in enumerate(recipe.steps, start=1):
        if any(e.step_index == index for e in edits) and not any(e.step_index == index for e in paired) and not step.allow_empty:
            raise SiteError(f"step {index} of recipe '{recipe.name}' ({step.plugin} at {step.at}): every matched site was skipped as unfit",
                            hint="the report's notes say why; set `allow_empty: true` to accept a step that changes nothing")
    return paired


def _check_destride(model: nn.Module, traced: Traced, spec: PluginSpec, site: Site, index: int) -> None:
    """Refuse (SiteError: unfit) a site whose conv cannot run at stride 1 for the plugin: one that runs
    more than once, or that stride_one cannot reproduce."""
    if site.destride is None or spec.mode != "after":
        return
    _stride_one_twin(model, traced, site, f"step {index} ({spec.name}) at '{site.path}'")


def _stride_one_twin(model: nn.Module, traced: Traced, site: Site, where: str) -> tuple[fx.Node, str, nn.Module]:
    part = traced.part(site.part)
    node = _node(part, cast(str, site.destride))  # a destride site names its conv
    path = part.absolute(cast(str, node.target))  # a call_module node's target is a path
    calls = sum(1 for n in part.gm.graph.nodes if n.op == "call_module" and n.target == node.target)
    if calls > 1:
        raise SiteError(f"{where}: '{path}' runs {calls} times in forward: at stride 1 every call would change, and the plugin follows only this one",
                        hint="exclude the site with `where: {exclude: [...]}`, or let the step skip it with `on_unfit: skip`")
    try:
        return node, path, stride_one(model.get_submodule(path), path)
    except SiteError as error:
        raise SiteError(f"{where}: the conv whose stride the plugin takes over: {error.message}", hint=error.hint) from None


def _plan_destride(model: nn.Module, traced: Traced, edit: PlannedInsertion) -> PlannedStrideOne:
    part = traced.part(edit.site.part)
    node, path, twin = _stride_one_twin(model, traced, edit.site, edit.where)
    conv = model.get_submodule(path)
    dtype = _host_dtype(conv)
    calls: Calls = [([_known_shape(node.all_input_nodes[0])], edit.site.destride_shape)]
    record = PlannedStrideOne(step_index=edit.step_index, spec=edit.spec, site=replace(edit.site, target=path), module=twin, path=path,
                              params_added=0, flops_added=None, owner="", scope=part.scopes(node)[0], dtype=dtype, device=edit.device)
    flops = _check_runs(twin, calls, dtype, record.where)[0] - run_fake(conv, calls[0][0], dtype)[1]
    return replace(record, flops_added=flops, owner=part.absolute(record.scope.owner))


def owner_module(model: nn.Module, owner_path: str) -> nn.Module:
    return model.get_submodule(owner_path) if owner_path else model


def owner_call(part: TracedPart, scope: Scope) -> tuple[dict[str, Any] | None, frozenset[str]]:
    """(concrete args, children to trace through) of the owner's call, as the model trace saw it."""
    record = part.call_record(scope.owner, scope.call) if scope.owner else None
    concrete = record.concrete_args if record is not None else part.concrete_args
    return concrete, structured_children(part, scope.owner, scope.call)


def structured_children(part: TracedPart, owner: str, call: int) -> frozenset[str]:
    """Direct children whose call returned a structure (a tuple the owner unpacks, like torchvision's
    FPN ``extra_blocks``): the owner's own trace must follow them, as a leaf would be opaque."""
    prefix = owner + "." if owner else ""
    names = set()
    for record in part.calls:
        child = record.path[len(prefix):] if record.path.startswith(prefix) else None
        if child and "." not in child and record.parent == (owner, call) and record.output is None:
            names.add(child)
    return frozenset(names)


def _differs_between_modes(model: nn.Module, part: TracedPart, scope: Scope) -> bool:
    owner = owner_module(model, part.absolute(scope.owner))
    concrete, through = owner_call(part, scope)
    try:
        return differs_between_modes(owner, concrete, through)
    except ModuleTraceError:
        return False  # not traceable alone: building the owner says so with the reason


def _node(part: TracedPart, name: str) -> fx.Node:
    for node in part.gm.graph.nodes:
        if node.name == name:
            return node
    raise KeyError(name)


def _known_shape(node: fx.Node) -> tuple[int, ...]:
    """The shape propagation recorded for ``node``, a tensor a site's module reads or returns."""
    return cast(tuple[int, ...], shape_of(node))


def _check_conflicts(edits: list[PlannedEdit], notes: list[str]) -> None:
    replaced: dict[str, PlannedEdit] = {}
    for edit in edits:
        if isinstance(edit, PlannedInsertion):
            continue
        if edit.module_path in replaced:
            other = replaced[edit.module_path]
            raise RecipeError(f"steps {other.step_index} ({other.spec.name}) and {edit.step_index} ({edit.spec.name}) both replace '{edit.module_path}'",
                              hint="narrow one of the steps with `where: {exclude: [...]}`")
        replaced[edit.module_path] = edit
    stacked: dict[tuple, list[PlannedEdit]] = defaultdict(list)
    for edit in edits:
        if isinstance(edit, PlannedInsertion):
            stacked[edit.site.key].append(edit)
    for group in stacked.values():
        if len({e.step_index for e in group}) > 1:
            order = " then ".join(f"{e.spec.name} (step {e.step_index})" for e in group)
            notes.append(f"'{group[0].site.path}' takes {order}, in step order, the first closest to the site")


def _note_shared_instances(model: nn.Module, edits: list[PlannedEdit], notes: list[str]) -> None:
    """An edited module that the model also holds at other paths is edited at this path only: the
    other calls keep the original module, with the same weights (they are not copied)."""
    paths: dict[int, list[str]] = defaultdict(list)
    for path, module in model.named_modules(remove_duplicate=False):
        paths[id(module)].append(path)
    seen = set()
    for edit in edits:
        path = edit.owner if isinstance(edit, PlannedInsertion) else edit.module_path
        if not path or path in seen:
            continue
        seen.add(path)
        others = [p for p in paths[id(model.get_submodule(path))] if p != path]
        if others:
            notes.append(f"'{path}' is the same module instance as {others[:3]}{' ...' if len(others) > 3 else ''}: only the "
                         f"call at '{path}' is edited, the others keep the original module (weights stay shared)")


def _named(model: nn.Module, edits: list[PlannedEdit]) -> list[PlannedEdit]:
    """The edits with each insertion named as an attribute its owner does not have yet (``se``, ``se_1``, ...)."""
    taken: dict[str, set[str]] = defaultdict(set)
    named: list[PlannedEdit] = []
    for edit in edits:
        if not isinstance(edit, PlannedInsertion):
            named.append(edit)
            continue
        owner = owner_module(model, edit.owner)
        # A keyword (the `nonlocal` plugin) cannot be an attribute in fx's generated code.
        base = edit.attribute + "_" if keyword.iskeyword(edit.attribute) else edit.attribute
        name, suffix = base, 1
        while hasattr(owner, name) or name in taken[edit.owner]:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken[edit.owner].add(name)
        named.append(edit.named(name))
    return named


def _host_dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def _host_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
