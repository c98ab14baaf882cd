"""A site: one place in a model where a plugin can go, described by its role and its shapes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from plugsurgeon.sites.roles import ALIASES, ROLES, known_role, role_matches

# The roles (name -> description, ``ps.ROLES``), the aliases and the role predicates come from the one
# table of roles, plugsurgeon/sites/roles.py; they are re-exported here, where ``ps.ROLES`` always was.
__all__ = ["ALIASES", "ROLES", "Site", "known_role", "role_matches"]


@dataclass(frozen=True)
class Site:
    """One insertion point of a model: a node of its traced graph with the role it plays there.

    ``ps.find_sites`` lists them; a recipe step's ``at:`` and ``where:`` choose among them.

    Attributes:
        role: What the place is (``residual.branch``, ``downsample.conv``...; ``ps.ROLES``).
        path: What users see and ``where: {include: [...]}`` globs match: a module path, or
            ``owner:node`` for a functional op.
        part: The traced part that holds the node (``""`` for a whole-model trace).
        node: The node's name in that part's graph.
        owner: The path of the smallest module whose forward contains the node (``""``: the model).
        scopes: The module forwards that see the node, innermost first (internal).
        shape: The feature map's shape there, N,C,H,W at the traced input.
        in_channels: The channels going in (for a conv, its input channels).
        channels: The channels of the map at the site.
        total_stride: The input size over the map's size.
        stride: A conv's or pooling's own stride.
        target: The path of the module a module call calls (None for a functional op).
        kernel: A conv's kernel size.
        groups: A conv's groups.
        dilation: A conv's dilation.
        extra: More nodes a multi-input plugin reads (pyramid levels, the top-down input).
        extra_shapes: Their shapes.
        extra_scopes: The module forwards that see each of them (internal).
        in_residual: Whether the node lies inside a residual branch.
        destride: For ``downsample.unit``: the strided conv whose stride a plugin there takes over.
        destride_shape: The map that conv gives at stride 1, which such a plugin reads.
        order: The position in the traced graph, for a stable order.

    Besides, ``spatial`` is the shape's H,W, ``stage`` log2 of ``total_stride`` (C2..C5), ``depthwise``
    whether a conv has a group per input channel, and ``to_dict()`` the site as JSON data.

    Examples:
        >>> site = ps.find_sites(torchvision.models.resnet50(), "residual.branch")[0]
        >>> site.path, site.channels, site.stage
        ('layer1.0.bn3', 256, 2)
    """

    role: str
    path: str  # what users see and globs match: a module path, or "owner:node" for functional ops
    part: str  # the traced part that holds the node ("" for a whole-model trace)
    node: str  # node name in that part's graph
    owner: str  # absolute path of the smallest module whose forward contains the node ("" for the root)
    scopes: tuple  # graph.trace.Scope for each module forward that sees the node, innermost first
    shape: tuple[int, ...]
    in_channels: int
    channels: int
    total_stride: int
    stride: int = 1
    target: str | None = None  # absolute path of the module a call_module node calls
    kernel: tuple[int, ...] | None = None
    groups: int = 1
    dilation: tuple[int, ...] | None = None
    extra: tuple[str, ...] = ()  # more nodes a multi-input plugin reads (pyramid levels, top-down input)
    extra_shapes: tuple[tuple[int, ...], ...] = ()
    extra_scopes: tuple[tuple, ...] = ()
    in_residual: bool = False  # the node lies inside a residual branch (a conv of a block's body)
    # downsample.unit: the strided conv whose stride a plugin here takes over. Surgery runs that conv at
    # stride 1 (same weights, same name), so the plugin reads the map at ``destride_shape`` and must
    # return ``shape``; the layers between them (a norm, an activation) work at any size.
    destride: str | None = None  # node name of that conv, in the same traced part
    destride_shape: tuple[int, ...] = ()
    order: int = 0  # position in the traced graph, for stable ordering

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.shape[2:])

    @property
    def stage(self) -> int:
        return int(round(math.log2(self.total_stride))) if self.total_stride >= 1 else 0

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    @property
    def key(self) -> tuple[str, str]:
        return (self.part, self.node)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for internal in ("scopes", "extra_scopes"):
            data.pop(internal)
        data.update(stage=self.stage, spatial=list(self.spatial), depthwise=self.depthwise)
        return data
