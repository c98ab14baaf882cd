"""Independent counts of residual merges, from an eager forward: no plugsurgeon code is used here.

`count_adds` runs a model once under a TorchFunctionMode and counts every tensor addition whose two operands
are 4-D tensors of the same shape (``torch.add``, ``Tensor.add``/``add_``, ``+``, ``+=``). Every residual
merge of a convolutional network is such an add, so the count is an **upper bound** on the residual sites a
correct locator can report. It is exact for families whose only same-shape 4-D adds are block shortcuts
(ResNet, ConvNeXt v1, EfficientNet, MobileNet, CSP, GhostNet, ...). Where a family has other same-shape adds
the rule is written out in `HAND_RULES`, keyed by the model-name prefix:

- res2net*, res2next*, dla60_res2net/res2next: the hierarchical adds inside a Bottle2neck
  (``sp = sp + spx[i]``) are not block merges; one residual merge per (Dla)Bottle2neck block.
- convnextv2*: GRN adds ``x + (gamma * x * Nx + beta)`` inside each block; one merge per ConvNeXt block.
- hrnet*: the fuse layers sum branches of different resolutions (each resized to the target) and the
  classification head adds the downsampled finer level to the incremented coarser one: neither is a
  residual merge; one merge per BasicBlock / Bottleneck call.
- Reparameterisable multi-branch blocks sum parallel branches (kxk + 1x1 + identity-BN) inside the block; those
  sums fork from the block input like a projection shortcut, so a locator may count them. A range: at least
  the block-level shortcuts, at most every add. fastvit* (RepMixer, attention, MLP and CPE shortcuts),
  ghostnetv3* (one per GhostBottleneckV3), repghostnet* (one per RepGhostBottleneck), repvit* (one per
  RepViTBlock), lcnetv2* (one per RepDepthwiseSeparable with use_shortcut); repvgg* and mobileone* below.
- Channels-last blocks add (N,H,W,C) maps, which are 4-D too: mambaout*, torchvision swin_* (0 or more: a
  locator may skip them, or take them with a layout change). torchvision maxvit_t: MBConv blocks are N,C,H,W
  merges, its attention blocks are not (a range). nasnet*/pnasnet*: cells sum pairs of branch outputs, some
  with an identity input (0 or more; only the upper bound is checked).
- repvgg*, mobileone* (timm RepVggBlock, MobileOneBlock): the kxk and 1x1 (scale) branches are summed, then the
  identity-BN branch is added where the block keeps its shape. The branch sum forks from the block input like a
  projection shortcut, so a locator may count it: the rule is a range, at least one merge per block with an
  identity branch, at most every add.

Hand rules count calls of block modules with forward hooks, so a block used twice counts twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__iadd__,
         torch.Tensor.__radd__}


class SameShapeAddCounter(TorchFunctionMode):
    """Counts additions of two 4-D tensors of one shape, in call order, with their shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS:
            operands = list(args[:2]) + [kwargs[k] for k in ("other",) if k in kwargs]
            if (len(operands) >= 2 and all(isinstance(t, torch.Tensor) for t in operands[:2])
                    and operands[0].dim() == 4 and operands[0].shape == operands[1].shape):
                self.shapes.append(tuple(operands[0].shape))
        return func(*args, **kwargs)


def _forward(model: nn.Module, inputs) -> object:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(inputs)
    finally:
        model.train(was_training)


def count_adds(model: nn.Module, inputs) -> int:
    """Same-shape 4-D adds in one eval-mode eager forward of ``model(inputs)``: an upper bound on its residual merges."""
    counter = SameShapeAddCounter()
    with counter:
        _forward(model, inputs)
    return len(counter.shapes)


class CallCounter(TorchFunctionMode):
    """Counts calls of the given torch functions (``torch.nn.functional.interpolate``, ...) in an eager forward."""

    def __init__(self, funcs) -> None:
        super().__init__()
        self.funcs = set(funcs)
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.funcs:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def count_upsamples(model: nn.Module, inputs) -> int:
    """Calls of ``F.interpolate`` (which every ``nn.Upsample`` / ``UpsamplingBilinear2d`` calls) in one eval forward."""
    counter = CallCounter([torch.nn.functional.interpolate])
    with counter:
        _forward(model, inputs)
    return counter.calls


def count_calls(model: nn.Module, inputs, predicate: Callable[[nn.Module], bool | int]) -> int:
    """Forward calls of the modules for which ``predicate`` is true, in one eval-mode eager forward; an int
    from ``predicate`` weighs each call (a block with two shortcuts counts 2)."""
    calls = 0

    def hook_for(weight: int):
        def hook(*_):
            nonlocal calls
            calls += weight

        return hook

    handles = [m.register_forward_hook(hook_for(int(w))) for m in model.modules() if (w := predicate(m))]
    try:
        _forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _class_named(*names: str) -> Callable[[nn.Module], bool]:
    return lambda m: type(m).__name__ in names


def _identity_branch_blocks(m: nn.Module) -> bool:
    """timm's reparameterisable blocks (RepVGG, MobileOne) that keep their shape have an identity-BN branch."""
    return type(m).__name__ in ("RepVggBlock", "MobileOneBlock") and getattr(m, "identity", None) is not None


@dataclass(frozen=True)
class Expected:
    """The number of residual merges a correct locator reports: ``low <= found <= high``."""

    low: int
    high: int
    rule: str

    @property
    def exact(self) -> bool:
        return self.low == self.high

    def __contains__(self, found: int) -> bool:
        return self.low <= found <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.exact else f"{self.low}..{self.high}"


def _fastvit_shortcuts(m: nn.Module) -> int:
    """FastViT: RepMixer (``x + ls * (mixer(x) - norm(x))``) and ConvMlp shortcuts per RepMixerBlock, token mixer
    and MLP shortcuts per AttentionBlock, the conditional positional encoding's ``pe(x) + x``."""
    return {"RepMixerBlock": 2, "AttentionBlock": 2, "RepConditionalPosEnc": 1}.get(type(m).__name__, 0)


def _lcnetv2_shortcuts(m: nn.Module) -> bool:
    return type(m).__name__ == "RepDepthwiseSeparable" and bool(getattr(m, "use_shortcut", False))


def _none(m: nn.Module) -> bool:
    return False


# prefix -> (rule text, predicate for block modules, exact?)  exact=False: the count is a lower bound.
HAND_RULES: dict[str, tuple[str, Callable[[nn.Module], bool], bool]] = {
    "res2net": ("one per Bottle2neck", _class_named("Bottle2neck"), True),
    "res2next": ("one per Bottle2neck", _class_named("Bottle2neck"), True),
    "convnextv2": ("one per ConvNeXtBlock (GRN adds excluded)", _class_named("ConvNeXtBlock"), True),
    "hrnet": ("one per BasicBlock/Bottleneck call (fuse adds excluded)", _class_named("BasicBlock", "Bottleneck"), True),
    "dla60_res2": ("one per DlaBottle2neck", _class_named("DlaBottle2neck"), True),
    "repvgg": ("at least one per block with an identity branch", _identity_branch_blocks, False),
    "mobileone": ("at least one per block with an identity branch", _identity_branch_blocks, False),
    "fastvit": ("at least the RepMixer/attention/MLP/CPE shortcuts", _fastvit_shortcuts, False),
    "ghostnetv3": ("at least one per GhostBottleneckV3", _class_named("GhostBottleneckV3"), False),
    "repghostnet": ("at least one per RepGhostBottleneck", _class_named("RepGhostBottleneck"), False),
    "repvit": ("at least one per RepViTBlock (channel-mixer shortcut)", _class_named("RepViTBlock"), False),
    "lcnetv2": ("at least one per RepDepthwiseSeparable with use_shortcut", _lcnetv2_shortcuts, False),
    "mambaout": ("0 or more: its blocks add channels-last (N,H,W,C) maps", _none, False),
    "nasnet": ("0 or more: NAS cells sum pairs of branch outputs, some with an identity input", _none, False),
    "pnasnet": ("0 or more: NAS cells sum pairs of branch outputs, some with an identity input", _none, False),
    # torchvision builders, named "torchvision:NAME"
    "torchvision:swin": ("0 or more: its blocks add channels-last (N,H,W,C) maps", _none, False),
    "torchvision:maxvit": ("at least one per MBConv (attention blocks are channels-last)", _class_named("MBConv"), False),
}


def hand_rule(name: str) -> tuple[str, Callable[[nn.Module], bool], bool] | None:
    """The rule for ``name``: a timm name (bare or ``timm:NAME``) or ``torchvision:NAME``."""
    bare = name.removeprefix("timm:")
    for prefix, rule in HAND_RULES.items():
        if bare.startswith(prefix):
            return rule
    return None


def expected_residuals(name: str, model: nn.Module, inputs) -> Expected:
    """The independent expectation for ``name`` (see `hand_rule`): the add count, narrowed by a hand rule if one applies."""
    adds = count_adds(model, inputs)
    rule = hand_rule(name)
    if rule is None:
        return Expected(adds, adds, "same-shape 4-D adds")
    text, predicate, exact = rule
    blocks = count_calls(model, inputs, predicate)
    if blocks > adds:
        raise AssertionError(f"{name}: hand rule '{text}' counts {blocks} blocks but only {adds} same-shape adds ran")
    return Expected(blocks, blocks if exact else adds, text)
