"""A four-stage residual network small enough for a sweep's trials to take milliseconds, and what the tests score it by."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.nets import BasicBlock

# Channels by stage (stage = log2 of the cumulative stride): 2 -> 16, 3 -> 32, 4 -> 32, 5 -> 64.
STAGE_OF_LAYER = {"layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5}
WEIGHTS = {2: 1.0, 3: -2.0, 4: 3.0, 5: 0.5}  # the best set of stages is {2, 4, 5}: 4.5


class FourStages(nn.Module):
    """stem (stride 4) -> one BasicBlock per stage 2..5 -> pool -> fc; input 1,3,32,32."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 32, 2)
        self.layer4 = BasicBlock(32, 64, 2)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def stages_with(model: nn.Module, plugin: str = "se") -> set[int]:
    """The stages whose block got a ``plugin`` module, read from the edited model's own modules."""
    return {STAGE_OF_LAYER[name.split(".")[0]] for name, _ in model.named_modules()
            if name.split(".")[-1] == plugin and name.split(".")[0] in STAGE_OF_LAYER}


def score(model: nn.Module) -> float:
    """The synthetic metric: the sum of the weights of the stages that got SE."""
    return sum(WEIGHTS[s] for s in stages_with(model))


def logged_score(model: nn.Module) -> float:
    """``score``, logging "start"/"done" and the stages to $SWEEP_LOG, after $SWEEP_SLEEP seconds (for the process tests)."""
    log = Path(os.environ["SWEEP_LOG"])
    stages = ",".join(map(str, sorted(stages_with(model))))
    with log.open("a") as handle:
        handle.write(f"start {stages}\n")
    time.sleep(float(os.environ.get("SWEEP_SLEEP", "0")))
    with log.open("a") as handle:
        handle.write(f"done {stages}\n")
    return score(model)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread: more only spin against each other on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
