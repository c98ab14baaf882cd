"""A model whose forward takes optional arguments (``labels=None``, ``mask=None``) is traced as ``model(x)`` calls it.

Hugging Face's classifiers compute a loss when given ``labels``; once a forward with labels has set
``config.problem_type``, that branch traces, and a trace that made ``labels`` a placeholder required it
(issue 17: "Expected positional argument for parameter labels"). The trace is of the call that surgery and
deploy make, with the optional arguments at their defaults.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class WithLabels(nn.Module):
    """A classifier in Hugging Face's style: a loss when labels are given, a mask that scales the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.head = nn.Linear(16, 3)

    def forward(self, pixels, labels=None, scale=None):
        logits = self.head(self.blocks(self.stem(pixels)).mean((2, 3)))
        if scale is not None:
            logits = logits * scale
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"logits": logits, "loss": loss}


def test_optional_arguments_are_traced_at_their_defaults_and_kept_by_apply_and_deploy():
    model = WithLabels()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    traced = ps.trace(model, (1, 3, 32, 32))
    assert traced.whole
    assert [s.path for s in ps.find_sites(traced, "residual.branch")] == ["blocks.0.bn2", "blocks.1.bn2"]

    edited = ps.apply(model, "se", input_shape=(1, 3, 32, 32), traced=traced).model
    out = edited(x, labels=labels)
    assert out["loss"] is not None and out["loss"].requires_grad
    out["loss"].backward()
    assert edited(x)["loss"] is None
    assert torch.equal(edited(x, scale=torch.zeros(())).get("logits"), torch.zeros(2, 3))

    deployed = ps.deploy(model, input_shape=(1, 3, 32, 32))
    assert len(deployed.report.folded) == 5 and not deployed.report.skipped
    model.eval()
    expected, actual = model(x, labels=labels), deployed.model(x, labels=labels)
    torch.testing.assert_close(actual["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(actual["loss"], expected["loss"], atol=1e-4, rtol=1e-4)


class ResidualInRoot(nn.Module):
    """The residual merge is in the model's own forward, which takes ``labels``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, pixels, labels=None):
        x = F.relu(self.stem(pixels))
        logits = self.head(F.relu(x + self.bn(self.conv(x))).mean((2, 3)))
        return logits, (F.cross_entropy(logits, labels) if labels is not None else None)


def test_an_edit_of_the_models_own_forward_that_would_drop_an_optional_argument_is_refused():
    model = ResidualInRoot()
    with pytest.raises(ps.PlugsurgeonError, match=r"ResidualInRoot.forward itself, which takes optional arguments \(labels\)"):
        ps.apply(model, "se", input_shape=(1, 3, 32, 32))
    assert not any(isinstance(m, nn.Sequential) or "se" in name for name, m in model.named_modules())
