"""Parameters and FLOPs before and after deploy: torch.utils.flop_counter on fake tensors, no compute."""

from __future__ import annotations

from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from plugsurgeon.deployment.verify import Calls, module_at
from plugsurgeon.graph.fake import count_params
from plugsurgeon.graph.flops import TotalFlops
from plugsurgeon.graph.shapes import fake_inputs_like

__all__ = ["count_flops", "count_params"]


def count_flops(model: nn.Module, calls: Calls) -> int | None:
    """FLOPs of one forward of every traced part (eval mode), or None when a part does not run on fake tensors."""
    total = 0
    for path, inputs in calls:
        module = module_at(model, path)
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fake = fake_inputs_like(inputs, mode)
                with TotalFlops() as counter:
                    module(*fake)
        except Exception:  # noqa: BLE001 - a count is a nicety, never a failure
            return None
        total += counter.total
    return total
