"""The caller's hooks carried onto a replacement must work there: checked before commit by calling them.

A replacement takes over the replaced module's hooks (``graph.edit.carry_hooks``), but the check that the
edited model runs suspends every hook, since hooks are written for real values and would fail on fake
tensors. A hook written for the replaced class (one that calls ``nn.Conv2d._conv_forward``, or reads an
attribute the replacement lacks) would then break the returned model at its first forward. So each
replacement that carries forward hooks is run once more, with its hooks, in eval mode without gradients,
on zeros of every input shape the traced model gave the replaced module. A failure there that the
replaced module, run the same way, does not show is the hook's: the call is refused before anything
changes. The carried hooks are called once here, on zeros (a hook that records values records these).
"""

from __future__ import annotations

import torch
from torch import nn

from plugsurgeon.errors import SiteError, first_line
from plugsurgeon.graph.fake import own_fake_mode
from plugsurgeon.graph.guards import attributes_preserved, training_flags_kept
from plugsurgeon.graph.shapes import shape_of
from plugsurgeon.surgery.edits import PlannedEdit, PlannedInsertion
from plugsurgeon.surgery.plan import Plan

_FORWARD_HOOKS = ("_forward_hooks", "_forward_pre_hooks")


def check_carried_hooks(planned: Plan, replacements: dict[str, nn.Module]) -> None:
    """Refuse a plan in which a hook carried onto a replacement fails there but not on the replaced module.

    Args:
        planned: The plan, of a model not changed since.
        replacements: The replacement modules by path (``build_edits``), real or fake; hooks already carried.

    Raises:
        SiteError: A carried hook fails on its replacement; the hook, the module and the error are named.
    """
    model = planned.model
    for edit in planned.edits:
        if isinstance(edit, PlannedInsertion) or edit.module_path not in replacements:
            continue
        replaced = model.get_submodule(edit.module_path)
        if not any(replaced.__dict__.get(name) for name in _FORWARD_HOOKS):
            continue
        replacement = replacements[edit.module_path]
        if own_fake_mode(replacement) is not None:  # a dry run's module holds fake tensors: hooks read real ones
            replacement = edit.materialized(model).module
            replacement.__dict__.update({name: type(t)(t) for name in _FORWARD_HOOKS if (t := replaced.__dict__.get(name))})
        for shape, dtype in _input_shapes(planned, edit):
            error = _fails(replacement, shape, dtype)
            if error is None or _fails(replaced, shape, dtype) is not None:
                continue  # it runs, or it fails on the replaced module too (a hook that needs real data)
            hooks = [getattr(h, "__qualname__", type(h).__name__) for name in _FORWARD_HOOKS for h in replaced.__dict__[name].values()]
            raise SiteError(
                f"{edit.where}: the hook(s) {hooks} registered on '{edit.module_path}' ({type(replaced).__name__}) would be "
                f"carried onto its replacement, a {type(replacement).__name__}, and fail there: {error}",
                hint="remove the hook before surgery (handle.remove()) and register it again on result.model, or "
                     "exclude the site with where={'exclude': [...]}; nothing was changed",
                cli_hint="exclude the site with `where: {exclude: [...]}`; nothing was changed",
            )


def _input_shapes(planned: Plan, edit: PlannedEdit) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of the tensor each call of the replaced module took in the traced model."""
    part = planned.traced.part(edit.site.part)
    found = []
    for node in part.gm.graph.nodes:
        if node.op != "call_module" or part.absolute(str(node.target)) != edit.module_path or not node.all_input_nodes:
            continue
        meta = node.all_input_nodes[0].meta.get("tensor_meta")
        shape = shape_of(node.all_input_nodes[0])
        if shape is not None and getattr(meta, "dtype", None) is not None and (shape, meta.dtype) not in found:
            found.append((tuple(shape), meta.dtype))
    return found


def _fails(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """Why ``module`` (its hooks active) fails on zeros of ``shape`` in eval mode, None when it runs.

    Eval mode without gradients writes no BatchNorm statistics and no parameter; what the forward stores on
    the module itself (a cache) is put back, as every other check does (``check._run``)."""
    device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    try:
        with training_flags_kept(module, False), attributes_preserved(module), torch.no_grad():
            module(torch.zeros(shape, dtype=dtype, device=device))
    except Exception as error:  # noqa: BLE001 - a hook may raise anything
        return f"{type(error).__name__}: {first_line(error, 200)}"
    return None
