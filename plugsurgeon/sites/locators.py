"""One pure function per role: a GraphView in, the sites of that role out.

Sites come from structure and shapes: an add whose inputs share a fork, a conv's kernel and stride,
a drop in spatial size, an upsample feeding a merge. Nothing here knows a model family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch.fx as fx

from plugsurgeon.graph.trace import flat_tensors
from plugsurgeon.sites.graphview import GraphView, bit_positions
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
        target=view.part.absolute(node.target) if node.op == "call_module" else None,
        kernel=tuple(conv.kernel_size) if conv is not None else None,
        groups=conv.groups if conv is not None else 1,
        dilation=tuple(conv.dilation) if conv is not None else None,
        extra=tuple(n.name for n in extra),
        extra_shapes=tuple(view.shape(n) or () for n in extra),
        extra_scopes=tuple(tuple(view.part.scopes(n)) for n in extra),
        order=view.position[node],
        **fields,
    )


def _spatial_4d(view: GraphView, node: fx.Node) -> bool:
    shape = view.shape(node)
    return shape is not None and len(shape) == 4 and view.nchw(node)


# -- residual -----------------------------------------------------------------------------------------
def residual_merges(view: GraphView) -> list[tuple[fx.Node, fx.Node, fx.Node]]:
    """(add, branch end, skip input) for every residual add on N,C,H,W maps.

    An add is residual when its two inputs have the same shape and fork from a common node, neither
    path contains an upsample (that is a pyramid merge), and one path (the skip) is no longer than
    the other. The skip is the identity or a projection of the fork; the branch is the block body.
    """
    merges = []
    for node in view.nodes:
        if not view.is_add(node) or not _spatial_4d(view, node):
            continue
        inputs = view.tensor_inputs(node)
        if len(inputs) != 2 or view.shape(inputs[0]) != view.shape(inputs[1]):
            continue
        fork = view.latest_common_ancestor(inputs[0], inputs[1])
        if fork is None:
            continue
        paths = [view.path_between(fork, x) for x in inputs]
        if any(view.is_upsample(n) for path in paths for n in path):
            continue
        branch_index = 0 if len(paths[0]) >= len(paths[1]) else 1
        branch, skip = inputs[branch_index], inputs[1 - branch_index]
        if branch is fork:  # x + x, or an add of two views of one value
            continue
        merges.append((node, branch, skip))
    return merges


def block_output(view: GraphView, add: fx.Node) -> fx.Node:
    """The add itself, or the activation that follows it when that is its only user."""
    users = list(add.users)
    if len(users) == 1 and view.is_activation(users[0]) and view.tensor_inputs(users[0]) == [add]:
        return users[0]
    return add


def residual_sites(view: GraphView) -> list[Site]:
    sites = []
    for add, branch, _skip in residual_merges(view):
        sites.append(make_site(view, "residual.branch", branch))
        sites.append(make_site(view, "residual.output", block_output(view, add)))
    return sites


# -- convolutions and downsampling ------------------------------------------------------------------
def _residual_paths(view: GraphView) -> tuple[set[fx.Node], set[fx.Node]]:
    """(branch nodes, shortcut nodes): what lies strictly after the fork on each side of a residual merge."""
    branches: set[fx.Node] = set()
    shortcuts: set[fx.Node] = set()
    for _add, branch, skip in residual_merges(view):
        fork = view.latest_common_ancestor(branch, skip)
        branches.update(n for n in view.path_between(fork, branch) if n is not fork)
        shortcuts.update(n for n in view.path_between(fork, skip) if n is not fork)
    return branches, shortcuts


def conv_sites(view: GraphView) -> list[Site]:
    in_branch, _shortcut = _residual_paths(view)
    return [
        make_site(view, "conv", node, stride=int(view.conv(node).stride[0]), in_residual=node in in_branch)
        for node in view.nodes
        if view.conv(node) is not None and _spatial_4d(view, node)
    ]


def downsample_sites(view: GraphView) -> list[Site]:
    in_branch, shortcut = _residual_paths(view)
    sites = []
    for node in view.nodes:
        if not _spatial_4d(view, node):
            continue
        conv = view.conv(node)
        if conv is not None and max(conv.stride) > 1:
            role = "downsample.shortcut" if node in shortcut else "downsample.conv"
            sites.append(make_site(view, role, node, stride=int(conv.stride[0]), in_residual=node in in_branch))
        elif view.pool_stride(node) > 1 and view.shape(node)[2] > 1:
            sites.append(make_site(view, "downsample.pool", node, stride=view.pool_stride(node)))
    return sites


# -- stages and the backbone ------------------------------------------------------------------------
def _spatial_nodes(view: GraphView) -> list[fx.Node]:
    return [n for n in view.nodes if n.op != "placeholder" and _spatial_4d(view, n) and view.shape(n)[2] > 1]


def _cut_nodes(view: GraphView) -> set[fx.Node]:
    """Nodes every later node depends on through them: no edge jumps over them in execution order."""
    cuts, reach = set(), -1
    for node in view.nodes:
        position = view.position[node]
        if reach <= position and node.op != "placeholder":
            cuts.add(node)
        for user in node.users:
            if user in view.position:
                reach = max(reach, view.position[user])
    return cuts


def _ends_resolution(view: GraphView, user: fx.Node, stride: int) -> bool:
    """The consumer leaves this resolution: a smaller map, no map at all, or the graph's output."""
    shape = view.shape(user)
    return user.op == "output" or view.total_stride(user) > stride or (shape is not None and len(shape) < 4)


def stage_sites(view: GraphView) -> list[Site]:
    """The output of the last block at each cumulative stride.

    With residual blocks that is the last block output at that stride; without, the last node at
    that stride that every later node passes through (the activation before a pooling layer).
    """
    if sum(1 for t in flat_tensors(view.part.example_inputs) if t.dim() == 4) > 1:
        return []  # a part fed several maps (a head run on pyramid levels) has no stages of its own
    block_outputs = [block_output(view, add) for add, _b, _s in residual_merges(view)]
    candidates = {}
    by_stride: dict[int, fx.Node] = {}
    for node in block_outputs:
        if _spatial_4d(view, node):
            by_stride[view.total_stride(node)] = node
    cuts = _cut_nodes(view)
    neck = _pyramid_region(view)
    for node in _spatial_nodes(view):
        if view.position[node] in neck:
            continue
        stride = view.total_stride(node)
        if stride not in by_stride and node in cuts and any(_ends_resolution(view, user, stride) for user in node.users):
            candidates[stride] = node
    by_stride = {**candidates, **by_stride}
    return [make_site(view, "stage", node) for _stride, node in sorted(by_stride.items())]


def _global_pool_inputs(view: GraphView) -> list[fx.Node]:
    """Spatial maps consumed by something that removes the spatial dimensions (pool to 1x1, flatten, mean)."""
    found = []
    for node in _spatial_nodes(view):
        for user in node.users:
            shape = view.shape(user)
            if shape is not None and (len(shape) < 4 or (len(shape) == 4 and shape[2] == shape[3] == 1)):
                found.append(node)
                break
    return found


def backbone_sites(view: GraphView) -> list[Site]:
    """The last spatial feature map of the backbone.

    Classifiers: the map fed to global pooling. Pyramids: the deepest map the neck reads (the input
    of the lateral that starts the top-down path). Otherwise: the last residual block output at the
    largest stride, or the last spatial node at the largest stride.
    """
    found = backbone_candidate(view)
    return [found[1]] if found else []


def backbone_candidate(view: GraphView) -> tuple[int, Site] | None:
    """(rule rank, site): lower ranks are stronger evidence; a model split in parts keeps the best."""
    pooled = _global_pool_inputs(view)
    if pooled:
        return 0, make_site(view, "backbone", pooled[-1])
    top = _pyramid_top_lateral(view)
    if top is not None and view.tensor_inputs(top):
        return 1, make_site(view, "backbone", view.tensor_inputs(top)[0])
    outputs = [block_output(view, add) for add, _b, _s in residual_merges(view)]
    rank, pool = (2, outputs) if outputs else (3, _spatial_nodes(view))
    if not pool:
        return None
    deepest = max(view.total_stride(n) for n in pool)
    return rank, make_site(view, "backbone", [n for n in pool if view.total_stride(n) == deepest][-1])


# -- pyramids and upsampling -----------------------------------------------------------------------
def upsample_sites(view: GraphView) -> list[Site]:
    return [make_site(view, "upsample", n) for n in view.nodes if view.is_upsample(n)]


def _pyramid_merges(view: GraphView) -> list[tuple[fx.Node, fx.Node, fx.Node]]:
    """(merge, lateral, upsample) for every add/cat that merges an upsampled map with a same-size one."""
    found = []
    for node in view.nodes:
        if not view.is_merge(node) or not _spatial_4d(view, node):
            continue
        inputs = view.tensor_inputs(node)
        ups = [x for x in inputs if view.is_upsample(x)]
        others = [x for x in inputs if not view.is_upsample(x)]
        if len(ups) == 1 and len(others) == 1:
            found.append((node, others[0], ups[0]))
    return found


def _pyramid_region(view: GraphView) -> set[int]:
    """Positions of everything computed from the pyramid's top lateral or its merges: the neck, not the backbone."""
    merges = _pyramid_merges(view)
    starts = [m for m, _l, _u in merges]
    top = _pyramid_top_lateral(view)
    if top is not None:
        starts.append(top)
    bits = 0
    for node in starts:
        bits |= view.descendants[node]
    return set(bit_positions(bits))


def _pyramid_top_lateral(view: GraphView) -> fx.Node | None:
    """The top of the top-down path: what the first pyramid upsample reads, when it is no merge."""
    merges = _pyramid_merges(view)
    if not merges:
        return None
    first_up = min((up for _m, _l, up in merges), key=view.position.get)
    source = view.tensor_inputs(first_up)[0]
    return None if view.is_merge(source) else source


def _level_output(view: GraphView, source: fx.Node) -> fx.Node | None:
    """The map a pyramid level outputs: the non-upsample consumer of a level source, followed
    through single-user same-size layers (the 3x3 smoothing conv and its norm/activation)."""
    consumers = [u for u in source.users if u in view.position and not view.is_upsample(u) and not view.is_merge(u)]
    consumers = [u for u in consumers if view.shape(u) is not None and view.shape(u)[2:] == view.shape(source)[2:]]
    if len(consumers) != 1:
        return None
    node = consumers[0]
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user not in view.position or view.is_merge(user) or view.shape(user) != view.shape(node):
            break
        node = user
    return node


def neck_sites(view: GraphView) -> list[Site]:
    merges = _pyramid_merges(view)
    if not merges:
        return []
    sources = [m for m, _l, _u in merges]
    top = _pyramid_top_lateral(view)
    if top is not None:
        sources.append(top)
    levels = [out for out in (_level_output(view, s) for s in sources) if out is not None and _spatial_4d(view, out)]
    levels = sorted(set(levels), key=view.position.get)
    sites = []
    for level in levels:
        others = [o for o in levels if o is not level]
        sites.append(make_site(view, "neck.level", level, extra=others))
    for _merge, lateral, up in merges:
        top_down = view.tensor_inputs(up)[0]
        sites.append(make_site(view, "neck.merge", lateral, extra=[top_down]))
    return sites


LOCATORS: dict[str, Callable[[GraphView], list[Site]]] = {
    "residual": residual_sites,
    "conv": conv_sites,
    "downsample": downsample_sites,
    "stage": stage_sites,
    "backbone": backbone_sites,
    "neck": neck_sites,
    "upsample": upsample_sites,
}
