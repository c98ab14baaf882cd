"""A forward run to learn structures, not values: the heavy ops answer zeros of the right shape.

A model fx cannot trace whole (a detector whose transform resizes the image and whose heads select
boxes) is traced in parts, and each part needs the inputs it is called with: one real forward
records them. Nearly all of that forward's time goes into convolutions, matrix products and region
pooling at full resolution, whose output shapes depend on their inputs' shapes alone. Under
``structure_only`` those ops run on the meta device (shapes, no compute) and return zeros of that
shape; everything else -- the resizing, anchor generation, box selection, NMS -- runs for real on
what it gets, so the values that decide a structure (image sizes, box counts) still come from
running code. The recorded structures are the same as a real run's wherever counts do not hinge on
the features' values; ``shapes.record_module_inputs`` says what it does where they might.
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
# torchvision's region pooling (an R-CNN head pools a thousand boxes from every level): its output's
# shape comes from the box count, which the real box selection before it decided. Named, so that
# nothing here imports torchvision.
_HEAVY_NAMED = frozenset({"torchvision.roi_align.default", "torchvision.ps_roi_align.default",
                          "torchvision.roi_pool.default", "torchvision.ps_roi_pool.default"})


class structure_only(TorchDispatchMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within it, convolutions, matrix products and region pooling return zeros of the shape they
    would compute."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _HEAVY and str(func) not in _HEAVY_NAMED:
            return func(*args, **kwargs)
        device = next(v.device for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor))
        on_meta = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, (args, kwargs))
        shaped = func(*on_meta[0], **on_meta[1])
        return tree_map(lambda v: torch.zeros(v.shape, dtype=v.dtype, device=device) if isinstance(v, torch.Tensor) else v, shaped)
