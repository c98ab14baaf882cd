"""Sites that depend on the random seed: a forward that draws random numbers in Python (``if torch.rand(1).item()
< p:`` to skip a block) is traced along one branch, chosen by the draw, so its sites change from run to run.

fx records no draw on concrete values, so the graph cannot show it; the random state can. A trace that
consumed the generator (``Traced.drew_random``) is traced once more from another seed, and the two site
lists are compared: what differs is reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.sites.find import locate

__all__ = ["listed", "seed_note", "trace_checking_seeds"]

_SEEDS = (0, 1)


def trace_checking_seeds(model: nn.Module, input_shape: Sequence[int]) -> tuple[Traced, list[str]]:
    """``model``'s trace, and the sites (``role path``) found in only one of two traces from different seeds.

    The caller's random state is left as it was. A second trace runs only when the first one drew from
    the generator.

    Args:
        model: the model to trace.
        input_shape: the input it is traced at, N,C,H,W.

    Returns:
        The first trace, and the sites on which the two traces disagree (empty when they agree, or when
        nothing was drawn).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[0])
        traced = trace(model, tuple(input_shape))
    if not traced.drew_random:
        return traced, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[1])
        other = trace(model, tuple(input_shape))
    first = {f"{s.role} {s.path}" for s in locate(traced)}
    second = {f"{s.role} {s.path}" for s in locate(other)}
    return traced, sorted(first ^ second)


def seed_note(differing: list[str]) -> str | None:
    """The sentence that reports sites found in one trace only (None when there are none)."""
    if not differing:
        return None
    return (f"the sites depend on the random seed: two traces from different seeds disagree on {len(differing)} "
            f"site{'s' if len(differing) > 1 else ''} ({listed(differing)}); the model draws random numbers in its forward "
            "(a block skipped at random in train mode): trace it in eval mode for stable sites")


def listed(differing: list[str]) -> str:
    """The first four sites, and how many more."""
    return ", ".join(differing[:4]) + (f" and {len(differing) - 4} more" if len(differing) > 4 else "")
