"""TotalFlops counts what torch's FlopCounterMode counts as its total, on real models, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from plugsurgeon.graph.flops import TotalFlops


class Mixed(nn.Module):
    """Ops with formulas (conv, transposed conv, linear, bmm, einsum, attention) and ops without (norms, softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.conv(x))).flatten(2).transpose(1, 2)
        y = self.norm(y + self.attention(y, y, y, need_weights=False)[0])
        gram = torch.einsum("bnc,bmc->bnm", y, y).softmax(-1)
        y = torch.bmm(gram, y) + nn.functional.scaled_dot_product_attention(y, y, y)
        return self.head(y).mean()


MODELS = {
    "mixed": (Mixed, (2, 3, 8, 8)),
    "vit_b_16": (lambda: torchvision.models.vit_b_16(), (1, 3, 224, 224)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), (2, 3, 64, 64)),
}


def torch_total(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def ours(run) -> int:
    with TotalFlops() as counter:
        run()
    return counter.total


@pytest.mark.parametrize("name", MODELS)
def test_forward_on_fake_tensors_counts_as_torch_does(name):
    build, shape = MODELS[name]
    model = build().eval()
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(shape)
        expected = torch_total(lambda: model(x))
        counted = ours(lambda: model(x))
    assert expected > 0
    assert counted == expected


def test_training_step_counts_as_torch_does():
    model = Mixed().train()
    x = torch.randn(2, 3, 8, 8)
    expected = torch_total(lambda: model(x).backward())
    assert ours(lambda: model(x).backward()) == expected > 0
