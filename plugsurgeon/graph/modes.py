"""Whether a module's forward traces differently in train and eval mode.

An edited owner becomes a GraphModule traced in one mode; if its forward branches on
``self.training`` (Inception's auxiliary head, custom dropout paths), the edit would silently
freeze that branch. Surgery refuses such owners instead (torchvision's feature_extraction warns
about the same thing).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from plugsurgeon.graph.trace import reads_training_flag, trace_module


def differs_between_modes(owner: nn.Module, concrete_args: dict[str, Any] | None) -> bool:
    if not reads_training_flag(type(owner)):
        return False
    was_training = owner.training
    try:
        codes = []
        for mode in (True, False):
            owner.train(mode)
            gm, _ = trace_module(owner, concrete_args, shallow=True)
            codes.append(gm.code)
        return codes[0] != codes[1]
    finally:
        owner.train(was_training)
