"""The memory budget of surgery: how many parameter and buffer elements a plan may add to a model.

A recipe is data from anywhere, and its arguments size real tensors. Planning therefore builds every new
module on fake tensors first (no memory), counts the elements it would add, and refuses the plan when
they exceed ten times the model, with a floor for small models (a context module such as ASPP can
outweigh a toy network) and a cap for large ones. Tensors a plugin keeps from the module it replaces
(an ACBlock keeps the replaced conv's weight) are the model's already and are not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from plugsurgeon.errors import RecipeError

BUDGET_FACTOR = 10
BUDGET_FLOOR = 16_000_000
BUDGET_CAP = 1_000_000_000


def added_budget(model_elements: int) -> int:
    """How many parameter and buffer elements surgery may add to a model of ``model_elements``."""
    return min(BUDGET_CAP, max(BUDGET_FLOOR, BUDGET_FACTOR * model_elements))


def budget_text(model_elements: int) -> str:
    """The budget of a model of ``model_elements`` and how it is computed, for error messages."""
    return (f"{added_budget(model_elements):,} elements ({BUDGET_FACTOR} x the model's {model_elements:,}, "
            f"at least {BUDGET_FLOOR:,}, at most {BUDGET_CAP:,})")


def check_budget(host: nn.Module, modules: list[tuple[nn.Module, nn.Module | None]], what: str) -> None:
    """Refuse ``modules`` (each with the module it replaces, or None) if together they add more
    parameter and buffer elements than ``host``'s budget (``added_budget``); the message has
    the numbers. Fake modules are counted as real ones, without memory."""
    new = [t for module, replaced in modules for t in new_tensors(module, replaced)]
    added = sum(t.numel() for t in new)
    if added <= BUDGET_FLOOR:  # within any model's budget: the host need not be counted
        return
    model = sum(t.numel() for t in (*host.parameters(), *host.buffers()))
    if added > added_budget(model):
        size = sum(t.numel() * t.element_size() for t in new)
        raise RecipeError(
            f"{what} would add {added:,} parameter and buffer elements ({size / 2**30:.1f} GiB), "
            f"more than the budget of {budget_text(model)}",
            hint="lower the steps' size arguments (hidden widths, kernels, paths), or narrow them with `where`",
        )


def new_tensors(module: nn.Module, replaced: nn.Module | None) -> list[torch.Tensor]:
    """Parameters and buffers the module made itself (not the replaced module's, which it may keep)."""
    kept = {id(t) for t in (*replaced.parameters(), *replaced.buffers())} if replaced is not None else set()
    seen: set[int] = set()
    new: list[torch.Tensor] = []
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) not in kept and id(tensor) not in seen:
            seen.add(id(tensor))
            new.append(tensor)
    return new


def new_elements(module: nn.Module, replaced: nn.Module | None = None) -> int:
    """How many parameter and buffer elements ``module`` adds beyond those it keeps from ``replaced``."""
    return sum(t.numel() for t in new_tensors(module, replaced))
