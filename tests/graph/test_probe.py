"""The structure-only forward: heavy ops answer zeros of their shape, everything else computes, and
recording falls back to real compute where zeros would leave a module nothing to record."""

import torch
from torch import nn
from torchvision.ops import roi_align

from plugsurgeon.graph.probe import structure_only
from plugsurgeon.graph.shapes import record_module_inputs
from tests.nets import UntraceableNet


def test_heavy_ops_give_zeros_of_their_shape_and_the_rest_computes():
    conv, linear = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Linear(5, 7)
    x = torch.randn(2, 3, 9, 9)
    with structure_only(), torch.no_grad():
        features = conv(x)
        projected = linear(torch.randn(4, 5))
        product = torch.randn(3, 4, 5) @ torch.randn(3, 5, 6)
        shifted = x + 1  # not heavy: real values
        pooled = roi_align(torch.randn(1, 4, 16, 16), [torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 9.0, 12.0]])], 7)
    assert features.shape == (2, 8, 5, 5) and not features.any()
    assert projected.shape == (4, 7) and not projected.any()
    assert product.shape == (3, 4, 6) and not product.any()
    assert torch.equal(shifted, x + 1)
    assert pooled.shape == (2, 4, 7, 7) and not pooled.any()  # two boxes, from the real box list


class _SelectsByValue(nn.Module):
    """Picks the rows whose features are non-zero, as a detector's box selection picks by score."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        pooled = self.features(x).mean((2, 3))
        return self.head(pooled[pooled.abs().sum(1) > 0])


def test_recording_runs_again_for_real_where_zeros_leave_a_module_an_empty_input():
    from plugsurgeon.graph.shapes import _record_module_inputs

    torch.manual_seed(0)
    model = _SelectsByValue()
    example = torch.randn(3, 3, 8, 8)
    with structure_only():
        assert _record_module_inputs(model, example)["head"][0][0].shape == (0, 4)  # zero features select no row
    assert record_module_inputs(model, example)["head"][0][0].shape == (3, 4)


def _shapes(records):
    from torch.utils._pytree import tree_leaves

    return {path: [tuple(v.shape) for v in tree_leaves(call) if isinstance(v, torch.Tensor)] for path, call in records.items()}


def test_recording_with_zeros_for_heavy_ops_sees_what_a_real_run_sees():
    from plugsurgeon.graph.shapes import _record_module_inputs

    model = UntraceableNet().eval()
    example = torch.randn(2, 3, 32, 32)
    recorded = _shapes(record_module_inputs(model, example))
    assert recorded == _shapes(_record_module_inputs(model, example))
    assert recorded["backbone.layer2.0.bn1"] == [(2, 32, 4, 4)]  # a strided conv's output, from zeros of its shape
