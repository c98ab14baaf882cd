"""A forward run to learn structures, not values: the heavy ops answer zeros of the right shape.

A model fx cannot trace whole (a detector whose transform resizes the image and whose heads select
boxes) is traced in parts, and each part needs the inputs it is called with: one real forward
records them. Nearly all of that forward's time goes into convolutions and matrix products at full
resolution, whose output shapes depend on their inputs' shapes alone. Under ``structure_only`` those
ops run on the meta device (shapes, no compute) and return zeros of that shape; everything else --
the resizing, anchor generation, box selection, NMS -- runs for real on what it gets, so the values
that decide a structure (image sizes, box counts) still come from running code. The recorded
structures are the same as a real run's wherever counts do not hinge on the features' values;
``shapes.record_module_inputs`` says what it does where they might.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

_aten = torch.ops.aten
# The ops that hold a CNN's or a transformer's FLOPs; their outputs' shapes come from their inputs'.
_HEAVY = frozenset({
    _aten.convolution.default,
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
})


class structure_only(TorchDispatchMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within it, convolutions and matrix products return zeros of the shape they would compute."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _HEAVY:
            return func(*args, **kwargs)
        device = next(v.device for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor))
        on_meta = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, (args, kwargs))
        shaped = func(*on_meta[0], **on_meta[1])
        return torch.zeros(shaped.shape, dtype=shaped.dtype, device=device)
