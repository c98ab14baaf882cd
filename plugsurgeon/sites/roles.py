"""Site roles as data: one table of ``Role`` records, from which everything else about a role is derived.

A role names what a place *is* in a network (``residual.branch``: the end of a residual branch). Each
``Role`` holds its name, its description, the locator function that finds its sites, whether those are
decided across the model's traced parts (``model_wide``), where an edit at one of its sites goes
(``Placement``), and an example site on a known model. From ``BUILTIN_ROLES``:

- ``ps.ROLES`` (name -> description) and ``ALIASES`` (``plugsurgeon.sites.site``);
- ``find_sites``/``locate`` (``plugsurgeon.sites.find``): which locator runs for a role or family, and
  which roles are model-wide;
- the engine's placement of an edit (``plugsurgeon.surgery.plan`` asks ``placement_of``);
- ``plugsurgeon sites --help`` (``plugsurgeon.cli.helptext``), and the summary table of docs/roles.md
  (``RoleTable.markdown``; tests/sites/test_role_table.py checks the page against the table).

A new role is one ``Role`` entry and one locator function. A table is an immutable value:
``BUILTIN_ROLES.extended(Role(...))`` makes another one, which ``find_sites(..., roles=table)`` takes as
an argument; ``with use_roles(table):`` makes it the active table for the code that does not take one
(recipe validation, plugin registration, planning), for that block only. Nothing fills the table as an
import side effect.

This module imports no torch: the built-in locators are named by reference (``module:function``) and
imported on first use, so the CLI's help and listings stay fast.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from plugsurgeon.errors import UnknownNameError, did_you_mean

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from plugsurgeon.sites.graphview import GraphView
    from plugsurgeon.sites.site import Site

    # A locator of a role that is not model-wide: one traced part's view in, the role's sites there out.
    PartLocator = Callable[[GraphView], list[Site]]
    # A locator of a model-wide role: every traced part's view in, (index of the part, site) pairs out.
    ModelLocator = Callable[[Sequence[GraphView]], list[tuple[int, Site]]]

_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


def role_matches(role: str, wanted: str) -> bool:
    """Whether a site of ``role`` is one that ``wanted`` asks for: the role itself, or a family of it.

    Args:
        role: a role name, such as ``downsample.pool``.
        wanted: a role name or a family (the part before the dot: ``downsample``).

    Returns:
        True when ``wanted`` is ``role`` or a dotted prefix of it.

    Examples:
        >>> role_matches("downsample.pool", "downsample"), role_matches("downsample.pool", "down")
        (True, False)
    """
    return role == wanted or role.startswith(wanted + ".")


@dataclass(frozen=True)
class Placement:
    """Which module forward an edit at a site of a role goes into.

    A site's node is seen by several module forwards (``Site.scopes``, innermost first: the module
    that computes it, then each module that returns it). By default an edit goes into the innermost
    one that can be edited (called once, the same graph in train and eval mode).

    Attributes:
        outermost_first: a plugin that reads the site alone tries the outermost forward first
            (``residual.branch``: "before the add" is a place in the block that holds the add, and
            that block's class is what changes).
        where_passed_in: a plugin that also reads the site's extra inputs may go, before the forwards
            that compute the site, into a forward that receives the site's node as an argument
            (``neck.merge``: a U-Net decoder block gets its skip connection, the merge's lateral
            input, as an argument).

    Examples:
        >>> Placement(outermost_first=True)
        Placement(outermost_first=True, where_passed_in=False)
    """

    outermost_first: bool = False
    where_passed_in: bool = False


class Example(NamedTuple):
    """A site a role finds on a known model, as ``plugsurgeon sites MODEL --kind ROLE`` lists it.

    Attributes:
        model: the model name ``plugsurgeon`` loads (``resnet50``, ``package.module:factory``).
        path: the site's path in that model.
    """

    model: str
    path: str


@dataclass(frozen=True)
class Role:
    """One site role: what it means, how its sites are found, where an edit at one of them goes.

    Attributes:
        name: lowercase, dotted for a variant of a family (``downsample.pool``; ``at: downsample``
            in a recipe means every variant).
        description: one line on what the place is, shown by ``plugsurgeon sites --help`` and as
            ``ps.ROLES[name]``.
        locator: finds the role's sites. Unless ``model_wide``, a function of one traced part's
            ``GraphView`` returning that part's sites of this role; if ``model_wide``, a function of
            the list of every part's view returning ``(part index, site)`` pairs. Sites are made
            with ``plugsurgeon.sites.locators.make_site(view, name, node)``; every site must carry
            this role's name.
        model_wide: the sites are decided across the traced parts together (one feature extractor
            per model: ``backbone``, ``stage``), not part by part.
        placement: which module forward an edit at one of the sites goes into.
        example: a site the role finds on a known model (the help and the docs show it).

    Raises:
        ValueError: the name is not lowercase dotted words, or the description is empty.

    Examples:
        >>> from plugsurgeon.sites.locators import make_site
        >>> def activation_sites(view):
        ...     return [make_site(view, "activation", n) for n in view.nodes if view.is_activation(n)]
        >>> role = Role("activation", "the output of an activation", activation_sites)
        >>> table = BUILTIN_ROLES.extended(role)
    """

    name: str
    description: str
    locator: PartLocator | ModelLocator
    model_wide: bool = False
    placement: Placement = Placement()
    example: Example | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"role name '{self.name}' is not lowercase words joined by dots (e.g. 'neck.level')")
        if not self.description.strip():
            raise ValueError(f"role '{self.name}' needs a description")

    @property
    def family(self) -> str:
        """The role's family: the part of its name before the first dot (the name itself if none)."""
        return self.name.split(".")[0]


Alias = tuple[str, dict[str, Any]]  # (role or family, the `where:` selectors it stands for)


class RoleTable(Mapping[str, Role]):
    """An immutable, ordered table of roles (name -> ``Role``) and the aliases that name a role with selectors.

    The order is the order of the help text and of the documentation; sites are always listed in
    graph order whatever it is.

    Args:
        roles: the roles, in display order.
        aliases: shorthands for a role with selectors, accepted wherever a role is (``--kind conv3x3``,
            ``at: conv3x3``): alias -> (role or family, ``where:`` selectors).

    Raises:
        ValueError: two roles share a name, an alias is also a role's name, or an alias names no role.

    Examples:
        >>> table = RoleTable([Role("edge", "an edge map", lambda view: [])])
        >>> list(table), table.known("edge"), table.known("edges")
        (['edge'], True, False)
    """

    def __init__(self, roles: Iterable[Role], aliases: Mapping[str, Alias] | None = None) -> None:
        self._roles: dict[str, Role] = {}
        for role in roles:
            if role.name in self._roles:
                raise ValueError(f"role '{role.name}' is in the table twice")
            self._roles[role.name] = role
        self._aliases: dict[str, Alias] = {name: (target, dict(where)) for name, (target, where) in (aliases or {}).items()}
        for name, (target, _where) in self._aliases.items():
            if name in self._roles or any(r.family == name for r in self._roles.values()):
                raise ValueError(f"alias '{name}' is also a role or family name")
            if not self.known(target):
                raise ValueError(f"alias '{name}' stands for '{target}', which is no role or family of the table")

    def __getitem__(self, name: str) -> Role:
        return self._roles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __repr__(self) -> str:
        return f"RoleTable({list(self._roles)}, aliases={list(self._aliases)})"

    @property
    def aliases(self) -> Mapping[str, Alias]:
        """Alias -> (role or family, ``where:`` selectors), e.g. ``conv3x3`` -> ``("conv", {"kernel": 3})``."""
        return self._aliases

    def extended(self, *roles: Role, aliases: Mapping[str, Alias] | None = None) -> RoleTable:
        """A new table: this one's roles and aliases, then ``roles`` and ``aliases`` added.

        Args:
            *roles: the roles to add, after this table's.
            aliases: aliases to add.

        Returns:
            The new table; this one is unchanged.

        Raises:
            ValueError: a role or alias is already in this table (a table never redefines one).

        Examples:
            >>> table = BUILTIN_ROLES.extended(Role("edge", "an edge map", lambda view: []))
            >>> "edge" in table, "edge" in BUILTIN_ROLES
            (True, False)
        """
        return RoleTable([*self._roles.values(), *roles], {**self._aliases, **_new(self._aliases, aliases or {})})

    def known(self, wanted: str) -> bool:
        """Whether ``wanted`` is a role or a family of roles of this table (aliases not included).

        Args:
            wanted: a role name or family.

        Returns:
            True when some role matches it.

        Examples:
            >>> BUILTIN_ROLES.known("downsample"), BUILTIN_ROLES.known("conv3x3")
            (True, False)
        """
        return any(role_matches(role, wanted) for role in self._roles)

    def matching(self, wanted: str | None) -> list[Role]:
        """The roles a ``kind`` (a role or a family; None for all) asks for, in table order.

        Args:
            wanted: a role name, a family, or None.

        Returns:
            The matching roles (none for an unknown name or an alias: resolve aliases first).

        Examples:
            >>> [r.name for r in BUILTIN_ROLES.matching("neck")]
            ['neck.level', 'neck.merge']
        """
        return [role for role in self._roles.values() if wanted is None or role_matches(role.name, wanted)]

    def check(self, kind: str) -> None:
        """Refuse a ``kind`` that is neither a role, a family nor an alias of this table.

        Args:
            kind: what a user asked for (``--kind``, ``at:``).

        Raises:
            UnknownNameError: with the closest names and a hint listing them all.

        Examples:
            >>> BUILTIN_ROLES.check("residul")
            Traceback (most recent call last):
            ...
            plugsurgeon.errors.UnknownNameError: unknown site role 'residul'; did you mean 'residual.output', 'residual.branch'?
        """
        if self.known(kind) or kind in self._aliases:
            return
        suggestion = did_you_mean(kind, list(self._roles) + list(self._aliases))
        raise UnknownNameError(
            f"unknown site role '{kind}'" + (f"; {suggestion}" if suggestion else ""),
            hint=f"roles are {', '.join(self._roles)} (and the aliases {', '.join(self._aliases)})",
        )

    def families(self) -> list[str]:
        """Role families: the prefixes of dotted roles, sorted; a family means every one of its variants.

        Returns:
            The family names.

        Examples:
            >>> BUILTIN_ROLES.families()
            ['downsample', 'neck', 'residual']
        """
        return sorted({role.family for role in self._roles.values() if "." in role.name})

    def descriptions(self) -> dict[str, str]:
        """Role name -> description, in table order (what ``ps.ROLES`` shows).

        Returns:
            A new dict.

        Examples:
            >>> BUILTIN_ROLES.descriptions()["upsample"][:29]
            'a node that enlarges a featur'
        """
        return {name: role.description for name, role in self._roles.items()}

    def placement(self, name: str) -> Placement:
        """Where an edit at a site of role ``name`` goes; the default placement for a role not in the table.

        Args:
            name: a role name (a site's ``role``).

        Returns:
            The role's ``Placement``.

        Examples:
            >>> BUILTIN_ROLES.placement("residual.branch").outermost_first
            True
        """
        role = self._roles.get(name)
        return role.placement if role is not None else Placement()

    def markdown(self) -> str:
        """The table as Markdown: role, what it is, an example site (docs/roles.md holds this verbatim).

        Returns:
            A Markdown table, one row per role, ending with a newline.

        Examples:
            >>> print(BUILTIN_ROLES.markdown().splitlines()[2][:60])
            | `residual.branch` | end of a residual branch (the body, no
        """
        rows = ["| role | what it is | e.g. |", "|---|---|---|"]
        for role in self._roles.values():
            example = f"`{role.example.path}` in {role.example.model}" if role.example else ""
            description = role.description.replace("|", "\\|")
            rows.append(f"| `{role.name}` | {description} | {example} |")
        return "\n".join(rows) + "\n"


def _new(have: Mapping[str, Alias], adding: Mapping[str, Alias]) -> dict[str, Alias]:
    taken = sorted(set(have) & set(adding))
    if taken:
        raise ValueError(f"aliases {taken} are already in the table")
    return dict(adding)


@dataclass(frozen=True)
class _Lazy:
    """A built-in locator named as ``module:function``, imported on its first call: the table loads
    without torch. (A reference by name, not an import: the locators import ``Site``, which imports
    this table, and the package's import graph stays acyclic.)"""

    target: str

    def __call__(self, views: Any) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)(views)


def _builtin(name: str) -> _Lazy:
    return _Lazy(f"plugsurgeon.sites.locators:{name}")


_RESNET50 = "resnet50"
_FPN_DETECTOR = "fasterrcnn_resnet50_fpn"

# The rules behind each role, with an example per architecture family: docs/roles.md.
BUILTIN_ROLES = RoleTable(
    [
        Role("residual.branch",
             "end of a residual branch (the body, not the shortcut), before the add (the SE/CBAM slot)",
             _builtin("residual_branch_sites"), placement=Placement(outermost_first=True),
             example=Example(_RESNET50, "layer1.0.bn3")),
        Role("residual.output",
             "output of a residual block, after the add and its activation",
             _builtin("residual_output_sites"), example=Example(_RESNET50, "layer1.0.relu")),
        Role("conv",
             "a convolution module (filter with kernel, stride, groups, depthwise)",
             _builtin("conv_sites"), example=Example(_RESNET50, "layer1.0.conv2")),
        Role("downsample.pool",
             "max/avg pooling with stride > 1",
             _builtin("downsample_pool_sites"), example=Example(_RESNET50, "maxpool")),
        Role("downsample.conv",
             "strided convolution on the main path",
             _builtin("downsample_conv_sites"), example=Example(_RESNET50, "layer2.0.conv2")),
        Role("downsample.shortcut",
             "strided projection on a residual shortcut",
             _builtin("downsample_shortcut_sites"), example=Example(_RESNET50, "layer2.0.downsample.0")),
        Role("downsample.unit",
             "end of a strided conv's unit on the main path (the conv, then its norm and activation when it has them): "
             "a plugin here takes over the conv's stride, and the conv runs at stride 1 (where anti-aliasing blurs)",
             _builtin("downsample_unit_sites"), example=Example(_RESNET50, "layer2.0.relu")),
        Role("stage",
             "end of each stage of the feature extractor: its last map at each stride (stage = log2 of the cumulative stride, C2..C5)",
             _builtin("model_stage_sites"), model_wide=True, example=Example(_RESNET50, "layer2.3.relu")),
        Role("backbone",
             "the feature extractor's last map: where a pooling head, a neck or a decoder starts (never inside them)",
             _builtin("model_backbone_sites"), model_wide=True, example=Example(_RESNET50, "layer4.2.relu")),
        Role("neck.level",
             "an output level of a feature pyramid (FPN, PAN, U-Net decoder): its map at one size, the other levels as extra",
             _builtin("model_neck_level_sites"), model_wide=True, example=Example(_FPN_DETECTOR, "backbone.fpn.layer_blocks.3.0")),
        Role("neck.merge",
             "a top-down merge of a pyramid or decoder (upsample + add or concat): the lateral input, the upsampled input as extra",
             _builtin("neck_merge_sites"), placement=Placement(where_passed_in=True),
             example=Example(_FPN_DETECTOR, "backbone.fpn.inner_blocks.2.0")),
        Role("upsample",
             "a node that enlarges a feature map (interpolate, Upsample, transposed conv; not a 1x1 broadcast)",
             _builtin("upsample_sites"), example=Example(_FPN_DETECTOR, "backbone.fpn:interpolate")),
    ],
    aliases={"conv3x3": ("conv", {"kernel": 3}), "depthwise": ("conv", {"depthwise": True})},
)
"""The roles plugsurgeon knows. Extend it with ``BUILTIN_ROLES.extended(Role(...))``; never mutated."""

_ACTIVE: ContextVar[RoleTable] = ContextVar("plugsurgeon_active_roles")


def active_roles() -> RoleTable:
    """The table in use here: ``BUILTIN_ROLES``, or the one a surrounding ``use_roles`` block set.

    Returns:
        The active ``RoleTable``.

    Examples:
        >>> active_roles() is BUILTIN_ROLES
        True
    """
    return _ACTIVE.get(BUILTIN_ROLES)


@contextmanager
def use_roles(table: RoleTable) -> Iterator[RoleTable]:
    """Make ``table`` the active role table inside a ``with`` block (this thread or task only).

    What takes a table as an argument (``find_sites``, ``locate``, ``check_role``) needs no block; inside
    it, recipe validation (``at:``), plugin registration (declared roles), planning and ``ps.ROLES``
    see the table too. The previous table is restored on leaving, on an error as well.

    Args:
        table: the roles to use, e.g. ``BUILTIN_ROLES.extended(my_role)``.

    Yields:
        The table.

    Raises:
        TypeError: ``table`` is not a ``RoleTable``.

    Examples:
        >>> table = BUILTIN_ROLES.extended(Role("edge", "an edge map", lambda view: []))
        >>> with use_roles(table):
        ...     "edge" in active_roles()
        True
    """
    if not isinstance(table, RoleTable):
        raise TypeError(f"use_roles takes a RoleTable, not {type(table).__name__}")
    token = _ACTIVE.set(table)
    try:
        yield table
    finally:
        _ACTIVE.reset(token)


def known_role(wanted: str) -> bool:
    """Whether ``wanted`` is a role or a family of the active table (see ``RoleTable.known``).

    Args:
        wanted: a role name or family.

    Returns:
        True when some active role matches it.

    Examples:
        >>> known_role("neck"), known_role("conv3x3")
        (True, False)
    """
    return active_roles().known(wanted)


def placement_of(role: str) -> Placement:
    """Where an edit at a site of ``role`` goes, from the active table (see ``RoleTable.placement``).

    Args:
        role: a site's role name.

    Returns:
        The role's ``Placement``.

    Examples:
        >>> placement_of("neck.merge").where_passed_in
        True
    """
    return active_roles().placement(role)


class _ActiveView(Mapping[str, Any]):
    """A read-only mapping that reads the active table each time it is used."""

    def __init__(self, read: Callable[[RoleTable], Mapping[str, Any]]) -> None:
        self._read = read

    def __getitem__(self, name: str) -> Any:
        return self._read(active_roles())[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read(active_roles()))

    def __len__(self) -> int:
        return len(self._read(active_roles()))

    def __repr__(self) -> str:
        return repr(dict(self._read(active_roles())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self._read(active_roles())),))


ROLES: Mapping[str, str] = _ActiveView(RoleTable.descriptions)
"""Role name -> description, read from the active table (``BUILTIN_ROLES`` unless ``use_roles``); read-only."""

ALIASES: Mapping[str, Alias] = _ActiveView(lambda table: table.aliases)
"""Alias -> (role or family, ``where:`` selectors) of the active table, e.g. ``conv3x3`` -> ``("conv", {"kernel": 3})``."""
