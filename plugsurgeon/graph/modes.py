"""Whether a module's forward traces differently in train and eval mode.

An edited owner becomes a GraphModule traced in one mode; if its forward branches on
``self.training`` (Inception's auxiliary head, custom dropout paths), the edit would silently
freeze that branch. Surgery refuses such owners instead (torchvision's feature_extraction warns
about the same thing).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from plugsurgeon.graph.guards import training_flags_kept
from plugsurgeon.graph.trace import reads_training_flag, trace_module


def differs_between_modes(owner: nn.Module, concrete_args: dict[str, Any] | None,
                          trace_through: frozenset[str] = frozenset()) -> bool:
    if not reads_training_flag(type(owner)):
        return False
    codes = []
    with training_flags_kept(owner):  # every flag, so frozen BatchNorms stay frozen
        for mode in (True, False):
            owner.training = mode
            gm, _ = trace_module(owner, concrete_args, shallow=True, trace_through=trace_through)
            codes.append(gm.code)
    return codes[0] != codes[1]
