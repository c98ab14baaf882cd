"""All sites of a traced model, or those of one role."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from torch import nn

from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.sites.graphview import GraphView
from plugsurgeon.sites.roles import ALIASES, RoleTable, active_roles
from plugsurgeon.sites.select import Where, select
from plugsurgeon.sites.site import Site

if TYPE_CHECKING:
    from plugsurgeon.sites.roles import ModelLocator, PartLocator, Role

__all__ = ["ALIASES", "check_role", "find_sites", "locate"]


def check_role(kind: str, *, roles: RoleTable | None = None) -> None:
    """Refuse a ``kind`` that is neither a role, a family of roles nor an alias.

    Args:
        kind: what a user asked for (``--kind``, a recipe step's ``at:``).
        roles: the table of roles; the active one (``BUILTIN_ROLES`` unless ``use_roles``) by default.

    Raises:
        UnknownNameError: with the closest names and a hint listing every role and alias.

    Examples:
        >>> check_role("downsample")  # a family: accepted
    """
    (roles if roles is not None else active_roles()).check(kind)


def locate(traced: Traced, kind: str | None = None, *, roles: RoleTable | None = None) -> list[Site]:
    """Every site of ``kind`` (a role, a role family such as ``downsample``, or an alias), in graph order.

    Each role of the table that ``kind`` asks for runs its own locator: part by part, or once over
    every part for a model-wide role.

    Args:
        traced: the model's trace (``ps.trace``).
        kind: a role, a family or an alias; None for every role of the table.
        roles: the table of roles; the active one (``BUILTIN_ROLES`` unless ``use_roles``) by default.

    Returns:
        The sites, ordered by traced part, then graph position, then role.

    Raises:
        UnknownNameError: ``kind`` is not a role, family or alias of the table.
        ValueError: a locator returned a site of another role than its own (a bug in that locator).

    Examples:
        >>> [s.path for s in locate(ps.trace(torchvision.models.resnet18()), "backbone")]
        ['layer4.1.relu']
    """
    table = roles if roles is not None else active_roles()
    where: dict = {}
    if kind is not None:
        table.check(kind)
        kind, where = table.aliases.get(kind, (kind, {}))
    views = [GraphView(part, traced.model) for part in traced.parts]
    sites: list[tuple[int, Site]] = []
    for role in table.matching(kind):
        sites.extend(_run(role, views))
    sites.sort(key=lambda item: (item[0], item[1].order, item[1].role))
    found = [s for _i, s in sites]
    if where:
        found = select(found, Where(**where))
    return found


def _run(role: Role, views: list[GraphView]) -> list[tuple[int, Site]]:
    """(part index, site) for every site ``role``'s locator finds."""
    if role.model_wide:
        found = cast("ModelLocator", role.locator)(views)
    else:
        part_locator = cast("PartLocator", role.locator)
        found = [(index, site) for index, view in enumerate(views) for site in part_locator(view)]
    strays = sorted({site.role for _i, site in found if site.role != role.name})
    if strays:
        raise ValueError(f"the locator of role '{role.name}' returned sites of {strays}: each role's locator finds its own sites")
    return found


def find_sites(model: nn.Module | Traced, kind: str | None = None, *, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
               roles: RoleTable | None = None) -> list[Site]:
    """Every insertion point of ``kind`` in ``model``, in graph order.

    Args:
        model: a model, or a trace of one (``ps.trace``) to reuse.
        kind: a role (``residual.branch``), a family of roles (``downsample``) or an alias (``conv3x3``);
            None for every site.
        input_shape: the input the model is traced at (ignored for a trace).
        roles: the table of roles (``BUILTIN_ROLES.extended(my_role)`` for a role of your own); the
            active one (``BUILTIN_ROLES`` unless ``use_roles``) by default.

    Returns:
        The sites (role, path, channels, spatial size, stride, stage...).

    Raises:
        TraceError: the model does not run on inputs of that shape.
        SiteError: ``kind`` is not a role, family or alias.

    Example:
        >>> ps.find_sites(torchvision.models.resnet50(), "residual.branch")[0].path
        'layer1.0.bn3'
    """
    traced = model if isinstance(model, Traced) else trace(model, tuple(input_shape))
    return locate(traced, kind, roles=roles)
