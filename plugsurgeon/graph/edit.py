"""The only code that mutates graphs and models.

Edits are built first (``build_owner``: a new instance of the owner's class running the edited
graph, referencing the owner's children, never touching the model: see ``edited``) and committed
last (``commit``, and deploy's ``put``: plain attribute sets, which cannot fail half-way). That is
what lets surgery promise an untouched model on any failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch.fx as fx
from torch import nn

from plugsurgeon.errors import PlugsurgeonError, first_line
from plugsurgeon.graph.edited import as_edited_instance, original_class
from plugsurgeon.graph.guards import HOOK_TABLES
from plugsurgeon.graph.owner_traces import OwnerTraces
from plugsurgeon.graph.trace import (
    LOCAL,
    OWNER,
    ModuleTraceError,
    body_nodes,
    fixed_optionals,
    placeholder_local,
    trace_module,
)


@dataclass(frozen=True)
class Insertion:
    """Insert ``module`` as attribute ``name`` of the owner, after the node at ``local`` (and reading ``extra_locals``).

    ``on_edges``: the module goes where its inputs meet, after the last of them exists, and only the
    readers of the node that run after that point read its output; earlier readers keep the original
    value (pyramid levels fused where the head reads them, though each level is built from the one before).
    """

    local: int
    name: str
    module: nn.Module
    expected_op: str
    expected_target: object
    extra_locals: tuple[int, ...] = ()
    on_edges: bool = False


class EditError(PlugsurgeonError):
    pass


def build_owner(owner: nn.Module, owner_path: str, insertions: list[Insertion], concrete_args=None,
                trace_through: frozenset[str] = frozenset(), traces: OwnerTraces | None = None) -> nn.Module:
    """Trace ``owner`` shallowly and splice ``insertions`` in; the owner itself is not modified.

    Insertions at the same node chain in list order (the first sits closest to the node). Every
    consumer of the node, the owner's output included, then reads the last module of the chain;
    other inserted modules keep reading the original values (pyramid fusion reads all raw levels).
    ``traces`` shares the owner's trace with the other owners of one apply (``OwnerTraces``).
    """
    fixed = fixed_optionals(concrete_args) if not owner_path else []
    if fixed:
        # The model's own forward is traced as ``model(x)`` calls it; its edited form would be that call only.
        raise EditError(
            f"the site is in {type(owner).__name__}.forward itself, which takes optional arguments "
            f"({', '.join(fixed)}): its edited forward would run only with them left out",
            hint="choose a site inside one of its submodules: exclude this one with `where: {exclude: [...]}`",
        )
    try:
        gm = (traces or OwnerTraces()).trace(owner, concrete_args, trace_through)
    except ModuleTraceError as error:
        raise EditError(
            f"torch.fx cannot trace the forward of '{owner_path or type(owner).__name__}' on its own: "
            f"{first_line(error.cause, 200) or type(error.cause).__name__}",
            hint="exclude the sites inside it with `where: {exclude: [...]}`",
        ) from None
    graph = gm.graph
    # Only the owner's own frame: stateless children traced through number their nodes in frames of their own.
    by_local = {n.meta[LOCAL]: n for n in body_nodes(graph) if n.meta.get(OWNER) == ""}
    by_local.update({placeholder_local(n): n for n in graph.nodes if n.op == "placeholder"})
    order: dict[fx.Node, float] = {n: i for i, n in enumerate(graph.nodes)}
    new_nodes: set[fx.Node] = set()
    chains: dict[fx.Node, fx.Node] = {}
    on_edges: set[fx.Node] = set()
    for insertion in insertions:
        anchor = _resolve(by_local, insertion.local, owner_path, insertion.expected_op, insertion.expected_target, owner)
        extras = [by_local[i] for i in insertion.extra_locals]
        previous = chains.get(anchor, anchor)
        latest = max([previous, *extras], key=lambda n: order.get(n, len(order)))
        if latest.op == "placeholder":  # new code goes after every argument, not between them
            latest = [n for n in graph.nodes if n.op == "placeholder"][-1]
        gm.add_submodule(insertion.name, insertion.module)
        with graph.inserting_after(latest):
            node = graph.call_module(insertion.name, (previous, *extras))
        order[node] = order.get(latest, len(order)) + 0.5
        new_nodes.add(node)
        chains[anchor] = node
        if insertion.on_edges:
            on_edges.add(anchor)
    for anchor, last in chains.items():
        early = [u for u in anchor.users if u not in new_nodes and u.op != "output" and order.get(u, 0) < order[last]]
        if anchor in on_edges:
            if all(u in new_nodes or u in early for u in anchor.users):
                raise EditError(
                    f"cannot insert into '{owner_path or type(owner).__name__}': nothing reads '{anchor.name}' after the plugin's inputs exist",
                    hint="choose a site that the module reading all the levels (a head, a merge) reads")
            for user in [u for u in anchor.users if u not in new_nodes and u not in early]:
                user.replace_input_with(anchor, last)
            continue
        if early:
            raise EditError(
                f"cannot insert into '{owner_path or type(owner).__name__}': node '{early[0].name}' reads '{anchor.name}' "
                "before the plugin's other inputs exist",
                hint="choose sites whose extra inputs are computed first, or insert on fewer levels",
            )
        anchor.replace_all_uses_with(last, delete_user_cb=lambda user: user not in new_nodes)
    graph.lint()
    # No gm.recompile(): the edited class generates its own code from the graph (edited.as_edited_instance),
    # and the GraphModule's code is never run; recompiling cost a third of building an owner.
    # Only the new modules take the owner's mode: its children keep theirs (a frozen BatchNorm
    # stays in eval mode inside a training model).
    for insertion in insertions:
        insertion.module.train(owner.training)
    new_modules = {insertion.name: insertion.module for insertion in insertions}
    return as_edited_instance(owner, gm, new_modules, _edited_alternatives(owner, gm, concrete_args, trace_through))


# Other forwards a framework switches a module to, with the children it drops: Ultralytics' fuse() folds
# each Conv's BN into its conv, deletes the BN and sets ``m.forward = m.forward_fuse`` (Conv,
# ConvTranspose; RepConv and RepVGGDW merge their branches the same way).
ALTERNATIVE_FORWARDS = ("forward_fuse",)


def _edited_alternatives(owner: nn.Module, gm: fx.GraphModule, concrete_args: dict[str, Any] | None, trace_through: frozenset[str]) -> dict[str, fx.Graph]:
    """The edited graph of each alternative forward of ``owner``'s class, where one follows from the edit.

    The alternative's graph is taken to be the edited forward's without the calls to the children the
    alternative no longer calls (each such call passing its input through), and is kept only when,
    the inserted modules aside, it has exactly the statements of the alternative traced alone: then
    the framework's switch keeps the edit. Otherwise the edited class refuses the switch (``edited``).
    """
    base = original_class(owner)
    alternatives = {}
    for method in ALTERNATIVE_FORWARDS:
        if not callable(getattr(base, method, None)):
            continue
        try:
            original = _trace_as(owner, base, base.forward, concrete_args, trace_through)
            alternative = _trace_as(owner, base, getattr(base, method), concrete_args, trace_through)
        except ModuleTraceError:
            continue
        called_before, called_after = _called(original), _called(alternative)
        inserted = _called(gm.graph) - called_before
        derived = _without_calls(gm.graph, called_before - called_after)
        if derived is not None and _statements(derived, skip=inserted) == _statements(alternative, skip=frozenset()):
            alternatives[method] = derived
    return alternatives


def _trace_as(owner: nn.Module, base: type[nn.Module], method: Callable[..., Any], concrete_args: dict[str, Any] | None,
              trace_through: frozenset[str]) -> fx.Graph:
    """``owner`` traced shallowly as if ``method`` were its forward (a view of it; ``owner`` is untouched)."""
    view: nn.Module = object.__new__(type(base.__name__, (base,), {"forward": method}))
    view.__dict__.update(owner.__dict__)
    return trace_module(view, concrete_args, shallow=True, trace_through=trace_through)[0].graph


def _called(graph: fx.Graph) -> frozenset[str]:
    return frozenset(n.target for n in graph.nodes if n.op == "call_module")


def _statements(graph: fx.Graph, *, skip: frozenset[str]) -> list[tuple]:
    return [(n.op, n.target) for n in graph.nodes
            if n.op not in ("placeholder", "output") and not (n.op == "call_module" and n.target in skip)]


def _without_calls(graph: fx.Graph, dropped: frozenset[str]) -> fx.Graph | None:
    """A copy of ``graph`` in which each call to a ``dropped`` child passes its one input through."""
    copied = fx.Graph()
    output = copied.graph_copy(graph, {})
    copied.output(output)
    for node in list(copied.nodes):
        if node.op == "call_module" and node.target in dropped:
            if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
                return None
            node.replace_all_uses_with(node.args[0])
            copied.erase_node(node)
    copied.lint()
    return copied


def _resolve(by_local, local, owner_path, expected_op, expected_target, owner) -> fx.Node:
    node = by_local.get(local)
    if node is None or node.op != expected_op or (expected_op != "placeholder" and node.target != expected_target):
        raise EditError(
            f"the forward of '{owner_path or type(owner).__name__}' traces differently on its own than inside the model",
            hint="its forward probably depends on how it is called; exclude this site with `where: {exclude: [...]}`",
        )
    return node


def carry_hooks(replaced: nn.Module, replacement: nn.Module) -> None:
    """The replacement computes what the replaced module did, so the caller's hooks on it keep working.

    The hook tables are copied: the handles the caller holds still refer to the old module's tables.
    """
    for name in HOOK_TABLES:
        table = replaced.__dict__.get(name)
        if table:
            replacement.__dict__[name] = type(table)(table)


def overlay(model: nn.Module, owners: dict[str, nn.Module], replacements: dict[str, nn.Module]) -> nn.Module:
    """The model as ``commit`` would leave it, built without changing ``model``.

    Every module on the way from the root to an edited path is a shallow clone (own child, parameter
    and buffer tables, everything else shared), so the edited model can be run and checked before
    anything is committed; untouched modules and all tensors are shared, not copied.
    """
    root = owners.get("", model)
    clones: dict[str, nn.Module] = {"": _shallow_clone(root)}

    def clone_at(path: str) -> nn.Module:
        if path not in clones:
            parent_path, _, name = path.rpartition(".")
            parent = clone_at(parent_path)
            clones[path] = parent._modules[name] = _shallow_clone(cast(nn.Module, parent._modules[name]))  # a child on the path
        return clones[path]

    edits = {**{p: m for p, m in owners.items() if p}, **replacements}
    for path in sorted(edits, key=lambda p: p.count(".")):
        parent_path, _, name = path.rpartition(".")
        clone_at(parent_path)._modules[name] = edits[path]
    return clones[""]


def _shallow_clone(module: nn.Module) -> nn.Module:
    clone = object.__new__(type(module))
    clone.__dict__ = dict(module.__dict__)
    for table in ("_modules", "_parameters", "_buffers"):
        clone.__dict__[table] = dict(module.__dict__[table])
    return clone


def commit(model: nn.Module, owners: dict[str, nn.Module], replacements: dict[str, nn.Module]) -> nn.Module:
    """Put edited owners and replacement modules at their paths; returns the (possibly new) root."""
    root = model
    for path in sorted(owners, key=lambda p: (p.count(".") if p else -1, p)):
        if path == "":
            root = owners[path]
        else:
            root.set_submodule(path, owners[path])
    return put(root, replacements)


def put(model: nn.Module, modules: dict[str, nn.Module]) -> nn.Module:
    """Set each module at its path (``""``: the root itself); returns the (possibly new) root."""
    root = modules.get("", model)
    for path, module in modules.items():
        if path:
            root.set_submodule(path, module)
    return root
