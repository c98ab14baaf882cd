"""Which map a merge's plugin reads as the upsampled input: one that a forward holding the lateral also sees.

A merge site's extra is the map the top-down path upsamples. Where that upsample sits inside a child
the merging forward calls whole (smp's Linknet: ``x = self.block(x)``, a Sequential of a 1x1 conv, the
transposed conv and another 1x1 conv, then ``x + skip``), no forward sees both the lateral and the
upsample's input, and a plugin reading both (SEB) has nowhere to go. The same map, before the layers
that only change its channels, is the one the merging forward receives: that is read instead, as a
U-Net's decoder block reads its ``x`` before interpolating it.
"""

from __future__ import annotations

import torch.fx as fx

from plugsurgeon.sites.graphview import GraphView


def readable_source(view: GraphView, lateral: fx.Node, source: fx.Node) -> fx.Node:
    """``source``, or where no forward that sees ``lateral`` also sees it, the first map it is computed
    from at the same size (one input per step) that such a forward sees; ``source`` if there is none."""
    seen_with_lateral = _frames(view, lateral)
    size = _spatial(view, source)
    node: fx.Node | None = source
    while node is not None and size is not None and _spatial(view, node) == size:
        if _frames(view, node) & seen_with_lateral:
            return node
        inputs = view.tensor_inputs(node)
        node = inputs[0] if len(inputs) == 1 else None
    return source


def _frames(view: GraphView, node: fx.Node) -> set[tuple[str, int]]:
    """The module calls in whose forward ``node`` is a value: computed there or passed in whole."""
    return {(s.owner, s.call) for s in (*view.part.scopes(node), *view.part.input_scopes(node))}


def _spatial(view: GraphView, node: fx.Node) -> tuple[int, ...] | None:
    shape = view.shape(node)
    return tuple(shape[2:]) if shape is not None and len(shape) == 4 else None
