"""Conv -> BatchNorm folding, decided on the traced graph and done with torch's own fusion helpers.

A BatchNorm is folded into the layer before it only when nothing else can see the difference:
the layer's output has exactly one user (the BN), the layer and the BN modules are each called
exactly once in the traced forward, and both are the stock torch classes whose forward the fusion
formula describes. Every BatchNorm that stays gets a reason in the report.

torch.fx.experimental.optimization.fuse checks the first condition but not that the conv *module*
runs once, so a conv shared by two call sites gets corrupted there. Here it is skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from plugsurgeon.deployment.report import Folded, Skipped
from plugsurgeon.graph.shapes import shape_of
from plugsurgeon.graph.trace import Traced, TracedPart

_CONV_FORWARDS = {cls.forward for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)}
_BN_FORWARDS = {nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward}


def _frozen_bn_type() -> type | None:
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return FrozenBatchNorm2d


def is_norm(module: nn.Module) -> bool:
    """A BatchNorm of any flavour, foldable or not (what the report accounts for)."""
    frozen = _frozen_bn_type()
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (frozen is not None and isinstance(module, frozen))


def _norm_problem(norm: nn.Module) -> str | None:
    frozen = _frozen_bn_type()
    name = type(norm).__name__
    if frozen is not None and isinstance(norm, frozen):
        if type(norm).forward is not frozen.forward:
            return f"{name} has its own forward, which the fusion formula does not describe"
    elif type(norm).forward not in _BN_FORWARDS:
        return f"{name} has its own forward (a BatchNorm plus something else), which the fusion formula does not describe"
    elif norm.running_mean is None or norm.running_var is None:
        return "BatchNorm has track_running_stats=False: it normalises with batch statistics even in eval mode"
    return _hook_problem(norm, "BatchNorm")


def _layer_problem(layer: nn.Module) -> str | None:
    name = type(layer).__name__
    if isinstance(layer, nn.modules.conv._ConvNd):
        if type(layer).forward not in _CONV_FORWARDS:
            return f"the layer before it is a {name} with its own forward, which the fusion formula does not describe"
        if layer.transposed and layer.groups > 1:
            return f"the layer before it is a grouped {name}, which torch's fusion helper does not handle"
    elif isinstance(layer, nn.Linear):
        if type(layer).forward is not nn.Linear.forward:
            return f"the layer before it is a {name} with its own forward, which the fusion formula does not describe"
    else:
        return None
    if parametrize.is_parametrized(layer):
        return f"the {name} before it has parametrized weights (weight/spectral norm)"
    return _hook_problem(layer, name)


def _hook_problem(module: nn.Module, what: str) -> str | None:
    if module._forward_hooks or module._forward_pre_hooks:
        return f"the {what} has forward hooks, which folding would drop"
    return None


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


@dataclass
class FoldPlan:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (layer path, norm path), absolute
    skipped: list[Skipped] = field(default_factory=list)


def plan_folds(traced: Traced) -> FoldPlan:
    """Which BatchNorms of ``traced.model`` fold into the layer before them; the model is not modified."""
    model = traced.model
    resolved: dict[tuple[str, str], nn.Module] = {}

    def module_of(part: TracedPart, node: fx.Node) -> nn.Module:
        key = (part.path, node.target)
        if key not in resolved:
            resolved[key] = model.get_submodule(part.absolute(node.target))
        return resolved[key]

    calls: Counter[int] = Counter()
    read_directly: set[str] = set()
    for part in traced.parts:
        for node in part.gm.graph.nodes:
            if node.op == "call_module":
                calls[id(module_of(part, node))] += 1
            elif node.op == "get_attr":
                read_directly.add(part.absolute(node.target))

    plan = FoldPlan()
    seen: set[int] = set()
    for part in traced.parts:
        for node in part.gm.graph.nodes:
            if node.op != "call_module" or not is_norm(norm := module_of(part, node)) or id(norm) in seen:
                continue
            seen.add(id(norm))
            norm_path = part.absolute(node.target)
            layer_node = node.args[0] if node.args else None
            reason = _why_not(part, node, layer_node, norm, calls, read_directly, module_of)
            if reason is None:
                plan.pairs.append((part.absolute(layer_node.target), norm_path))
            else:
                plan.skipped.append(Skipped(norm_path, reason))
    traced_paths = [p.path for p in traced.parts]
    for path, module in model.named_modules():
        if is_norm(module) and id(module) not in seen:
            inside = "" in traced_paths or any(path.startswith(p + ".") for p in traced_paths)
            reason = "not called in the traced forward" if inside else "in a part of the model that torch.fx cannot trace"
            plan.skipped.append(Skipped(path, reason))
    return plan


def _why_not(part, node, layer_node, norm, calls, read_directly, module_of) -> str | None:
    problem = _norm_problem(norm)
    if problem:
        return problem
    if len(node.args) != 1 or node.kwargs:
        return "BatchNorm is called with extra arguments"
    if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module" or not _is_layer(layer := module_of(part, layer_node)):
        return f"its input is {_describe(part, layer_node, module_of)}, not a conv or linear layer"
    layer_path = part.absolute(layer_node.target)
    kind = "conv" if isinstance(layer, nn.modules.conv._ConvNd) else "linear"
    problem = _layer_problem(layer)
    if problem:
        return problem
    if len(layer_node.users) != 1:
        others = sorted(u.name for u in layer_node.users if u is not node)
        return f"{kind} output has another user ({', '.join(others[:3])}), which needs the unnormalised values"
    if calls[id(layer)] != 1:
        return f"{kind} module called {calls[id(layer)]} times ('{layer_path}'); folding would change every call"
    if calls[id(norm)] != 1:
        return f"BatchNorm module called {calls[id(norm)]} times; folding would change every call"
    if any(a == layer_path or a.startswith(layer_path + ".") for a in read_directly):
        return f"the weights of '{layer_path}' are also read directly in forward"
    channels = layer.out_channels if kind == "conv" else layer.out_features
    if norm.weight is not None and norm.weight.shape[0] not in (channels,) + ((1,) if kind == "linear" else ()):
        return f"BatchNorm has {norm.weight.shape[0]} features, the {kind} has {channels} outputs"
    if kind == "linear":
        if norm.weight is None:
            return "BatchNorm1d has affine=False, which torch's linear fusion helper does not take"
        shape = shape_of(layer_node)
        if shape is None or len(shape) != 2:
            return f"the linear output is {len(shape) if shape else '?'}-D: BatchNorm1d normalises its dim 1, not the linear's features"
    return None


def _describe(part: TracedPart, node, module_of) -> str:
    if not isinstance(node, fx.Node):
        return "not a traced value"
    if node.op == "call_module":
        return f"'{part.absolute(node.target)}' ({type(module_of(part, node)).__name__})"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', str(node.target))}()"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return f"the input of '{part.path or '(model)'}'"
    return f"{node.op} '{node.target}'"


def apply_folds(model: nn.Module, plan: FoldPlan) -> list[Folded]:
    """Fold every planned pair in ``model`` (modified in place): the fused layer takes the layer's
    path, the BatchNorm's path gets an nn.Identity."""
    fused: dict[str, nn.Module] = {}
    done: list[Folded] = []
    with torch.no_grad():
        for layer_path, norm_path in plan.pairs:
            layer, norm = model.get_submodule(layer_path), model.get_submodule(norm_path)
            layer.eval()
            norm.eval()
            if isinstance(layer, nn.Linear):
                fused[layer_path] = fuse_linear_bn_eval(layer, norm)
            else:
                fused[layer_path] = fuse_conv_bn_eval(layer, norm, transpose=layer.transposed)
            done.append(Folded(layer_path, norm_path, type(layer).__name__, type(norm).__name__))
    for layer_path, norm_path in plan.pairs:
        model.set_submodule(layer_path, fused[layer_path])
        model.set_submodule(norm_path, nn.Identity())
    return done
