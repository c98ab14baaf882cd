"""Shared checks for the deploy tests."""

from __future__ import annotations

import torch
from torch import nn

from plugsurgeon.deployment.fold import is_norm


def assert_same_function(original: nn.Module, deployed: nn.Module, x: torch.Tensor, rel: float = 1e-5) -> None:
    """Within fp32 round-off: max |deployed - original| <= rel * max |original| (plus a tiny floor)."""
    original = original.eval()
    with torch.no_grad():
        expected, actual = original(x), deployed(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale + 1e-6)


def no_norms_left(model: nn.Module) -> bool:
    return not any(is_norm(m) for m in model.modules())


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


def types_by_path(model: nn.Module) -> dict[str, type]:
    return {path: type(m) for path, m in model.named_modules()}
