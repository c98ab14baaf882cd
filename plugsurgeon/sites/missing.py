"""Why a model has no sites of a role, when the trace knows: the facts a refusal states instead of "has none".

A model can hold what a role describes in a form no locator takes (residual blocks on N,H,W,C maps), or
inside modules torch.fx could not trace (their insides are no graph, so no sites). Both are in the trace.
"""

from __future__ import annotations

from plugsurgeon.graph.trace import Traced
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.locators import channels_last_merges
from plugsurgeon.sites.roles import role_matches

__all__ = ["why_no_sites"]

# Roles a residual merge on N,H,W,C maps would give, were the maps N,C,H,W.
_RESIDUAL_ROLES = ("residual.branch", "residual.output")


def why_no_sites(traced: Traced, kind: str | None) -> str | None:
    """The reason ``traced``'s model has no ``kind`` sites, as a sentence; None when the trace shows none.

    Args:
        traced: the model's trace (``ps.trace``).
        kind: the role or family asked for (None: any role).

    Returns:
        For residual roles, how many residual merges run on N,H,W,C maps; and which modules torch.fx
        could not trace (with the reason it gave for each), whose insides have no sites.
    """
    reasons = []
    if kind is None or any(role_matches(role, kind) for role in _RESIDUAL_ROLES):
        count = sum(len(channels_last_merges(GraphView(part, traced.model))) for part in traced.parts)
        if count:
            reasons.append(f"{count} residual merge{'s' if count > 1 else ''} found on N,H,W,C (channels-last) maps; "
                           "residual sites and the plugins that take them need N,C,H,W maps")
    if traced.untraced:
        shown = "; ".join(f"'{path or '(root)'}' ({reason})" for path, reason in traced.untraced[:3])
        more = f" and {len(traced.untraced) - 3} more" if len(traced.untraced) > 3 else ""
        reasons.append(f"torch.fx could not trace inside {len(traced.untraced)} module"
                       f"{'s' if len(traced.untraced) > 1 else ''}, which have no sites: {shown}{more}")
    return "; ".join(reasons) or None
