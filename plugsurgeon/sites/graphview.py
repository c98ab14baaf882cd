"""Read-only structural facts about a traced part: order, shapes, layout, ancestry, node kinds.

Locators ask questions of this view; none of them looks at class names of a model family, only at
layer types of torch.nn (what a node computes) and at shapes.
"""

from __future__ import annotations

import operator
from functools import cached_property

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from plugsurgeon.graph.shapes import shape_of
from plugsurgeon.graph.trace import OWNER, TracedPart

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish, nn.Hardtanh)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish, F.hardtanh, torch.relu_}
_ACTIVATION_METHODS = {"relu", "relu_"}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}
_NCHW_MODULES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.Upsample, nn.InstanceNorm2d, nn.Dropout2d)
_NCHW_FUNCTIONS = {F.conv2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.batch_norm}


class GraphView:
    def __init__(self, part: TracedPart, model: nn.Module) -> None:
        self.part = part
        self.gm = part.gm
        self.model = model
        self.nodes = [n for n in self.gm.graph.nodes if n.op not in ("get_attr", "output")]
        self.position = {n: i for i, n in enumerate(self.nodes)}
        self.modules = dict(self.gm.named_modules())

    # -- what a node is ---------------------------------------------------------------------------
    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def shape(self, node) -> tuple[int, ...] | None:
        return shape_of(node) if isinstance(node, fx.Node) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in self.position and self.shape(a) is not None]

    def is_add(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
            node.op == "call_method" and node.target in _ADD_METHODS
        )

    def is_merge(self, node: fx.Node) -> bool:
        if self.is_add(node):
            return True
        return node.op == "call_function" and node.target in _CAT_FUNCTIONS

    def is_activation(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.module(node), _ACTIVATION_MODULES)
        if node.op == "call_function":
            return node.target in _ACTIVATION_FUNCTIONS
        return node.op == "call_method" and node.target in _ACTIVATION_METHODS

    def conv(self, node: fx.Node) -> nn.Conv2d | None:
        module = self.module(node)
        return module if isinstance(module, nn.Conv2d) else None

    def pool_stride(self, node: fx.Node) -> int:
        """Stride of a pooling node, 0 when the node is not a pooling op."""
        module = self.module(node)
        if isinstance(module, _POOL_MODULES):
            stride = module.stride
        elif node.op == "call_function" and node.target in _POOL_FUNCTIONS:
            stride = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None)
            stride = stride if stride is not None else node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else 1)
        else:
            return 0
        return int(stride[0] if isinstance(stride, (tuple, list)) else stride)

    def is_upsample(self, node: fx.Node) -> bool:
        out = self.shape(node)
        if out is None or len(out) != 4 or not self.nchw(node):
            return False
        # Every 4-D input must be smaller: a broadcast gate (x * scale[N,C,1,1]) is no upsample.
        inputs = [s for s in (self.shape(a) for a in self.tensor_inputs(node)) if s is not None and len(s) == 4]
        return bool(inputs) and all(s[2] * s[3] < out[2] * out[3] for s in inputs)

    # -- layout and strides -------------------------------------------------------------------
    @cached_property
    def _nchw(self) -> dict[fx.Node, bool]:
        """Which 4-D values are laid out N,C,H,W: produced by 2-D conv/pool/norm layers, or derived
        elementwise from such values. Channels-last blocks (Swin, ConvNeXt's MLP) are excluded."""
        layout: dict[fx.Node, bool] = {}
        for node in self.nodes:
            shape = self.shape(node)
            if shape is None or len(shape) != 4:
                layout[node] = False
                continue
            module = self.module(node)
            if node.op == "placeholder":
                layout[node] = True
            elif isinstance(module, _NCHW_MODULES) or (node.op == "call_function" and node.target in _NCHW_FUNCTIONS):
                layout[node] = True
            elif node.op == "call_method" and node.target == "permute" or node.op == "call_function" and node.target is torch.permute:
                dims = [d for d in node.args[1:]] if node.op == "call_method" else list(node.args[1])
                dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
                layout[node] = dims == [0, 3, 1, 2]
            elif isinstance(module, (nn.Linear, nn.LayerNorm)) or node.op in ("call_method",) and node.target in ("view", "reshape", "flatten", "transpose"):
                layout[node] = False
            else:
                # Elementwise ops, concatenations and opaque leaves (plugins, custom layers) keep the
                # layout of their 4-D inputs.
                spatial_inputs = [a for a in self.tensor_inputs(node) if len(self.shape(a)) == 4]
                layout[node] = bool(spatial_inputs) and all(layout.get(a, False) for a in spatial_inputs)
        return layout

    def nchw(self, node: fx.Node) -> bool:
        return self._nchw.get(node, False)

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

    def latest_common_ancestor(self, a: fx.Node, b: fx.Node) -> fx.Node | None:
        common = self.ancestors[a] & self.ancestors[b]
        return self.nodes[common.bit_length() - 1] if common else None

    # -- where a node lives ----------------------------------------------------------------------
    def display_path(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return self.part.absolute(node.target)
        owner = self.part.absolute(node.meta.get(OWNER, ""))
        return f"{owner}:{node.name}" if owner else node.name


def bit_positions(bits: int):
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low
