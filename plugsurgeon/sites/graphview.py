"""Read-only structural facts about a traced part: order, shapes, layout, ancestry, node kinds, module calls.

Locators ask questions of this view; none of them looks at class names of a model family, only at
layer types of torch.nn (what a node computes), at shapes and at which module call ran a node.
"""

from __future__ import annotations

import operator
from functools import cached_property
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from plugsurgeon.graph.shapes import shape_of
from plugsurgeon.graph.trace import OWNER, TracedPart

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish,
                       nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.SELU, nn.CELU, nn.GLU, nn.Softplus,
                       nn.Softmax)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish,
                         F.hardtanh, torch.relu_, torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.tanh, F.tanh,
                         F.softmax, torch.softmax, F.softplus, F.selu, F.celu, F.glu}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "softmax"}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}
_NORM_MODULES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.LocalResponseNorm)
# Layers whose output is N,C,H,W by definition, whatever their input looked like.
_NCHW_MODULES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.Upsample, nn.InstanceNorm2d, nn.Dropout2d, nn.GroupNorm, nn.PixelShuffle,
                 nn.PixelUnshuffle, nn.LPPool2d, nn.FractionalMaxPool2d)
_NCHW_FUNCTIONS = {F.conv2d, F.conv_transpose2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_max_pool2d, F.interpolate, F.batch_norm, F.group_norm, F.instance_norm,
                   F.pixel_shuffle, F.pixel_unshuffle, F.lp_pool2d}
# Linear maps over the channel axis or the window: a shortcut made of these is a projection of its input.
_MIXING_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
_MIXING_FUNCTIONS = {F.conv2d, F.linear, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d}
# Padding extends the border: the map grows by a few pixels, but nothing is upsampled.
_PAD_MODULES = tuple(getattr(nn.modules.padding, name) for name in
                     ("_ConstantPadNd", "_ReflectionPadNd", "_ReplicationPadNd", "_CircularPadNd")
                     if hasattr(nn.modules.padding, name))
_PAD_FUNCTIONS = {F.pad, torch.constant_pad_nd}
_RESIZE_FUNCTIONS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_PASS_METHODS = {"contiguous", "clone", "float", "to", "type_as", "detach"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS = {torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze}
_SPLIT_NAMES = {"split", "chunk", "tensor_split"}

NCHW = ("N", "C", "H", "W")
Layout = tuple  # one label per axis: N, C, H, W, or "?" for an axis of unknown meaning
# A piece of one of the image's axes: (name, total, stride, size). The axis ``name`` (N, C, H, W, or
# "?") of extent ``total`` is cut, row-major, into parts; this piece is the index ``(i // stride) % size``.
# An axis of a value is a tuple of pieces, outermost first: (("H", 56, 1, 56),) is all of H; a window
# partition of H by 8 gives ("H", 56, 8, 7) (which window) and ("H", 56, 1, 8) (where in the window).
Piece = tuple
Axes = tuple  # one tuple of pieces per axis of a value


class GraphView:
    def __init__(self, part: TracedPart, model: nn.Module) -> None:
        self.part = part
        self.gm = part.gm
        self.model = model
        self.nodes = [n for n in self.gm.graph.nodes if n.op not in ("get_attr", "output")]
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.output_node = next((n for n in self.gm.graph.nodes if n.op == "output"), None)
        self._modules: dict[str, nn.Module | None] = {}
        self._shapes: dict[fx.Node, tuple[int, ...] | None] = {}  # locators ask each node's shape many times
        self.cache: dict[str, object] = {}  # derived analyses (locators.anatomy) computed once per view

    # -- what a node is ---------------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module | None:
        """The module a call_module node runs, looked up by its target path.

        A module instance called from several places has one node target per call site, and only
        ``get_submodule`` resolves each of them (``named_modules`` lists a shared instance once).
        """
        if node.op != "call_module":
            return None
        target = str(node.target)  # a call_module's target is the module's path
        if target not in self._modules:
            try:
                self._modules[target] = self.gm.get_submodule(target)
            except AttributeError:
                self._modules[target] = None
        return self._modules[target]

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        if node not in self._shapes:
            self._shapes[node] = shape_of(node)
        return self._shapes[node]

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The tensors whose values ``node`` reads: none for a tensor made like another (``x.new_full``,
        ``torch.zeros_like``: a detection head's per-anchor stride), which takes only its dtype, device or
        size; only ``x`` for a cast to another's dtype (``x.type_as(y)``: a head's anchor grid)."""
        if _makes_like(node):
            return []
        inputs = [a for a in node.all_input_nodes if a in self.position and self.shape(a) is not None]
        if node.op == "call_method" and node.target in _CAST_METHODS:  # x.type_as(y), x.to(y): y's dtype only
            return [a for a in inputs if a is node.args[0]]
        return inputs

    def is_add(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ADD_METHODS
        )

    def is_mul(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _MUL_FUNCTIONS) or (
            node.op == "call_method" and node.target in _MUL_METHODS
        )

    def is_cat(self, node: fx.Node) -> bool:
        return node.op == "call_function" and node.target in _CAT_FUNCTIONS

    def is_merge(self, node: fx.Node) -> bool:
        return self.is_add(node) or self.is_cat(node)

    def is_activation(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            module = self.module(node)
            return isinstance(module, _ACTIVATION_MODULES) or self.is_norm_with_activation(module)
        if node.op == "call_function":
            return node.target in _ACTIVATION_FUNCTIONS
        return node.op == "call_method" and node.target in _ACTIVATION_METHODS

    @staticmethod
    def is_norm_with_activation(module: nn.Module | None) -> bool:
        """A norm layer subclass that also applies an activation (timm's BatchNormAct2d): its children say so."""
        if not isinstance(module, _NORM_MODULES):
            return False
        return any(isinstance(child, _ACTIVATION_MODULES) for child in module.children())

    def conv(self, node: fx.Node) -> nn.Conv2d | None:
        module = self.module(node)
        return module if isinstance(module, nn.Conv2d) else None

    def pool_stride(self, node: fx.Node) -> int:
        """Stride of a pooling node, 0 when the node is not a pooling op."""
        module = self.module(node)
        stride: Any
        if isinstance(module, _POOL_MODULES):
            stride = module.stride
        elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
            stride = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None)
            stride = stride if stride is not None else node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else 1)
        else:
            return 0
        return int(stride[0] if isinstance(stride, (tuple, list)) else stride)

    def is_upsample(self, node: fx.Node) -> bool:
        """A node that enlarges a real map: every 4-D input is smaller, and none is a 1-pixel-wide broadcast;
        padding is no upsample.

        Resizing a pooled 1x1 (ASPP's image pooling) or a strip (H x 1) back to the map is a broadcast of
        a context vector, not an upsampling of features; a gate (x * scale[N,C,1,1]) is neither.
        """
        out = self.shape(node)
        if out is None or len(out) != 4 or not self.nchw(node) or self.is_pad(node):
            return False
        inputs = self._map_inputs(node)
        return inputs is not None and bool(inputs) and all(s[2] * s[3] < out[2] * out[3] and min(s[2], s[3]) > 1 for s in inputs)

    def is_pad(self, node: fx.Node) -> bool:
        """Padding (``nn.ZeroPad2d`` and the other pad layers, ``F.pad``): a border, not an upsample."""
        return isinstance(self.module(node), _PAD_MODULES) or (node.op == "call_function" and node.target in _PAD_FUNCTIONS)

    def is_resize(self, node: fx.Node) -> bool:
        """An upsample, or a resize to a given size that does not shrink a real map: ``F.interpolate(x,
        size=lateral.shape[-2:])`` or ``nn.Upsample`` whose output happens to be the input's size (an
        FPN's top-down step between two levels of the same stride) is still the pyramid's resize."""
        if self.is_upsample(node):
            return True
        resizing = isinstance(self.module(node), nn.Upsample) or (
            node.op == "call_function" and node.target in _RESIZE_FUNCTIONS)
        out = self.shape(node)
        if not resizing or out is None or len(out) != 4 or not self.nchw(node):
            return False
        inputs = self._map_inputs(node)
        return inputs is not None and bool(inputs) and all(s[2:] == out[2:] and min(s[2], s[3]) > 1 for s in inputs)

    def _map_inputs(self, node: fx.Node) -> list[tuple[int, ...]] | None:
        """Shapes of the 4-D inputs, or None when one is not N,C,H,W (its axes 2, 3 are no H, W)."""
        inputs = [(a, shape) for a in self.tensor_inputs(node) if (shape := self.shape(a)) is not None and len(shape) == 4]
        return [shape for _a, shape in inputs] if all(self.nchw(a) for a, _shape in inputs) else None

    def is_downsample(self, node: fx.Node) -> bool:
        """A node whose N,C,H,W output is smaller than every 4-D input it reads (strided conv or pooling)."""
        out = self.shape(node)
        if out is None or len(out) != 4 or not self.nchw(node):
            return False
        inputs = self._map_inputs(node)
        return inputs is not None and bool(inputs) and all(s[2] * s[3] > out[2] * out[3] > 1 for s in inputs)

    def linear_kind(self, node: fx.Node) -> str | None:
        """How a one-input node maps its input: "mixing" (conv, linear, pooling), "pointwise" (norms
        without an activation, dropout, identity, copies, scaling by constants) or None (anything else)."""
        module = self.module(node)
        if module is not None:
            if isinstance(module, _MIXING_MODULES):
                return "mixing"
            if isinstance(module, _PASS_MODULES) or (isinstance(module, _NORM_MODULES) and not self.is_norm_with_activation(module)):
                return "pointwise"
            # A childless shape-keeping leaf from another library (FrozenBatchNorm2d, drop-path) is
            # per-element: it cannot mix positions or channels without children or a shape change.
            inputs = self.tensor_inputs(node)
            if (not isinstance(module, (*_ACTIVATION_MODULES, nn.Upsample)) and next(module.children(), None) is None
                    and len(inputs) == 1 and self.shape(inputs[0]) == self.shape(node)):
                return "pointwise"
            return None
        if node.op == "call_function" and node.target in _MIXING_FUNCTIONS:
            return "mixing"
        if self.is_slice(node):
            return "pointwise"  # a selection of the input's values (DPN's residual channels)
        if node.op == "call_method" and node.target in _PASS_METHODS:
            return "pointwise"
        if (self.is_mul(node) or self.is_add(node) or (node.op == "call_function" and node.target in (operator.truediv, torch.div))
                or (node.op == "call_method" and node.target in ("div", "div_"))):
            # Scaling or shifting by constants (layer scale parameters are get_attr, not in the view).
            return "pointwise" if len(self.tensor_inputs(node)) == 1 else None
        return None

    # -- layout and strides -------------------------------------------------------------------
    @cached_property
    def layouts(self) -> dict[fx.Node, Layout | None]:
        """The meaning of each axis of every value, where it can be told: N,C,H,W after 2-D conv, pool
        and norm layers, permuted by permute/transpose, regrouped by reshapes (channel shuffle, tokens,
        window partitions and their reverse), kept by split/chunk pieces and slices, and by elementwise
        ops whose same-shape inputs agree (a broadcast gate or layer scale does not decide)."""
        return {node: _labels(axes) for node, axes in self.axes.items()}

    @cached_property
    def axes(self) -> dict[fx.Node, Axes | None]:
        """What each axis of every value is made of: a tuple of pieces of the image's axes (see ``Piece``),
        or None where it cannot be told. A reshape splits and merges pieces; a later reshape that puts
        the pieces of H back together, in order, gives H again (a window partition and its reverse)."""
        axes: dict[fx.Node, Axes | None] = {}
        for node in self.nodes:
            found = self._axes_of(node, axes)
            shape = self.shape(node)
            axes[node] = _conformed(found, shape) if found is not None and shape is not None else found
        return axes

    def _axes_of(self, node: fx.Node, known: dict) -> Axes | None:
        if _is_split(node):
            return known.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        shape = self.shape(node)
        if shape is None:
            return None
        rank = len(shape)
        if node.op == "placeholder":
            return _fresh(NCHW, shape) if rank == 4 else None
        module = self.module(node)
        if isinstance(module, _NCHW_MODULES) or (node.op == "call_function" and node.target in _NCHW_FUNCTIONS):
            return _fresh(NCHW, shape) if rank == 4 else None
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        source = known.get(first) if first is not None else None
        if _is_method_or_function(node, "permute"):
            return _permuted(source, _dims(node), rank)
        if _is_method_or_function(node, "transpose", "swapaxes", "swapdims"):
            return _transposed(source, node.args[1:3], rank)
        if (node.op == "call_method" and node.target in _RESHAPE_METHODS) or (
                node.op == "call_function" and node.target in _RESHAPE_FUNCTIONS):
            return _reshaped(source, self.shape(first) if first is not None else None, shape)
        if node.op == "call_function" and node.target is operator.getitem and first is not None:
            if _is_split(first):
                return source if source is not None and len(source) == rank else None
            return _indexed(source, node.args[1], rank)
        if isinstance(module, nn.Linear):
            return source if source is not None and _label(source[-1]) == "C" else None
        if node.op == "call_function" and node.target is torch.stack:
            return self._stacked_axes(node, known, rank)
        if _reduces_one_axis(node):
            return _without_axis(source, _reduced_dim(node), rank)
        # Elementwise ops, norms over the last axis, concatenations and opaque leaves: the inputs with
        # the output's shape decide (a broadcast operand does not); failing those, inputs of its rank.
        # An input whose layout could not be told does not overrule one that could: values added
        # elementwise share their axes.
        inputs = [a for a in self.tensor_inputs(node) if (input_shape := self.shape(a)) is not None and len(input_shape) == rank]
        deciding = [a for a in inputs if self.shape(a) == shape] or inputs
        labels = {_labels(known.get(a)) for a in deciding} - {None}
        if len(labels) != 1:
            return None
        pieces = {known.get(a) for a in deciding} - {None}
        return pieces.pop() if len(pieces) == 1 else _fresh(labels.pop(), shape)  # type: ignore[arg-type]  # labels come from inputs of the output's rank, so it has a shape

    def _stacked_axes(self, node: fx.Node, known: dict, rank: int) -> Axes | None:
        """``torch.stack`` of values that share their axes: those axes, with the new one (of unknown
        meaning) at ``dim``; summed or averaged over it (YOLOv9's CBFuse), they are the maps' again."""
        items = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(items, (list, tuple)) or not items or not isinstance(dim, int):
            return None
        axes = {known.get(x) if isinstance(x, fx.Node) else None for x in items}
        if len(axes) != 1 or (shared := axes.pop()) is None or len(shared) != rank - 1:
            return None
        at = dim % rank
        return (*shared[:at], (("?", len(items), 1, len(items)),), *shared[at:])

    def is_slice(self, node: fx.Node) -> bool:
        """x[:, a:b, ...]: basic slicing of a tensor, every axis kept."""
        if node.op != "call_function" or node.target is not operator.getitem or _is_split(node.args[0]):
            return False
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        return isinstance(node.args[0], fx.Node) and self.shape(node.args[0]) is not None and all(
            isinstance(i, slice) or i is Ellipsis for i in items)

    def is_split(self, node: fx.Node) -> bool:
        """A split/chunk: one value in, a tuple of pieces out (fx sees the pieces as getitem nodes)."""
        return _is_split(node)

    def layout(self, node: fx.Node) -> Layout | None:
        return self.layouts.get(node)

    def axes_of(self, node: fx.Node) -> Axes | None:
        return self.axes.get(node)

    def nchw(self, node: fx.Node) -> bool:
        return self.layouts.get(node) == NCHW

    def total_stride(self, node: fx.Node) -> int:
        shape = self.shape(node)
        reference = self.part.input_spatial
        if shape is None or len(shape) != 4 or reference is None:
            return 1
        ratio = max(reference[0] / max(shape[2], 1), reference[1] / max(shape[3], 1))
        return max(1, int(round(ratio)))

    # -- ancestry -------------------------------------------------------------------------------
    @cached_property
    def ancestors(self) -> dict[fx.Node, int]:
        """Bit set of ancestors (the node included), one bit per position."""
        sets: dict[fx.Node, int] = {}
        for node in self.nodes:
            bits = 1 << self.position[node]
            for arg in node.all_input_nodes:
                bits |= sets.get(arg, 0)
            sets[node] = bits
        return sets

    @cached_property
    def descendants(self) -> dict[fx.Node, int]:
        sets: dict[fx.Node, int] = {}
        for node in reversed(self.nodes):
            bits = 1 << self.position[node]
            for user in node.users:
                bits |= sets.get(user, 0)
            sets[node] = bits
        return sets

    def path_between(self, start: fx.Node, end: fx.Node) -> list[fx.Node]:
        bits = self.ancestors[end] & self.descendants[start]
        return [self.nodes[i] for i in bit_positions(bits)]

    def latest_common_ancestor(self, *nodes: fx.Node) -> fx.Node | None:
        common = -1
        for node in nodes:
            common &= self.ancestors[node]
        return self.nodes[common.bit_length() - 1] if common > 0 else None

    def is_output(self, node: fx.Node) -> bool:
        return self.output_node is not None and self.output_node in node.users

    # -- module calls -----------------------------------------------------------------------------
    def frame(self, node: fx.Node) -> str:
        """The path of the innermost module call that ran ``node``: a leaf module's own path for a
        call_module node, the owner's path for anything its forward computed ("" for the root)."""
        if node.op == "call_module":
            return str(node.target)
        return node.meta.get(OWNER, "")

    @cached_property
    def called_paths(self) -> set[str]:
        """Every module path that runs as a call in this graph: non-leaf calls the tracer met and leaves."""
        paths = {record.path for record in self.part.calls}
        paths.update(str(n.target) for n in self.nodes if n.op == "call_module")
        return paths

    def outermost_call(self, node: fx.Node) -> str | None:
        """The outermost module call (below the root) whose forward ran ``node``, or None for the root's own code."""
        frame = self.frame(node)
        if not frame:
            return None
        parts = frame.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in self.called_paths:
                return prefix
        return None

    def within(self, node: fx.Node, path: str) -> bool:
        frame = self.frame(node)
        return frame == path or frame.startswith(path + ".")

    # -- where a node lives ----------------------------------------------------------------------
    def display_path(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return self.part.absolute(str(node.target))
        owner = self.part.absolute(node.meta.get(OWNER, ""))
        return f"{owner}:{node.name}" if owner else node.name


def bit_positions(bits: int):
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


# -- layout helpers ---------------------------------------------------------------------------------
def _name_of(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


_FUNCTIONS_BY_NAME: dict[str, set[Any]] = {"permute": {torch.permute}, "transpose": {torch.transpose}, "swapaxes": {torch.swapaxes},
                      "swapdims": {torch.swapdims}}


def _is_method_or_function(node: fx.Node, *names: str) -> bool:
    if node.op == "call_method":
        return node.target in names
    return node.op == "call_function" and any(node.target in _FUNCTIONS_BY_NAME.get(name, ()) for name in names)


_CAST_METHODS = {"type_as", "to"}
_LIKE_METHODS = {"new_full", "new_zeros", "new_ones", "new_empty"}
_LIKE_FUNCTIONS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}


def _makes_like(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _LIKE_METHODS) or (
        node.op == "call_function" and node.target in _LIKE_FUNCTIONS)


_REDUCING_FUNCTIONS = {torch.sum, torch.mean, torch.amax, torch.amin}
_REDUCING_METHODS = {"sum", "mean", "amax", "amin"}


def _reduces_one_axis(node: fx.Node) -> bool:
    """A sum, mean, max or min over one axis given as an int, that drops it (no keepdim)."""
    if not ((node.op == "call_function" and node.target in _REDUCING_FUNCTIONS)
            or (node.op == "call_method" and node.target in _REDUCING_METHODS)):
        return False
    return isinstance(_reduced_dim(node), int) and not node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])


def _reduced_dim(node: fx.Node) -> Any:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")


def _without_axis(source: Axes | None, dim: int, rank: int) -> Axes | None:
    if source is None or len(source) != rank + 1:
        return None
    at = dim % len(source)
    return (*source[:at], *source[at + 1:])


def _is_split(node: object) -> bool:
    if not isinstance(node, fx.Node) or node.op not in ("call_method", "call_function"):
        return False
    if node.op == "call_function" and node.target not in (torch.split, torch.chunk, torch.tensor_split):
        return False
    return _name_of(node) in _SPLIT_NAMES


def _dims(node: fx.Node) -> list:
    args = list(node.args[1:]) if node.op == "call_method" else list(node.args[1:2])
    if "dims" in node.kwargs:
        args = [node.kwargs["dims"]]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    return args


def _fresh(labels: Layout, shape: tuple) -> Axes:
    """Whole axes with the given labels (an axis labelled only "?" or a channel group is its own thing)."""
    return tuple(((label if label in NCHW else "?", int(size), 1, int(size)),) for label, size in zip(labels, shape, strict=True))


def _label(axis: tuple) -> str:
    """N, C, H or W for the whole of that axis; C for a group of channels; HW for H and W flattened
    together in that order; "?" for anything else (a piece of H, windows folded into the batch)."""
    if len(axis) == 1:
        name, total, stride, size = axis[0]
        if name in NCHW and (stride == 1 and size == total or name == "C"):
            return name
        return "?"
    if all(p[0] == "C" for p in axis):
        return "C"
    if [p[0] for p in axis] == ["H", "W"] and all(p[2] == 1 and p[3] == p[1] for p in axis):
        return "HW"
    return "?"


def _labels(axes: Axes | None) -> Layout | None:
    return None if axes is None else tuple(_label(axis) for axis in axes)


def _merged(axis: list) -> tuple:
    """Adjacent pieces of one axis that are consecutive (outer stride = inner stride * size) become one."""
    out: list = []
    for piece in axis:
        if out and out[-1][0] == piece[0] != "?" and out[-1][1] == piece[1] and out[-1][2] == piece[2] * piece[3]:
            outer = out.pop()
            piece = (piece[0], piece[1], piece[2], outer[3] * piece[3])
        out.append(piece)
    return tuple(out)


def _size(axis: tuple) -> int:
    size = 1
    for piece in axis:
        size *= piece[3]
    return size


def _conformed(axes: Axes, shape: tuple) -> Axes | None:
    """Axes whose size no longer matches the value (a slice, a split piece, a Linear's new width) are
    whole axes of their label at the new size."""
    if len(axes) != len(shape):
        return None
    return tuple(axis if _size(axis) == size else _fresh((_label(axis),), (size,))[0] for axis, size in zip(axes, shape, strict=True))


def _permuted(source: Axes | None, dims: list, rank: int) -> Axes | None:
    if source is None or len(source) != rank or len(dims) != rank or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(source[d % rank] for d in dims)


def _transposed(source: Axes | None, axes, rank: int) -> Axes | None:
    if source is None or len(source) != rank or len(axes) != 2 or not all(isinstance(a, int) for a in axes):
        return None
    labels = list(source)
    a, b = axes[0] % rank, axes[1] % rank
    labels[a], labels[b] = labels[b], labels[a]
    return tuple(labels)


def _reshaped(source: Axes | None, before: tuple | None, after: tuple) -> Axes | None:
    """Axes after a reshape: groups of axes whose sizes multiply to the same number share out their
    pieces, row-major, splitting a piece where a new axis ends inside it.

    A split axis becomes pieces of it (channel groups; a window index and a position in the window);
    merged axes hold all their pieces; pieces that come back together in order are the axis again. So
    channel shuffle's 5-D view and back, tokens (N, H*W, C) reshaped to (N, H, W, C), and a window
    partition and its reverse keep their layout; windows folded into the batch are no N.
    """
    if source is None or before is None or len(source) != len(before):
        return None
    if tuple(before) == tuple(after):
        return source
    out: list[tuple] = []
    i = j = 0
    while i < len(before) or j < len(after):
        if j < len(after) and after[j] == 1 and (i >= len(before) or before[i] != 1):
            out.append((("?", 1, 1, 1),))  # an axis of size one that was not there
            j += 1
            continue
        if i < len(before) and before[i] == 1 and (j >= len(after) or after[j] != 1):
            i += 1  # an axis of size one dropped
            continue
        if i >= len(before) or j >= len(after):
            return None
        gi, gj = [i], [j]
        pi, pj = before[i], after[j]
        while pi != pj:
            if pi < pj:
                i += 1
                if i >= len(before):
                    return None
                gi.append(i)
                pi *= before[i]
            else:
                j += 1
                if j >= len(after):
                    return None
                gj.append(j)
                pj *= after[j]
        out.extend(_shared_out([piece for k in gi for piece in source[k]], [after[k] for k in gj]))
        i, j = i + 1, j + 1
    return tuple(out)


def _shared_out(pieces: list, sizes: list[int]) -> list[tuple]:
    """The pieces of a group of merged axes, dealt row-major to new axes of the given sizes."""
    if all(size == 1 for size in sizes):  # axes of size one on both sides (a batch of one) stay what they were
        ones = [(p,) for p in pieces if p[3] == 1]
        return [ones[k] if k < len(ones) else (("?", 1, 1, 1),) for k in range(len(sizes))]
    queue = [p for p in pieces if p[3] != 1]
    out = []
    for size in sizes:
        axis, need = [], size
        while need > 1:
            if not queue:
                return [(("?", s, 1, s),) for s in sizes]
            name, total, stride, piece = queue[0]
            if piece <= need and need % piece == 0:
                axis.append(queue.pop(0))
                need //= piece
            elif piece > need and piece % need == 0:
                axis.append((name, total, stride * (piece // need), need))  # the outer part goes first
                queue[0] = (name, total, stride, piece // need)
                need = 1
            else:
                return [(("?", s, 1, s),) for s in sizes]
        out.append(_merged(axis) if axis else (("?", 1, 1, 1),))
    return out


def _indexed(source: Axes | None, index, rank: int) -> Axes | None:
    """Basic indexing (slices, ints, None, ...) keeps the axes it does not drop or add: x[:, :c] stays N,C,H,W."""
    if source is None:
        return None
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(i, fx.Node) for i in items):
        return None  # advanced indexing by a tensor, or an index computed at run time
    axes: list[Any] = []
    axis = 0
    for position, item in enumerate(items):
        if item is Ellipsis:
            remaining = sum(1 for i in items[position + 1:] if i is not None)
            skip = len(source) - axis - remaining
            axes.extend(source[axis:axis + skip])
            axis += skip
        elif item is None:
            axes.append((("?", 1, 1, 1),))
        elif isinstance(item, slice):
            axes.append(source[axis] if axis < len(source) else (("?", 1, 1, 1),))
            axis += 1
        elif isinstance(item, int):
            axis += 1
        else:
            return None
    axes.extend(source[axis:])
    return tuple(axes) if len(axes) == rank else None
