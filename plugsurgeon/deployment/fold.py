"""Conv -> BatchNorm folding, decided on the traced graph and done with torch's own fusion helpers.

A BatchNorm is folded into the layer before it only when nothing else can see the difference:
the layer's output has exactly one user (the BN), the layer and the BN modules are each called
exactly once in the traced forward (counted per module instance, whatever path a call site names
it by), and both are classes whose forward the fusion formula describes. Every BatchNorm that stays
gets a reason in the report.

Norm + activation layers (timm's BatchNormAct2d, SyncBatchNormAct, FrozenBatchNormAct2d) normalise,
then apply their ``drop`` and ``act`` children. The normalisation folds like a BatchNorm's; the
children stay at the norm's path as an nn.Sequential, so ``bn1.act`` keeps its name (and a PReLU
its weight key). Their forwards are known by identity, so a subclass that changes them is skipped.

torch.fx.experimental.optimization.fuse checks the first condition but not that the conv *module*
runs once, so a conv shared by two call sites gets corrupted there. Here it is skipped.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from plugsurgeon.deployment.fold_inside import Inside, leaves_holding, pair_inside, recorded_run
from plugsurgeon.deployment.report import Folded, Skipped
from plugsurgeon.graph.edit import put
from plugsurgeon.graph.guards import attributes_preserved, hooks_suspended, training_flags_kept
from plugsurgeon.graph.probe import Dataflow
from plugsurgeon.graph.shapes import flat_tensors, shape_of
from plugsurgeon.graph.trace import Traced, TracedPart

_STOCK_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_FORWARDS = {cls.forward for cls in _STOCK_CONVS}


def conv_forwards() -> set:
    """Conv forwards that are linear in ``weight`` and ``bias``, which is all the fusion formula needs.

    timm's Conv2dSame pads its *input* from the input size before a plain conv, so a BatchNorm after it
    folds exactly (the fused layer stays a Conv2dSame). StdConv2d standardises its weight in forward,
    which would undo the folded scale: it is not here.
    """
    same = sys.modules.get("timm.layers.conv2d_same")
    extra = {same.Conv2dSame.forward} if same is not None and hasattr(same, "Conv2dSame") else set()
    return _CONV_FORWARDS | extra
_BN_FORWARDS = {nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward}


def _frozen_bn_type() -> type[nn.Module] | None:
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return FrozenBatchNorm2d


def norm_act_forwards() -> dict:
    """Forwards that are a BatchNorm followed by the named children, from libraries already imported
    (a model holding timm layers has imported timm; nothing here imports it)."""
    timm = sys.modules.get("timm.layers.norm_act")
    if timm is None:
        return {}
    classes = ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d")
    return {getattr(timm, c).forward: ("drop", "act") for c in classes if hasattr(getattr(timm, c, None), "forward")}


def is_norm(module: nn.Module) -> bool:
    """A BatchNorm of any flavour, foldable or not (what the report accounts for)."""
    frozen = _frozen_bn_type()
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) or (frozen is not None and isinstance(module, frozen))
            or type(module).forward in norm_act_forwards())


def after_norm(norm: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children a norm + act layer applies after normalising, in order (none for a plain BatchNorm)."""
    names = norm_act_forwards().get(type(norm).forward, ())
    return [(n, m) for n in names if isinstance(m := getattr(norm, n, None), nn.Module) and not isinstance(m, nn.Identity)]


def _norm_problem(norm: nn.Module) -> str | None:
    frozen = _frozen_bn_type()
    name = type(norm).__name__
    if type(norm).forward in norm_act_forwards():
        if getattr(norm, "running_mean", None) is None or getattr(norm, "running_var", None) is None:
            return f"{name} has no running statistics: it normalises with batch statistics even in eval mode"
    elif frozen is not None and isinstance(norm, frozen):
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
        if not _linear_conv(type(layer)):
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


def _linear_conv(cls: type[nn.Module]) -> bool:
    if cls.forward in conv_forwards() - _CONV_FORWARDS:
        return True
    # a stock forward that calls an overridden _conv_forward is not stock either
    stock = next((c for c in _STOCK_CONVS if cls.forward is c.forward), None)
    return stock is not None and getattr(cls, "_conv_forward", None) is getattr(stock, "_conv_forward", None)


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


@dataclass
class FoldPlan:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (layer path, norm path), absolute
    skipped: list[Skipped] = field(default_factory=list)
    inside: dict[str, str] = field(default_factory=dict)  # norm path -> the leaf of the trace whose own run proved its pair
    checked_alone: list[str] = field(default_factory=list)  # norms folded in a module no traced part calls


def plan_folds(traced: Traced) -> FoldPlan:
    """Which BatchNorms of ``traced.model`` fold into the layer before them; the model is not modified."""
    graph = _GraphFacts(traced)
    plan = FoldPlan()
    seen: set[int] = set()
    for part in traced.parts:
        for node in part.gm.graph.nodes:
            if node.op != "call_module" or not is_norm(norm := graph.module(part, node)) or id(norm) in seen:
                continue
            seen.add(id(norm))
            norm_path = part.absolute(node.target)
            layer_node: Any = node.args[0] if node.args else None  # a call_module node where _why_not passes
            reason = _why_not(part, node, layer_node, norm, graph)
            if reason is None:
                plan.pairs.append((part.absolute(layer_node.target), norm_path))
            else:
                plan.skipped.append(Skipped(norm_path, reason))
    traced_paths = [p.path for p in traced.parts]
    left = {path: module for path, module in traced.model.named_modules() if is_norm(module) and id(module) not in seen}
    inside = _plan_inside(traced, left, graph, plan)
    for path, module in left.items():
        if path not in inside:
            plan.skipped.append(Skipped(path, _why_not_called(path, module, traced_paths, graph)))
    return plan


def _plan_inside(traced: Traced, norms: dict[str, nn.Module], graph: _GraphFacts, plan: FoldPlan) -> set[str]:
    """BatchNorms inside a layer the trace keeps as one call (see fold_inside): planned or skipped with the
    reason read from the layer's own run. Returns the paths accounted for."""
    runs: dict[str, Dataflow | str] = {}
    done = set()
    for norm_path, inside in leaves_holding(traced, list(norms), graph.module).items():
        if inside.path not in runs:
            runs[inside.path] = recorded_run(inside)
        run = runs[inside.path]
        where = f"inside '{inside.path}' ({type(inside.module).__name__}; {inside.why})"
        reason = run if isinstance(run, str) else None
        if reason is None:
            layer_path, reason = pair_inside(inside, cast(Dataflow, run), norm_path)
            if layer_path is not None:
                reason = _why_not_inside(traced.model, layer_path, norm_path, inside, graph) or ""
                if not reason and inside.outside_parts:
                    reason = _changes_alone(inside, layer_path, norm_path) or ""
        if reason:
            plan.skipped.append(Skipped(norm_path, f"{where}: {reason}"))
        else:
            plan.pairs.append((cast(str, layer_path), norm_path))
            plan.inside[norm_path] = inside.path
            if inside.outside_parts:
                plan.checked_alone.append(norm_path)
        done.add(norm_path)
    return done


def _changes_alone(inside: Inside, layer_path: str, norm_path: str) -> str | None:
    """Outside every traced part, deploy's verification does not reach: the module holding the pair is
    compared with a folded copy of itself, on random inputs of its recorded shapes."""
    prefix = inside.path + "."
    folded = copy.deepcopy(inside.module).eval()
    apply_folds(folded, FoldPlan(pairs=[(layer_path[len(prefix):], norm_path[len(prefix):])]))
    args, kwargs = inside.example()
    with hooks_suspended(inside.module), training_flags_kept(inside.module, False), attributes_preserved(inside.module), torch.no_grad():
        expected, actual = flat_tensors(inside.module(*args, **kwargs)), flat_tensors(folded(*args, **kwargs))
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual, strict=True)):
        return "folding it changes what the module holding it returns"
    for e, a in zip(expected, actual, strict=True):
        if e.numel() == 0:
            continue
        diff, scale = float((e.float() - a.float()).abs().max()), float(e.float().abs().max())
        if diff > 1e-4 + 1e-4 * scale:
            return f"folding it changes the output of the module holding it by {diff:.3g} (no traced part calls that module, so it was compared alone)"
    return None


def _why_not_inside(model: nn.Module, layer_path: str, norm_path: str, inside: Inside, graph: _GraphFacts) -> str | None:
    layer, norm = model.get_submodule(layer_path), model.get_submodule(norm_path)
    problem = _norm_problem(norm) or _layer_problem(layer)
    if problem:
        return problem
    if not inside.outside_parts and graph.calls[id(inside.module)] != 1:
        return f"the layer holding them runs {graph.calls[id(inside.module)]} times in the traced forward"
    paths = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    if paths[id(layer)] != 1 or paths[id(norm)] != 1 or graph.calls[id(layer)] or graph.calls[id(norm)]:
        return "the conv or the BatchNorm is shared with another part of the model"
    if graph.reads(layer) or graph.reads(norm):
        return "the traced forward also reads their tensors directly"
    channels = cast(nn.modules.conv._ConvNd, layer).out_channels
    weight = cast(torch.Tensor | None, getattr(norm, "weight", None))
    if weight is not None and weight.shape[0] != channels:
        return f"BatchNorm has {weight.shape[0]} features, the conv has {channels} outputs"
    return None


class _GraphFacts:
    """Modules by identity: a call site may name a shared instance by its own path, so two targets
    can be one module, and ``calls`` counts the instance, not the name."""

    def __init__(self, traced: Traced) -> None:
        self.calls: Counter[int] = Counter()
        self.read: set[int] = set()  # ids of tensors and modules the graphs read with get_attr
        for part in traced.parts:
            for node in part.gm.graph.nodes:
                if node.op == "call_module":
                    self.calls[id(self.module(part, node))] += 1
                elif node.op == "get_attr":
                    self.read.add(id(_attribute(part.gm, node.target)))

    @staticmethod
    def module(part: TracedPart, node: fx.Node) -> nn.Module:
        return part.gm.get_submodule(cast(str, node.target))  # a call_module node's target is a path

    def reads(self, module: nn.Module) -> bool:
        """Whether a graph reads the module or one of its tensors directly, not through a call."""
        inside = [module, *module.modules(), *module.parameters(), *module.buffers()]
        return any(id(x) in self.read for x in inside)


def _attribute(root: nn.Module, target: str) -> Any:
    value: Any = root
    for name in target.split("."):
        value = getattr(value, name, None)
    return value


def _why_not_called(path: str, module: nn.Module, traced_paths: list[str], graph: _GraphFacts) -> str:
    inside = "" in traced_paths or any(path.startswith(p + ".") for p in traced_paths)
    if not inside:
        return "in a part of the model that torch.fx cannot trace"
    if graph.reads(module):
        return ("the traced forward reads its tensors directly (its forward was traced through, or another module "
                "uses them), not through one call of the module, so there is no single call to fold")
    return "not called in the traced forward"


def _why_not(part: TracedPart, node: fx.Node, layer_node: Any, norm: Any, graph: _GraphFacts) -> str | None:
    problem = _norm_problem(norm)
    if problem:
        return problem
    if len(node.args) != 1 or node.kwargs:
        return "BatchNorm is called with extra arguments"
    if not isinstance(layer_node, fx.Node) or layer_node.op != "call_module" or not _is_layer(layer := graph.module(part, layer_node)):
        return f"its input is {_describe(part, layer_node, graph.module)}, not a conv or linear layer"
    layer_path = part.absolute(cast(str, layer_node.target))
    kind = "conv" if isinstance(layer, nn.modules.conv._ConvNd) else "linear"
    problem = _layer_problem(layer)
    if problem:
        return problem
    if len(layer_node.users) != 1:
        others = sorted(u.name for u in layer_node.users if u is not node)
        return f"{kind} output has another user ({', '.join(others[:3])}), which needs the unnormalised values"
    if graph.calls[id(layer)] != 1:
        return f"{kind} module called {graph.calls[id(layer)]} times ('{layer_path}'); folding would change every call"
    if graph.calls[id(norm)] != 1:
        return f"BatchNorm module called {graph.calls[id(norm)]} times; folding would change every call"
    if graph.reads(layer):
        return f"the weights of '{layer_path}' are also read directly in forward"
    if graph.reads(norm):
        return "its tensors are also read directly in forward"
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


def _describe(part: TracedPart, node: Any, module_of: Callable[[TracedPart, fx.Node], nn.Module]) -> str:
    if not isinstance(node, fx.Node):
        return "not a traced value"
    if node.op == "call_module":
        return f"'{part.absolute(cast(str, node.target))}' ({type(module_of(part, node)).__name__})"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', str(node.target))}()"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "placeholder":
        return f"the input of '{part.path or '(model)'}'"
    return f"{node.op} '{node.target}'"


def apply_folds(model: nn.Module, plan: FoldPlan) -> list[Folded]:
    """Fold every planned pair in ``model`` (modified in place).

    The fused layer takes the layer's place and the norm's place gets what the norm did after
    normalising: nn.Identity for a BatchNorm, an nn.Sequential of ``drop`` and ``act`` for timm's
    BatchNormAct2d. A module registered under several paths is replaced under all of them.
    """
    replaced: dict[int, nn.Module] = {}
    done: list[Folded] = []
    with torch.no_grad():
        for layer_path, norm_path in plan.pairs:
            layer, norm = model.get_submodule(layer_path), model.get_submodule(norm_path)
            layer.eval()
            norm.eval()
            # ``norm`` is any BatchNorm with running statistics (FrozenBatchNorm2d is no _BatchNorm): duck-typed.
            if isinstance(layer, nn.Linear):
                replaced[id(layer)] = fuse_linear_bn_eval(layer, norm)  # type: ignore[arg-type]  # duck-typed norm
            else:
                conv = cast(nn.modules.conv._ConvNd, layer)  # a planned pair's layer is a conv or a linear
                replaced[id(layer)] = fuse_conv_bn_eval(conv, norm, transpose=conv.transposed)  # type: ignore[arg-type]  # duck-typed norm
            rest = after_norm(norm)
            replaced[id(norm)] = nn.Sequential(OrderedDict(rest)) if rest else nn.Identity()
            done.append(Folded(layer_path, norm_path, type(layer).__name__, type(norm).__name__, kept=[name for name, _ in rest],
                               inside=plan.inside.get(norm_path, "")))
    put(model, {path: replaced[id(model.get_submodule(path))] for path in _paths_of(model, replaced)})
    return done


def _paths_of(model: nn.Module, modules: dict[int, nn.Module]) -> list[str]:
    """Every path of the given modules, deepest first, so a replaced parent cannot hide a child's path."""
    paths = [path for path, m in model.named_modules(remove_duplicate=False) if path and id(m) in modules]
    return sorted(paths, key=lambda p: p.count("."), reverse=True)
