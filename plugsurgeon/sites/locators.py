"""One pure function per role: a GraphView in, the sites of that role out (the table of roles,
plugsurgeon/sites/roles.py, names which function finds which role).

A model-wide role (``backbone``, ``stage``: one extractor per model) has a function of every traced
part's view instead, returning (part index, site) pairs.

Sites come from structure and shapes: an add whose inputs share a fork, a conv's kernel and stride,
a drop in spatial size, an upsample feeding a merge. Nothing here knows a model family. The rules are
written out, with an example per architecture family, in docs/roles.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, cast

import torch
import torch.fx as fx
from torch import nn

from plugsurgeon.graph.shapes import flat_tensors
from plugsurgeon.sites.graphview import GraphView, bit_positions
from plugsurgeon.sites.levels_across import levels_read_across_parts
from plugsurgeon.sites.merge_inputs import readable_source
from plugsurgeon.sites.site import Site


def make_site(view: GraphView, role: str, node: fx.Node, *, extra: Iterable[fx.Node] = (), **fields) -> Site:
    scopes = tuple(view.part.scopes(node))
    shape = view.shape(node) or ()
    inputs = view.tensor_inputs(node)
    in_shape = view.shape(inputs[0]) if inputs else shape
    conv = view.conv(node)
    extra = tuple(extra)
    return Site(
        role=role,
        path=view.display_path(node),
        part=view.part.path,
        node=node.name,
        owner=view.part.absolute(scopes[0].owner),
        scopes=scopes,
        shape=shape,
        in_channels=int(in_shape[1]) if in_shape and len(in_shape) > 1 else 0,
        channels=int(shape[1]) if len(shape) > 1 else 0,
        total_stride=view.total_stride(node),
        target=view.part.absolute(str(node.target)) if node.op == "call_module" else None,
        kernel=tuple(conv.kernel_size) if conv is not None else None,
        groups=conv.groups if conv is not None else 1,
        dilation=tuple(conv.dilation) if conv is not None else None,
        extra=tuple(n.name for n in extra),
        extra_shapes=tuple(view.shape(n) or () for n in extra),
        extra_scopes=tuple(tuple(view.part.scopes(n)) for n in extra),
        order=view.position[node],
        **fields,
    )


def _dims(view: GraphView, node: fx.Node) -> tuple[int, ...]:
    """The shape of a node the caller knows holds a tensor (a map, an input of a merge)."""
    shape = view.shape(node)
    assert shape is not None, f"{node.name} holds no tensor"
    return shape


def _conv_of(view: GraphView, node: fx.Node) -> nn.Conv2d:
    """The conv module a node the caller knows to be a conv call runs."""
    conv = view.conv(node)
    assert conv is not None, f"{node.name} calls no conv"
    return conv


def _spatial_4d(view: GraphView, node: fx.Node) -> bool:
    shape = view.shape(node)
    return shape is not None and len(shape) == 4 and view.nchw(node)


def _is_map(view: GraphView, node: fx.Node) -> bool:
    """An N,C,H,W feature map with more than one pixel: what a spatial plugin can take."""
    return _spatial_4d(view, node) and _dims(view, node)[2] * _dims(view, node)[3] > 1


def _cached(view: GraphView, key: str, compute: Callable[[], object]):
    if key not in view.cache:
        view.cache[key] = compute()
    return view.cache[key]


# -- residual -----------------------------------------------------------------------------------------
class Merge(NamedTuple):
    add: fx.Node  # the add that closes the block (the last add of a sum of several branches)
    branch: fx.Node  # end of the block body: the add's input that is not the shortcut
    skip: fx.Node  # the shortcut: the fork itself, or a linear projection of it
    fork: fx.Node  # the value the block reads: both sides start here


def residual_merges(view: GraphView) -> list[Merge]:
    """Every residual merge on N,C,H,W maps, in graph order.

    A residual merge is a same-shape add (or a sum of several same-shape branches, taken as one)
    whose operands all start from one fork value, where some operand is a *shortcut* (the fork
    itself, or a chain of linear one-input layers from it: conv, pooling, norm without activation,
    dropout) and some other operand is a *body* (anything else: it has a nonlinearity or a merge).
    A sum of only linear branches counts when one of them is the identity (possibly normalised):
    the RepVGG-style block "3x3 + 1x1 + BN(x)". Rejected: a sum of two bodies (a multi-resolution
    fusion, a NAS cell's combination), a sum of projections without an identity (a multi-branch
    conv), operands that are different pieces of one split (Res2Net's hierarchical adds), and a
    body that carries an upsampled map to the add other than through a multiplicative gate (a
    feature-pyramid merge).
    """
    return _cached(view, "residual_merges", lambda: _find_residual_merges(view))


def _candidate_add(view: GraphView, node: fx.Node) -> bool:
    if not view.is_add(node) or not _spatial_4d(view, node):
        return False
    inputs = view.tensor_inputs(node)
    return len(inputs) == 2 and view.shape(inputs[0]) == view.shape(inputs[1]) == view.shape(node)


def _inner_add(view: GraphView, node: fx.Node) -> bool:
    """An add whose only use is a further add of the same shape: one term of a longer sum."""
    users = list(node.users)
    return _candidate_add(view, node) and len(users) == 1 and _candidate_add(view, users[0])


def _sum_leaves(view: GraphView, node: fx.Node) -> list[fx.Node]:
    leaves = []
    for operand in view.tensor_inputs(node):
        leaves.extend(_sum_leaves(view, operand) if _inner_add(view, operand) else [operand])
    return leaves


def _find_residual_merges(view: GraphView) -> list[Merge]:
    merges = []
    for node in view.nodes:
        if not _candidate_add(view, node) or _inner_add(view, node):
            continue
        merge = _as_residual(view, node)
        if merge is not None:
            merges.append(merge)
    return merges


def _as_residual(view: GraphView, add: fx.Node) -> Merge | None:
    leaves = _sum_leaves(view, add)
    fork = view.latest_common_ancestor(*leaves)
    if fork is None or view.shape(fork) is None:
        return None  # no common value (the fork is a split's tuple: the operands are different pieces)
    memo: dict = {}
    kinds = {leaf: _shortcut_kind(_linear_from(view, leaf, fork, memo)) for leaf in leaves}
    bodies = [leaf for leaf in leaves if kinds[leaf] is None]
    if not _shortcut_and_body(kinds, bodies):
        return None
    branch, skip = _branch_and_skip(view, add, kinds, bodies)
    if branch is fork or not _plain_body(view, fork, skip, bodies or [branch], kinds):
        return None
    return Merge(add, branch, skip, fork)


def _shortcut_and_body(kinds: dict, bodies: list) -> bool:
    if bodies:
        return len(bodies) < len(kinds)
    # Only linear branches: a merge around an identity branch (RepVGG), not a multi-branch conv.
    identities = sum(1 for kind in kinds.values() if kind == "identity")
    return 0 < identities < len(kinds)


def _branch_and_skip(view: GraphView, add: fx.Node, kinds: dict, bodies: list) -> tuple[fx.Node, fx.Node]:
    operands = view.tensor_inputs(add)
    shortcuts = [x for x in operands if kinds.get(x) is not None and (bodies or kinds[x] == "identity")]
    if len(shortcuts) == 1:
        skip = shortcuts[0]
        return (operands[1] if skip is operands[0] else operands[0]), skip
    # The shortcut is one term inside a longer sum: the later operand ends the body.
    branch, skip = sorted(operands, key=view.position.__getitem__, reverse=True)
    return branch, skip


def _plain_body(view: GraphView, fork: fx.Node, skip: fx.Node, bodies: list, kinds: dict) -> bool:
    if any(_carries_upsample(view, fork, body) for body in bodies):
        return False  # a feature-pyramid merge
    if any(view.is_slice(n) for n in view.path_between(fork, skip)) and not all(_reads_whole(view, fork, b) for b in bodies):
        return False  # the shortcut is a slice of the fork, and the body computes from other slices
    # A pre-activated projection is a shortcut only around a body of its own (not a NAS cell's long skip).
    return "preprojection" not in kinds.values() or all(_computed_from(view, fork, b) for b in bodies)


def _computed_from(view: GraphView, fork: fx.Node, end: fx.Node) -> bool:
    """Every value on the way from ``fork`` to ``end`` is computed from the fork alone."""
    region = view.ancestors[end] & view.descendants[fork]
    return all((region >> view.position[x]) & 1 for n in view.path_between(fork, end) if n is not fork
               for x in view.tensor_inputs(n))


def _reads_whole(view: GraphView, fork: fx.Node, end: fx.Node) -> bool:
    """Some layer on the way from ``fork`` to ``end`` reads all of the fork, not a slice of it."""
    return any(fork in n.all_input_nodes and not view.is_slice(n)
               for n in view.path_between(fork, end) if n is not fork)


def _shortcut_kind(kind: str | None) -> str | None:
    return None if kind == "preact" else kind  # "preprojection" stays: a projection of the pre-activated fork


def _linear_from(view: GraphView, node: fx.Node, fork: fx.Node, memo: dict) -> str | None:
    """"identity" when ``node`` is ``fork`` up to per-element linear layers, "projection" when it is a
    linear map of it (conv, pooling; sums of such) or of its pre-activation (norm and activation
    first, as DPN's projection shortcut: BN-ReLU-conv), None otherwise. "preact" is a pre-activated
    fork on its way to a projection: no shortcut by itself."""
    if node is fork:
        return "identity"
    if node in memo:
        return memo[node]
    memo[node] = None
    if not (view.descendants[fork] >> view.position[node]) & 1:
        return None
    inputs = view.tensor_inputs(node)
    if view.is_add(node) and len(inputs) == 2:
        kinds = [_linear_from(view, x, fork, memo) for x in inputs]
        memo[node] = "projection" if all(k in ("identity", "projection") for k in kinds) else None
        return memo[node]
    if len(inputs) != 1:
        return None
    kind = "activation" if view.is_activation(node) else view.linear_kind(node)
    below = _linear_from(view, inputs[0], fork, memo) if kind is not None else None
    memo[node] = _chain_kind(below, kind)
    return memo[node]


def _chain_kind(below: str | None, op: str | None) -> str | None:
    if below is None or op is None:
        return None
    if op == "activation":
        return "preact" if below in ("identity", "preact") else None
    if below in ("preact", "preprojection"):
        return "preprojection" if op == "mixing" or below == "preprojection" else "preact"
    if op == "mixing" or below == "projection":
        return "projection"
    return below


def _carries_upsample(view: GraphView, fork: fx.Node, end: fx.Node) -> bool:
    """Whether a resized map (an upsample, or a resize to a given size that keeps it) reaches ``end``
    from ``fork`` other than through a multiplicative gate (GhostNetV2's attention resizes a gate that
    multiplies the branch; an FPN adds the resized map)."""
    region = set(view.path_between(fork, end))
    return any(view.is_resize(n) and _reaches_ungated(view, n, end, region) for n in region)


def _reaches_ungated(view: GraphView, start: fx.Node, end: fx.Node, region: set[fx.Node]) -> bool:
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        if node is end:
            return True
        for user in node.users:
            if user in region and user not in seen and not _gates(view, user, start):
                seen.add(user)
                stack.append(user)
    return False


def _gates(view: GraphView, node: fx.Node, source: fx.Node) -> bool:
    """``node`` multiplies a map of its own shape by a value computed from ``source``: a gate."""
    if not view.is_mul(node):
        return False
    return any(view.shape(x) == view.shape(node) and not (view.descendants[source] >> view.position[x]) & 1
               for x in view.tensor_inputs(node))


def channels_last_merges(view: GraphView) -> list[fx.Node]:
    """Adds that close a residual block on N,H,W,C maps (channels-last code: MambaOut, ConvNeXt blocks
    written with permutes): the same rules as ``residual_merges``, on the other layout. No role takes
    them (plugins read N,C,H,W maps); they say why a model shows no residual sites."""
    found = []
    for node in view.nodes:
        inputs = view.tensor_inputs(node)
        if (not view.is_add(node) or view.layout(node) != ("N", "H", "W", "C") or len(inputs) != 2
                or not view.shape(inputs[0]) == view.shape(inputs[1]) == view.shape(node)):
            continue
        if _as_residual(view, node) is not None:
            found.append(node)
    return found


def block_output(view: GraphView, add: fx.Node) -> fx.Node:
    """The add itself, or the activation that follows it when that is its only user."""
    users = list(add.users)
    if len(users) == 1 and view.is_activation(users[0]) and view.tensor_inputs(users[0]) == [add]:
        return users[0]
    return add


def residual_branch_sites(view: GraphView) -> list[Site]:
    """``residual.branch``: the body operand of each residual merge's add."""
    return [make_site(view, "residual.branch", merge.branch) for merge in residual_merges(view)]


def residual_output_sites(view: GraphView) -> list[Site]:
    """``residual.output``: each residual merge's add, or the activation after it (``block_output``)."""
    return [make_site(view, "residual.output", block_output(view, merge.add)) for merge in residual_merges(view)]


# -- convolutions and downsampling ------------------------------------------------------------------
def _residual_paths(view: GraphView) -> tuple[set[fx.Node], set[fx.Node]]:
    """(branch nodes, shortcut nodes): what lies strictly after the fork on each side of a residual merge."""
    return _cached(view, "residual_paths", lambda: _find_residual_paths(view))


def _find_residual_paths(view: GraphView) -> tuple[set[fx.Node], set[fx.Node]]:
    branches: set[fx.Node] = set()
    shortcuts: set[fx.Node] = set()
    for merge in residual_merges(view):
        skip_side = set(view.path_between(merge.fork, merge.skip)) - {merge.fork}
        shortcuts.update(skip_side)
        for operand in view.tensor_inputs(merge.add):
            if operand is not merge.skip:
                branches.update(n for n in view.path_between(merge.fork, operand) if n is not merge.fork and n not in skip_side)
    return branches, shortcuts


def conv_sites(view: GraphView) -> list[Site]:
    """``conv``: every conv module call on N,C,H,W maps, with its stride and whether it lies in a residual branch."""
    in_branch, _shortcut = _residual_paths(view)
    return [
        make_site(view, "conv", node, stride=int(_conv_of(view, node).stride[0]), in_residual=node in in_branch)
        for node in view.nodes
        if view.conv(node) is not None and _spatial_4d(view, node)
    ]


def _strided_convs(view: GraphView) -> list[fx.Node]:
    """Conv nodes with a stride > 1 on N,C,H,W maps, in graph order."""
    return _cached(view, "strided_convs", lambda: [
        n for n in view.nodes if _spatial_4d(view, n) and (c := view.conv(n)) is not None and max(c.stride) > 1])


def _strided_conv_sites(view: GraphView, role: str, on_shortcut: bool) -> list[Site]:
    in_branch, shortcut = _residual_paths(view)
    return [make_site(view, role, node, stride=int(_conv_of(view, node).stride[0]), in_residual=node in in_branch)
            for node in _strided_convs(view) if (node in shortcut) == on_shortcut]


def downsample_conv_sites(view: GraphView) -> list[Site]:
    """``downsample.conv``: each strided conv on the main path (not on a residual shortcut)."""
    return _strided_conv_sites(view, "downsample.conv", on_shortcut=False)


def downsample_shortcut_sites(view: GraphView) -> list[Site]:
    """``downsample.shortcut``: each strided conv on the shortcut side of a residual merge."""
    return _strided_conv_sites(view, "downsample.shortcut", on_shortcut=True)


def downsample_pool_sites(view: GraphView) -> list[Site]:
    """``downsample.pool``: each pooling with a stride > 1 whose output is more than one pixel high."""
    strided = set(_strided_convs(view))
    return [make_site(view, "downsample.pool", node, stride=view.pool_stride(node)) for node in view.nodes
            if _spatial_4d(view, node) and node not in strided and view.pool_stride(node) > 1 and _dims(view, node)[2] > 1]


def downsample_unit_sites(view: GraphView) -> list[Site]:
    """The end of each strided conv's unit on the main path, for a plugin that takes over its stride.

    A unit is the conv, then (each the only reader of the one before, at the same shape) per-element
    layers such as a norm, and its activation if it has one: conv -> BN -> ReLU ends at the ReLU; a
    conv whose BN feeds the next conv (ShuffleNet's depthwise downsampling) ends at the BN; a conv read
    by several layers ends at the conv. The site carries the conv (``destride``) and the map's shape
    with the conv at stride 1: what the unit's layers compute when surgery moves the stride to the end.
    Projection shortcuts are ``downsample.shortcut``. A conv that runs more than once is a site per
    call, which planning refuses as unfit (moving the stride changes every call).
    """
    in_branch, shortcut = _residual_paths(view)
    sites = []
    for node in view.nodes:
        conv = view.conv(node)
        if conv is None or max(conv.stride) <= 1 or node in shortcut or not _spatial_4d(view, node):
            continue
        in_shape = _dims(view, view.tensor_inputs(node)[0])
        end = _unit_end(view, node)
        site = make_site(view, "downsample.unit", end, stride=int(conv.stride[0]), in_residual=node in in_branch,
                         destride=node.name, destride_shape=(*_dims(view, end)[:2], *_stride_one_size(conv, in_shape[2:])))
        # Selectors read the unit's conv: `where: {kernel: 3}` or `depthwise: true` pick units by it.
        sites.append(replace(site, in_channels=int(in_shape[1]), kernel=tuple(conv.kernel_size), groups=conv.groups,
                             dilation=tuple(conv.dilation)))
    return sites


def _unit_end(view: GraphView, conv: fx.Node) -> fx.Node:
    node = conv
    while True:
        users = list(node.users)
        if len(users) != 1 or users[0] not in view.position or view.tensor_inputs(users[0]) != [node]:
            return node
        user = users[0]
        if view.shape(user) != view.shape(node):
            return node
        if view.is_activation(user):
            return user
        # Module and method calls only: a per-element function could be a shift or a scale by a size-dependent value.
        # A LayerNorm normalises over its fixed trailing sizes (W, for a plain one on N,C,H,W), so it may not
        # run on the larger map: the unit ends before it.
        if user.op == "call_function" or view.linear_kind(user) != "pointwise" or isinstance(view.module(user), nn.LayerNorm):
            return node
        node = user


def _stride_one_size(conv: nn.Conv2d, spatial: tuple[int, ...]) -> tuple[int, ...]:
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    return tuple(int(spatial[i]) + 2 * int(padding[i]) - int(conv.dilation[i]) * (int(conv.kernel_size[i]) - 1) for i in range(2))


# -- anatomy: the extractor, its end, the neck ------------------------------------------------------
@dataclass
class Anatomy:
    """What a traced part is made of. ``end`` is the extractor's last feature map (the backbone site);
    the extractor is every node ``end`` depends on. ``rule`` says which evidence found the end:
    0 a head that pools the map away, 1 a feature pyramid, 2 an upsampling head, 3 the deepest map."""

    end: fx.Node | None = None
    rule: int = 3
    extractor: int = 0  # bit set of positions
    top_down: list[tuple[fx.Node, fx.Node, fx.Node]] = field(default_factory=list)  # (merge, lateral, upsample)
    bottom_up: list[tuple[fx.Node, fx.Node, fx.Node]] = field(default_factory=list)  # (merge, lateral, downsample)
    top: fx.Node | None = None  # what the first top-down upsample reads, when it is no merge
    levels: list[fx.Node] = field(default_factory=list)

    def in_extractor(self, view: GraphView, node: fx.Node) -> bool:
        return bool((self.extractor >> view.position[node]) & 1)


def anatomy(view: GraphView) -> Anatomy:
    return _cached(view, "anatomy", lambda: _find_anatomy(view))


def _fed_several_maps(view: GraphView) -> bool:
    return sum(1 for t in flat_tensors(view.part.example_inputs) if t.dim() == 4) > 1


def _find_anatomy(view: GraphView) -> Anatomy:
    found = Anatomy()
    top_down = _resampled_merges(view, view.is_resize)
    if _fed_several_maps(view):
        # A part fed maps of an extractor traced apart (a decoder, a head on pyramid levels): no
        # extractor of its own, but a neck if it merges them.
        return _neck(view, found, top_down)
    head = _pooling_head(view)
    if head is not None:
        found.rule = 0
    elif top_down:
        head, found.rule = top_down[0][2], 1
    else:
        head = _upsampling_head(view)
        found.rule = 2 if head is not None else 3
    end = _extractor_end(view, head, pooling=found.rule == 0) if head is not None else _deepest_map(view)
    if end is not None and found.rule == 1:
        end = _before_top_run(view, end)
    if end is None or end.op == "placeholder":
        return Anatomy()
    found.end, found.extractor = end, view.ancestors[end]
    return _neck(view, found, top_down)


def _neck(view: GraphView, found: Anatomy, top_down: list) -> Anatomy:
    outside = lambda merge: not found.in_extractor(view, merge[0])  # noqa: E731
    found.top_down = [m for m in top_down if outside(m)]
    found.bottom_up = [m for m in _resampled_merges(view, view.is_downsample) if outside(m)]
    if found.top_down:
        first_up = found.top_down[0][2]
        source = _one_input(view, first_up)
        # The top of the top-down path is a level computed here: not a merge, not a map handed in.
        found.top = source if source is not None and not view.is_merge(source) and source.op != "placeholder" else None
    read = _head_reads(view, found)
    found.levels = read if read else _levels(view, found)
    return found


def _head_reads(view: GraphView, found: Anatomy) -> list[fx.Node]:
    """The maps a head reads side by side: the last module call (or node of the root's code, no merge,
    no resize) that reads N,C,H,W maps of several strides from outside, none of the extractor's and at
    least one computed by the neck (a detection head reading P3, P4, P5; a segmentation head fusing two).
    Those maps, in graph order, are the pyramid's levels; an empty list when no node reads them so."""
    neck = 0
    for merge, _lateral, _resampling in found.top_down + found.bottom_up:
        neck |= view.descendants[merge]
    if not neck:
        return []
    seen: set[str] = set()
    for node in reversed(view.nodes):
        call = view.outermost_call(node)
        if call is not None and call in seen:
            continue
        if call is not None:  # a head's module call: what it reads from outside (its first node may be a resize)
            seen.add(call)
            unit = _unit_nodes(view, node)
            maps = list(dict.fromkeys(x for n in unit for x in view.tensor_inputs(n) if x not in unit and _is_map(view, x)))
        elif view.is_merge(node) or view.is_resize(node):
            continue
        else:
            maps = list(dict.fromkeys(x for x in view.tensor_inputs(node) if _is_map(view, x)))
        # Levels are the neck's outputs: none is an extractor map, here or handed in (a decoder block reading
        # its skip is no head).
        if (len({view.total_stride(x) for x in maps}) > 1 and any((neck >> view.position[x]) & 1 for x in maps)
                and not any(found.in_extractor(view, x) or x.op == "placeholder" for x in maps)):
            return sorted(maps, key=view.position.__getitem__)
    return []


def _one_input(view: GraphView, node: fx.Node) -> fx.Node | None:
    inputs = view.tensor_inputs(node)
    return inputs[0] if inputs else None


def _pooling_head(view: GraphView) -> fx.Node | None:
    """The node that pools the deepest map away for good: its output has no spatial extent (1x1, or
    a vector per image) and nothing after it is a map again (an SE squeeze comes back; a classifier
    does not). A reshape that keeps positions as an axis (a detection head's N,C,H*W) is no pooling."""
    maps = 0
    for node in view.nodes:
        if _is_map(view, node):
            maps |= 1 << view.position[node]
    best, deepest = None, 0
    for node in view.nodes:
        shape = view.shape(node)
        if node.op == "placeholder" or shape is None or view.descendants[node] & maps:
            continue
        pooled = len(shape) <= 2 or (len(shape) == 4 and view.nchw(node) and shape[2] * shape[3] == 1)
        sources = [x for x in view.tensor_inputs(node) if _is_map(view, x)]
        if pooled and len(sources) == 1 and view.total_stride(sources[0]) >= deepest:
            best, deepest = node, view.total_stride(sources[0])
    return best


def _resampled_merges(view: GraphView, resampled: Callable[[fx.Node], bool]) -> list[tuple[fx.Node, fx.Node, fx.Node]]:
    """(merge, lateral, resampling node) for every add/cat of one resized map with same-size maps
    that were not resized: a top-down merge when the resizing enlarges, bottom-up when it shrinks.
    Residual merges are not among them."""
    residual = {m.add for m in residual_merges(view)}
    found = []
    for node in view.nodes:
        if not view.is_merge(node) or not _spatial_4d(view, node) or node in residual or _inner_add(view, node):
            continue
        inputs = [x for x in view.tensor_inputs(node) if _spatial_4d(view, x)]
        if len(inputs) < 2 or len({_dims(view, x)[2:] for x in inputs}) != 1:
            continue
        sources = [_resampled_source(view, x, resampled) for x in inputs]
        resized = [s for s in sources if s is not None]
        laterals = [x for x, s in zip(inputs, sources, strict=True) if s is None]
        if len(resized) == 1 and laterals:
            found.append((node, laterals[0], resized[0]))
    return found


def _resampled_source(view: GraphView, node: fx.Node, resampled: Callable[[fx.Node], bool]) -> fx.Node | None:
    """The resizing node ``node`` comes from through one-input layers at its size (conv, norm, act), if any."""
    size = _dims(view, node)[2:]
    while True:
        if resampled(node):
            return node
        inputs = view.tensor_inputs(node)
        if len(inputs) > 1:
            # Through a gate to the map it scales (MAnet's MFAB multiplies the upsampled map by
            # attention computed from it and the skip, then concatenates the skip).
            maps = [x for x in inputs if view.shape(x) is not None and len(_dims(view, x)) == 4 and tuple(_dims(view, x)[2:]) == tuple(size)]
            broadcast = all(x in maps or (view.shape(x) is not None and math.prod(_dims(view, x)[2:]) == 1) for x in inputs)
            inputs = maps if len(maps) == 1 and view.is_mul(node) and broadcast else inputs
        if len(inputs) != 1 or view.shape(inputs[0]) is None or tuple(_dims(view, inputs[0])[2:]) != tuple(size):
            return None
        node = inputs[0]


def _upsampling_head(view: GraphView) -> fx.Node | None:
    """The first upsample that leads to the outputs on its own, merging nothing else on the way
    (a segmentation head resizing its logits); an upsample inside a block feeds a merge or a gate."""
    for node in view.nodes:
        if not view.is_upsample(node):
            continue
        below = view.descendants[node]
        if all(((below >> view.position[x]) & 1) for d in bit_positions(below) for x in view.tensor_inputs(view.nodes[d])
               if view.nodes[d] is not node):
            return node
    return None


def _extractor_end(view: GraphView, head: fx.Node, *, pooling: bool) -> fx.Node | None:
    """The extractor's last map, from the node that starts the head.

    The head is the outermost module call that runs its first node: a classifier head with its own
    1x1 conv, an FPN, a decoder. When the root's own code resizes (a segmentation model resizing its
    logits), the head is the call that computes what is resized (DeepLab's classifier); when the
    root's own code pools, nothing more is head (ShuffleNet's conv5 is the extractor's, as
    EfficientNet's last 1x1 conv). When the head's call does not downsample on the way from its
    inputs to the head's first node, the extractor ends at the deepest map the call reads.
    Otherwise (the call is a stage of the extractor itself) it ends at what the first node reads.
    """
    source = _one_input(view, head)
    if source is None:
        return None
    for node in (head,) if pooling else (head, source):
        call = view.outermost_call(node)
        if call is None:
            continue
        end = _call_input(view, call, head)
        return _pass_back(view, end if end is not None else source)
    return _pass_back(view, source)


def _before_top_run(view: GraphView, end: fx.Node) -> fx.Node:
    """Back from what the top-down path reads, over the neck's own layers at the top of the pyramid.

    A neck often processes the deepest map before it upsamples it (YOLOv5's 1x1 conv, RT-DETR's
    projection and attention, YOLOv3's conv set), and hands the processed map to the head too (the top
    level, directly or through a bottom-up merge). Those layers are *plain* units: one map in, one
    out, at the same stride, merging no maps and pooling nothing (a residual stage, an SPP or a C2f
    block is the extractor's). The walk goes back over such units; when one of the maps it passes is
    also read by something else than the next unit of the run (the fork where the top level leaves for
    the head), the extractor ends at the map the run starts from. A run with no fork (a U-Net's middle
    block, read by the decoder alone) is the extractor's: nothing changes.
    """
    stride, node, forked = view.total_stride(end), end, False
    while True:
        unit = _unit_nodes(view, node)
        inputs = {x for n in unit for x in view.tensor_inputs(n) if x not in unit}
        if len(inputs) != 1 or not _plain_unit(view, unit, stride):
            break
        source = next(iter(inputs))
        if not _is_map(view, source) or view.total_stride(source) != stride or source.op == "placeholder":
            break
        forked = forked or len(node.users) > 1
        node = source
    return node if forked else end


def _unit_nodes(view: GraphView, node: fx.Node) -> set[fx.Node]:
    """The nodes of the outermost module call that ran ``node`` (just ``node`` for the root's own code)."""
    call = view.outermost_call(node)
    return {node} if call is None else _call_nodes(view, call)


def _call_nodes(view: GraphView, call: str) -> set[fx.Node]:
    """The nodes a module call's forward ran (``GraphView.within`` the call), indexed once per view."""
    calls = cast(dict[str, set[fx.Node]], _cached(view, "call_nodes", lambda: _nodes_by_call(view)))
    return calls.setdefault(call, set())


def _nodes_by_call(view: GraphView) -> dict[str, set[fx.Node]]:
    by_call: dict[str, set[fx.Node]] = {}
    for node in view.nodes:
        parts = view.frame(node).split(".")
        for end in range(1, len(parts) + 1):  # every call the node's frame is inside, itself included
            by_call.setdefault(".".join(parts[:end]), set()).add(node)
    return by_call


def _plain_unit(view: GraphView, unit: set[fx.Node], stride: int) -> bool:
    """No merge of maps, no pooling, no resampling: one map transformed layer by layer at one stride."""
    for n in unit:
        maps = [x for x in view.tensor_inputs(n) if _spatial_4d(view, x)]
        if (view.is_merge(n) or view.is_mul(n)) and len(maps) > 1:
            return False
        if view.pool_stride(n) or view.is_resize(n) or view.is_downsample(n) or view.is_pad(n):
            return False
        if _is_map(view, n) and view.total_stride(n) != stride:
            return False
    return True


def _call_input(view: GraphView, call: str, head: fx.Node) -> fx.Node | None:
    inside = [view.nodes[i] for i in bit_positions(view.ancestors[head]) if view.within(view.nodes[i], call)]
    inside_bits = sum(1 << view.position[n] for n in inside)
    upstream = view.ancestors[head]
    inputs = {x for n in inside for x in view.tensor_inputs(n)
              if not (inside_bits >> view.position[x]) & 1 and (upstream >> view.position[x]) & 1 and _is_map(view, x)}
    if not inputs:
        return None
    deepest = max(view.total_stride(x) for x in inputs)
    if any(_is_map(view, n) and view.total_stride(n) > deepest for n in inside if n is not head):
        return None
    return max((x for x in inputs if view.total_stride(x) == deepest), key=view.position.__getitem__)


def _pass_back(view: GraphView, node: fx.Node) -> fx.Node:
    """Past no-op layers (identity, dropout, copies) to the node that computed the value."""
    while True:
        no_op = isinstance(view.module(node), (nn.Identity, nn.Dropout, nn.Dropout2d)) or (
            node.op == "call_method" and node.target in ("contiguous", "clone"))
        inputs = view.tensor_inputs(node)
        if not no_op or len(inputs) != 1:
            return node
        node = inputs[0]


def _deepest_map(view: GraphView) -> fx.Node | None:
    maps = [n for n in view.nodes if n.op != "placeholder" and _is_map(view, n)]
    if not maps:
        return None
    deepest = max(view.total_stride(n) for n in maps)
    return [n for n in maps if view.total_stride(n) == deepest][-1]


# -- stages and the backbone ------------------------------------------------------------------------
def _cuts(view: GraphView, bits: int) -> list[fx.Node]:
    """Nodes of the set ``bits`` that every path inside it passes through: no edge between two of
    its nodes jumps over them in execution order (values that are no tensors do not count)."""
    cuts, reach = [], -1
    for position in bit_positions(bits):
        node = view.nodes[position]
        if reach <= position and node.op != "placeholder":
            cuts.append(node)
        if view.shape(node) is None and not _tuple_valued(node):
            continue
        for user in node.users:
            if user in view.position and (bits >> view.position[user]) & 1:
                reach = max(reach, view.position[user])
    return sorted(cuts, key=view.position.__getitem__)


def _tuple_valued(node: fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), (tuple, list))


def stage_sites(view: GraphView) -> list[Site]:
    """The end of each stage of the extractor: at each cumulative stride, the last map on the
    extractor's main path (every path from the input to the extractor's end passes through it)."""
    found = anatomy(view)
    if found.end is None:
        return []
    by_stage: dict[int, fx.Node] = {}
    for node in _cuts(view, _trunk(view, found)):
        if _is_map(view, node) and _whole_stride(view, node):
            node = _before_downsampling_call(view, node)
            by_stage[_stage_of(view, node)] = _before_norms(view, node)
    # The image itself ends no stage (a layer that returns its input unchanged leaves it as the first "map").
    return [make_site(view, "stage", node) for _stage, node in sorted(by_stage.items()) if node.op != "placeholder"]


def _trunk(view: GraphView, found: Anatomy) -> int:
    """Bit set of the extractor's trunk: the nodes that reach its end other than through a resize.

    A second extractor beside the first that hands its maps over only resized to the trunk's sizes
    (YOLOv9-E's auxiliary branch, summed into the main one at every stride) leaves no map below the
    top that every path passes through; without it the trunk's maps are cuts again. Every cut of the
    whole extractor is a cut of its trunk, so this only adds stages. When the image reaches the end
    only through a resize (an hourglass), the trunk is the whole extractor."""
    assert found.end is not None
    bits, stack = 0, [found.end]
    while stack:
        node = stack.pop()
        bit = 1 << view.position[node]
        if bits & bit or view.is_resize(node):
            continue
        bits |= bit
        stack.extend(x for x in node.all_input_nodes if x in view.position)
    fed = any(view.nodes[i].op == "placeholder" for i in bit_positions(bits))
    return bits if fed and bits != found.extractor else found.extractor


def _stage_of(view: GraphView, node: fx.Node) -> int:
    return int(round(math.log2(view.total_stride(node))))


def _whole_stride(view: GraphView, node: fx.Node) -> bool:
    """The map is the image divided by a power of two (rounded either way), not a few pixels off it: a
    stride-1 pooling or a padding inside a downsampling layer (YOLOv9's ADown, YOLOv3-tiny's last pool)
    gives a map between two stages, which ends neither."""
    reference = view.part.input_spatial
    if reference is None:
        return True
    factor = 2 ** _stage_of(view, node)
    return all(size in (reference[i] // factor, -(-reference[i] // factor)) for i, size in enumerate(_dims(view, node)[2:]))


def _before_downsampling_call(view: GraphView, node: fx.Node) -> fx.Node:
    """The map a downsampling layer reads, for a map computed inside that layer before its stride.

    A stage ends where the layer that takes the map to the next stride starts (YOLOv10's SCDown runs
    a 1x1 conv before its strided one; MobileNet's block expands before its strided depthwise conv):
    of the module calls that ran ``node``, innermost first, the first that reads one map at ``node``'s
    stride and computes a smaller one from it gives its input."""
    stride = view.total_stride(node)
    frame = view.frame(node)
    parts = frame.split(".") if frame else []
    for i in range(len(parts), 0, -1):
        call = ".".join(parts[:i])
        if call not in view.called_paths:
            continue
        unit = _call_nodes(view, call)
        inputs = {x for n in unit for x in view.tensor_inputs(n) if x not in unit and _is_map(view, x)}
        if len(inputs) != 1:
            continue
        source = next(iter(inputs))
        # Smaller maps only indexed out of values handed in (YOLOv9's CBFuse picks pieces of other
        # branches) are no downsampling of ``source``.
        if view.total_stride(source) == stride and any(_is_map(view, n) and view.total_stride(n) > stride
                                                       and (view.ancestors[n] >> view.position[source]) & 1 for n in unit):
            return source
    return node


def _before_norms(view: GraphView, node: fx.Node) -> fx.Node:
    """Back past per-element linear layers (a norm that opens the next stage's downsampling, as in
    ConvNeXt) to the block output that feeds them at the same size."""
    while view.linear_kind(node) == "pointwise":
        inputs = view.tensor_inputs(node)
        if len(inputs) != 1 or view.shape(inputs[0]) != view.shape(node) or not _is_map(view, inputs[0]):
            break
        node = inputs[0]
    return node


def backbone_candidate(view: GraphView) -> tuple[int, Site] | None:
    """(rule, site): lower rules are stronger evidence; a model traced in parts keeps the strongest."""
    found = anatomy(view)
    if found.end is None or not _is_map(view, found.end):
        return None
    return found.rule, make_site(view, "backbone", found.end)


# -- pyramids and upsampling -----------------------------------------------------------------------
def upsample_sites(view: GraphView) -> list[Site]:
    """``upsample``: every node that enlarges an N,C,H,W map (``GraphView.is_upsample``)."""
    return [make_site(view, "upsample", n) for n in view.nodes if view.is_upsample(n)]


def _levels(view: GraphView, found: Anatomy) -> list[fx.Node]:
    """The pyramid's output map at each size: where the last merge at that size (or the top of the
    top-down path) hands over, in graph order. A later merge at the same size supersedes an earlier
    level when it reads that level other than through its resized input (a PAN's bottom-up concat
    reads the top-down level as its lateral); two levels of the same size side by side (an FPN over
    two maps of one stride, merged by a resize that keeps the size) both stay."""
    resized_by = {m: r for m, _l, r in found.top_down + found.bottom_up}
    sources = [found.top] if found.top is not None else []
    sources += list(resized_by)
    modules = _neck_modules(view, found)
    kept: list[tuple[fx.Node, fx.Node]] = []  # (source, level)
    for source in sorted(sources, key=view.position.__getitem__):
        level = _level_output(view, source, set(resized_by), modules)
        if level is None or not _is_map(view, level):
            continue
        if level is not source and _fused_with_other_levels(view, level, set(resized_by), sources):
            level = source  # what follows is a per-level head block (smp FPN's segmentation blocks)
        size = tuple(_dims(view, source)[2:])
        read = _read_unresized(view, source, resized_by.get(source))
        kept = [(s, lv) for s, lv in kept if tuple(_dims(view, s)[2:]) != size or not read & (1 << view.position[lv])]
        kept.append((source, level))
    return sorted({lv for _s, lv in kept}, key=view.position.__getitem__)


def _fused_with_other_levels(view: GraphView, level: fx.Node, merges: set[fx.Node], sources: list[fx.Node]) -> bool:
    """Whether what follows ``level`` is summed, concatenated or stacked, as N,C,H,W maps, with a map
    computed from another level that ``level`` did not feed (a head fusing all levels at one size),
    by a merge that is neither a pyramid merge nor a residual one."""
    residual = {m.add for m in residual_merges(view)}
    pyramid = 0
    for source in sources:
        pyramid |= 1 << view.position[source]
    for position in bit_positions(view.descendants[level]):
        node = view.nodes[position]
        fusing = view.is_merge(node) or (node.op == "call_function" and node.target is torch.stack)
        if node is level or not fusing or node in merges or node in residual:
            continue
        inputs = [x for x in view.tensor_inputs(node) if _spatial_4d(view, x)]
        if any((view.ancestors[x] >> view.position[level]) & 1 for x in inputs) and any(
                not (view.ancestors[x] >> view.position[level]) & 1 and view.ancestors[x] & pyramid for x in inputs):
            return True
    return False


def _read_unresized(view: GraphView, merge: fx.Node, resize: fx.Node | None) -> int:
    """Bit set of what ``merge`` reads other than through its resized input (all it reads for the top)."""
    if resize is None:
        return view.ancestors[merge]
    bits = 0
    for x in view.tensor_inputs(merge):
        if not (view.descendants[resize] >> view.position[x]) & 1:
            bits |= view.ancestors[x]
    return bits


def _neck_modules(view: GraphView, found: Anatomy) -> set[str]:
    """Module calls that hold several pyramid merges (an FPN, a decoder): a level does not leave them."""
    counts: dict[str, int] = {}
    for node in [m for m, _l, _r in found.top_down + found.bottom_up]:
        call = view.outermost_call(node)
        if call is not None:
            counts[call] = counts.get(call, 0) + 1
    return {call for call, count in counts.items() if count > 1}


def _level_output(view: GraphView, source: fx.Node, merges: set[fx.Node], modules: set[str]) -> fx.Node | None:
    """The last node that everything computed from ``source`` at its size passes through or comes
    from: the smoothing conv after an FPN merge, the block after a PAN concat; not a head's branch."""
    size = _dims(view, source)[2:]
    home = view.outermost_call(source)
    fence = home if home in modules else None
    region, stack = {source}, [source]
    while stack:
        node = stack.pop()
        for user in node.users:
            if user in region or user not in view.position or user in merges or (fence is not None and not view.within(user, fence)):
                continue
            pieces = view.is_split(user) and view.nchw(node)  # a split keeps the map's size for its pieces
            if not pieces and (not _spatial_4d(view, user) or _dims(view, user)[2:] != size
                               or view.is_resize(user) or view.is_downsample(user)):
                continue
            region.add(user)
            stack.append(user)
    bits = sum(1 << view.position[n] for n in region)
    through = [n for n in sorted(region, key=view.position.__getitem__, reverse=True)
               if (view.ancestors[n] | view.descendants[n]) & bits == bits]
    if through and view.is_output(through[0]) and view.output_node is not None and len(view.output_node.all_input_nodes) == 1:
        # The one map the model returns is its prediction (a segmentation head's logits at the level's
        # size), no level: the level is what the call computing it reads. A model returning its levels
        # (an FPN backbone) returns several maps.
        head = view.outermost_call(through[0])
        through = [n for n in through if n is not through[0] and (head is None or not view.within(n, head))]
    return through[0] if through else source


def neck_level_sites(view: GraphView) -> list[Site]:
    """``neck.level``: each output level of the pyramid, with the other levels as extra."""
    levels = anatomy(view).levels
    return [make_site(view, "neck.level", level, extra=[o for o in levels if o is not level]) for level in levels]


def _upsampled(view: GraphView, up: fx.Node) -> fx.Node:
    source = _one_input(view, up)
    assert source is not None, f"{up.name} resizes no tensor"
    return source


def neck_merge_sites(view: GraphView) -> list[Site]:
    """``neck.merge``: each top-down merge, at its lateral input, with the upsampled map's source as extra."""
    return [make_site(view, "neck.merge", lateral, extra=[readable_source(view, lateral, _upsampled(view, up))])
            for _merge, lateral, up in anatomy(view).top_down]


# -- model-wide roles: one extractor per model, decided across the traced parts ----------------------
def model_backbone_sites(views: Sequence[GraphView]) -> list[tuple[int, Site]]:
    """``backbone``: the extractor's last map, the one a pooling head, a neck or a decoder starts from,
    as (part index, site) (``extractor_sites``)."""
    return [(index, site) for index, site in extractor_sites(views) if site.role == "backbone"]


def model_neck_level_sites(views: Sequence[GraphView]) -> list[tuple[int, Site]]:
    """``neck.level``: each part's pyramid levels (``neck_level_sites``), as (part index, site). A model traced
    as a row of parts with none there, whose head is no part, has the levels its head reads in a run
    (``levels_across.levels_read_across_parts``): the outputs of the parts it reads, without extra inputs."""
    found = [(index, site) for index, view in enumerate(views) for site in neck_level_sites(view)]
    if found or len(views) < 2 or any(not view.part.path for view in views):
        return found  # a model traced whole, or in one part, has every map its head reads in a graph
    extractor = {index for index, _site in extractor_sites(views)}
    return [(index, make_site(views[index], "neck.level", node)) for index, node in levels_read_across_parts(views, extractor)]


def model_stage_sites(views: Sequence[GraphView]) -> list[tuple[int, Site]]:
    """``stage``: the end of each stage of the model's extractor, as (part index, site) (``extractor_sites``)."""
    return [(index, site) for index, site in extractor_sites(views) if site.role == "stage"]


def extractor_sites(views: Sequence[GraphView]) -> list[tuple[int, Site]]:
    """The backbone and stage sites of the whole model, as (part index, site); computed once per list of views.

    The extractor reads the image: only parts fed the input image itself can hold it. One of them
    with its own evidence of where the extractor ends (a pooling head, a pyramid, an upsampling
    head) holds the whole extractor (a model traced whole; a detector's backbone with its FPN).
    Otherwise the model was traced as a row of parts (an encoder then a decoder; single layers):
    the extractor is the parts that run from the first image-fed part up to the first part fed
    several maps (a decoder, a merge, a head); its backbone is their deepest map, the last one at
    that stride, and its stage at each stride the last of those parts' stages.
    """
    if not views:
        return []
    key = f"extractor_sites:{[id(v) for v in views]}"
    return _cached(views[0], key, lambda: _find_extractor_sites(list(views)))


def _find_extractor_sites(views: list[GraphView]) -> list[tuple[int, Site]]:
    image_fed = [i for i, v in enumerate(views) if _fed_the_image(v)]
    candidates = [(c[0], i, c[1]) for i, c in ((i, backbone_candidate(views[i])) for i in image_fed) if c is not None]
    strong = [c for c in candidates if c[0] < 3]
    if strong:
        _rule, index, site = min(strong, key=lambda c: (c[0], c[1]))
        return [(index, site)] + [(index, s) for s in stage_sites(views[index])]
    return _extractor_of_a_row(views, image_fed[0]) if image_fed else []


def _extractor_of_a_row(views: list[GraphView], first: int) -> list[tuple[int, Site]]:
    front = []
    for index in range(first, len(views)):
        if _maps_fed(views[index]) != 1:
            break
        front.append(index)
        if _returns_a_pyramid(views[index]):
            break  # an encoder handing over its maps at several strides: what follows reads them (a decoder)
    candidates = [(i, backbone_candidate(views[i])) for i in front]
    found = [(i, c[1]) for i, c in candidates if c is not None]
    if not found:
        return []
    deepest = max(site.total_stride for _i, site in found)
    backbone = [(i, s) for i, s in found if s.total_stride == deepest][-1]
    stages: dict[int, tuple[int, Site]] = {}
    for index in front:
        for site in stage_sites(views[index]):
            stages[site.total_stride] = (index, site)
    return [backbone, *(stages[stride] for stride in sorted(stages))]


def _returns_a_pyramid(view: GraphView) -> bool:
    """The part returns N,C,H,W maps at more than one stride (a features-only encoder), not one map."""
    if view.output_node is None:
        return False
    returned = [n for n in view.output_node.all_input_nodes if n in view.position and _is_map(view, n)]
    return len({view.total_stride(n) for n in returned}) > 1


def _maps_fed(view: GraphView) -> int:
    return sum(1 for t in flat_tensors(view.part.example_inputs) if t.dim() == 4)


def _fed_the_image(view: GraphView) -> bool:
    maps = [t for t in flat_tensors(view.part.example_inputs) if t.dim() == 4]
    return len(maps) == 1 and tuple(maps[0].shape[-2:]) == tuple(view.part.input_spatial or ())
