"""Shapes for every node, from torch.fx's ShapeProp run on fake tensors: no real compute, no activation memory."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.func import functional_call
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map

from plugsurgeon.errors import PlugsurgeonError, TraceError, first_line
from plugsurgeon.graph.flops import TotalFlops
from plugsurgeon.graph.guards import attributes_preserved, hooks_suspended, training_flags_kept
from plugsurgeon.graph.probe import structure_only

# The input a model is traced at when the caller names none: an ImageNet-sized RGB image.
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def validate_input_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) < 3 or any(d <= 0 for d in dims):
        raise PlugsurgeonError(
            f"input shape {shape!r} is not a list of positive sizes",
            hint="pass it as N,C,H,W, for example input_shape=(1, 3, 224, 224)",
            cli_hint="pass it as N,C,H,W, for example --input-shape 1,3,224,224",
        )
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        # Some models must run for real once (a detector's transform, a head reading its strides):
        # an input this large would allocate gigabytes just to find sites.
        raise PlugsurgeonError(
            f"input shape {dims} has {math.prod(dims):,} elements, more than the {MAX_INPUT_ELEMENTS:,} surgery needs to see a model",
            hint="sites and shapes do not change with size past a few hundred pixels: pass for example input_shape=(1, 3, 512, 512)",
            cli_hint="sites and shapes do not change with size past a few hundred pixels: pass for example --input-shape 1,3,512,512",
        )
    return dims


MAX_INPUT_ELEMENTS = 1 << 26  # 64M values: 1 x 3 x 4096 x 4096 fits, 1 x 3 x 100000 x 100000 does not


def fake_inputs_like(example: tuple[Any, ...], mode: FakeTensorMode | None = None) -> tuple[Any, ...]:
    mode = mode or FakeTensorMode(allow_non_fake_inputs=True)
    return tree_map(lambda v: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v, example)


def propagate_shapes(gm: fx.GraphModule, fake_inputs: tuple[Any, ...], *, where: str) -> tuple[int, tuple]:
    """Fill ``node.meta['tensor_meta']``; return the FLOPs torch's formulas count on the way and the
    output's structure (``output_structure``) in eval mode.

    Fake tensors first (no compute, no memory). A graph holding a module that reads tensor values
    (a detection head building anchors from its stride buffer) cannot run on them; it runs once for
    real on zeros instead, in eval mode, without gradients, and without keeping any change to the
    model. A failure names the input shape that broke it.
    """

    try:
        with hooks_suspended(gm):
            return _propagate(gm, fake_inputs, _mode_of(fake_inputs))
    except Exception as fake_error:  # noqa: BLE001 - ShapeProp re-raises whatever the model raised
        if not needs_values(fake_error):
            raise _shape_error(fake_error, fake_inputs, where) from None
    real_inputs = tree_map(lambda v: torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v, fake_inputs)
    try:
        with training_flags_kept(gm, False), torch.no_grad(), attributes_preserved(gm), hooks_suspended(gm):
            return _propagate(gm, real_inputs, None)
    except Exception as error:  # noqa: BLE001
        raise _shape_error(error, fake_inputs, where) from None


def _propagate(gm: fx.GraphModule, inputs: tuple[Any, ...], mode: FakeTensorMode | None) -> tuple[int, tuple]:

    # Built outside any fake mode, ShapeProp runs the model's own modules: given a fake mode it would
    # deep-copy the whole model into fake tensors first, which costs more than the run itself. The
    # model's state is swapped for blank fake tensors instead.
    propagation = ShapeProp(gm)
    # ShapeProp prints a traceback before re-raising; the core never prints.
    with contextlib.redirect_stderr(io.StringIO()), TotalFlops() as counter:
        if mode is None:
            output = propagation.propagate(*inputs)
        else:
            state = _blank_state(gm, mode)
            # Shapes do not depend on the mode, but train-mode BatchNorm rejects a 1x1 map at batch 1.
            # The model's own modules run: what their forwards store on themselves is put back.
            with training_flags_kept(gm, False), attributes_preserved(gm), mode:
                output = functional_call(_Propagating(propagation), {f"gm.{k}": v for k, v in state.items()}, inputs,
                                         strict=False, tie_weights=True)
    return counter.total, output_structure(output)


def output_structure(output: Any) -> tuple:
    """An output's pytree layout with each tensor's shape and dtype: what callers of a model rely on."""
    leaves, spec = tree_flatten(output)
    described = tuple((tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__ for v in leaves)
    # An fx GraphModule returns a plain dict where the module returned an OrderedDict (same keys, same
    # order): that is the same output to every caller that does not test the exact type.
    return (str(spec).replace("TreeSpec(OrderedDict,", "TreeSpec(dict,"), described)


class _Propagating(nn.Module):
    """ShapeProp as a module, so that ``functional_call`` can lend its graph module fake state."""

    def __init__(self, propagation: ShapeProp) -> None:
        super().__init__()
        self.gm = propagation.module
        self.propagation = propagation

    def forward(self, *args: Any) -> Any:
        return self.propagation.propagate(*args)


def _blank_state(module: nn.Module, mode: FakeTensorMode) -> dict[str, torch.Tensor]:
    """A fake tensor of the same size, strides, dtype and device for each parameter and buffer (one per
    tensor, so that tied names stay tied); nothing here reads values or gradients."""
    blanks: dict[int, torch.Tensor] = {}
    for _name, t in named_state(module):
        if id(t) not in blanks:
            blanks[id(t)] = blank_like(t, mode)
    return {name: blanks[id(t)] for name, t in named_state(module)}


def blank_like(t: torch.Tensor, mode: FakeTensorMode) -> torch.Tensor:
    """A fake tensor of ``mode`` with ``t``'s size, strides, dtype and device.

    Wrapped around a meta tensor, as the mode wraps every op's output: creating it with an op inside
    the mode costs six times as much (its dispatch cache hashes every call), which was a third of
    propagating a ResNet-50's shapes. Made with an op in the mode where this torch's FakeTensor takes
    other arguments."""
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    try:
        return FakeTensor(mode, meta, t.device)
    except TypeError:
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)


def named_state(module: nn.Module, *, with_parameters: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``module`` by every name it has (a tied weight under each of its names)."""
    if with_parameters:
        yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def needs_values(error: Exception) -> bool:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (DataDependentOutputException, DynamicOutputShapeException)):
            return True
        cause = cause.__cause__ or cause.__context__
    return "_local_scalar_dense" in str(error) or "data-dependent" in str(error)


def _shape_error(error: Exception, inputs, where: str) -> TraceError:
    shapes = [tuple(t.shape) for t in flat_tensors(inputs)]
    cause = error.__cause__ or error  # ShapeProp wraps the model's own error with node metadata
    return TraceError(
        f"{where} does not run on inputs of shape {shapes}: {first_line(cause)}",
        hint="pass the shape the model expects as input_shape=(N, C, H, W)",
        cli_hint="pass the shape the model expects with --input-shape N,C,H,W",
    )


def flat_tensors(tree) -> list[torch.Tensor]:
    """The tensors of a nested structure of inputs or outputs, in pytree order."""
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _mode_of(fake_inputs) -> FakeTensorMode | None:
    for tensor in flat_tensors(fake_inputs):
        mode = getattr(tensor, "fake_mode", None)
        if mode is not None:
            return mode
    return None


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def record_module_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """Inputs of every submodule's first call during one eval forward, for tracing untraceable models in parts.

    Models that fx cannot trace are exactly those whose forward depends on values (image resizing,
    proposal filtering), so this forward runs for real, in eval mode, without gradients -- with its
    convolutions, matrix products and region pooling answering zeros of their shape
    (``probe.structure_only``), which takes a fifth of the time or less at a detector's 800 px. Where
    that run fails, or leaves some module an empty input (zero features can select zero boxes: Mask
    R-CNN's mask head would be traced on none), the forward runs again with real compute. The
    recorded tensors are replaced by empty tensors of the same shape and dtype.
    """
    try:
        with structure_only():
            records = _record_module_inputs(model, example)
        if not any(0 in t.shape for t in flat_tensors(records)):
            return records
    except TraceError:
        pass
    return _record_module_inputs(model, example)


def _record_module_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    records: dict[str, tuple[tuple, dict]] = {}

    def hook(path):
        def record(module: nn.Module, args, kwargs):
            if path not in records:
                detach = lambda v: torch.empty(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v  # noqa: E731
                records[path] = (tree_map(detach, args), tree_map(detach, kwargs))

        return record


    # The caller's hooks are set aside; ours go into the emptied tables and leave with them. Every
    # train/eval flag is put back as it was: frozen BatchNorms stay frozen.
    with hooks_suspended(model), training_flags_kept(model):
        for path, module in model.named_modules():
            if path:
                module.register_forward_pre_hook(hook(path), with_kwargs=True)
        try:
            model.eval()
            with torch.no_grad(), attributes_preserved(model):
                model(example)
        except Exception as error:  # noqa: BLE001
            raise TraceError(
                f"{type(model).__name__} cannot be traced by torch.fx and does not run on an input of shape "
                f"{tuple(example.shape)}: {first_line(error)}",
                hint="pass the shape the model expects as input_shape=(N, C, H, W)",
                cli_hint="pass the shape the model expects with --input-shape N,C,H,W",
            ) from None
    return records
