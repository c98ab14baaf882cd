"""What the model did to the input it was traced with, from the recorded shapes: a note, never a print.

A model whose forward resizes its input (torchvision's detectors: GeneralizedRCNNTransform scales
1x3x512x512 to 800 pixels on the short side) is traced in parts, and every site, shape, stage and
FLOP count is at the size its backbone part actually saw, not at ``--input-shape``. Saying so is the
difference between "my 512 input" and the 800 the numbers are about.
"""

from __future__ import annotations

from plugsurgeon.graph.shapes import flat_tensors
from plugsurgeon.graph.trace import Traced


def resize_notes(traced: Traced) -> list[str]:
    """One note if the image reaches the traced part that reads it at another size, else none.

    The part that reads the image is the one fed the largest 4-D map with the input's channels (a
    detector's backbone; its heads read feature maps). A model traced whole saw the input as given.
    """
    if traced.whole or len(traced.input_shape) != 4:
        return []
    channels, asked = traced.input_shape[1], tuple(traced.input_shape[2:])
    seen = []
    for part in traced.parts:
        image = next((t for t in flat_tensors(part.example_inputs) if t.dim() == 4), None)
        if image is not None and int(image.shape[1]) == channels:
            seen.append(
                (int(image.shape[2]) * int(image.shape[3]), part.path, tuple(int(d) for d in image.shape))
            )
    if not seen:
        return []
    _area, path, shape = max(seen)
    if shape[2:] == asked:
        return []
    text = "x".join
    return [
        f"the model resizes its input: {text(map(str, traced.input_shape))} reaches '{path}' as {text(map(str, shape))} "
        f"(its forward resizes it); sites, spatial sizes, stages and FLOPs are at {text(map(str, shape[2:]))}"
    ]
