"""Does an edited model still run, and give what the original gave?

Before surgery returns (and in a dry run, which builds the same edits) the edited model must run in
train and in eval mode wherever the original does, with the same output structure (pytree layout,
shapes, dtypes). Most edits are proven one by one (``carries_metadata``, and surgery's check that
the edited owner traces alone as inside the model); a part holding any other edit runs whole, in
both modes, next to the original, on fake tensors (``compare``). Nothing of the caller's model
changes meanwhile: state is swapped for fake (or cloned) tensors with ``torch.func.functional_call``,
training flags and plain attributes are put back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call
from torch.utils._pytree import tree_map

from plugsurgeon.errors import first_line
from plugsurgeon.graph.fake import own_fake_mode
from plugsurgeon.graph.guards import attributes_preserved, hooks_suspended, training_flags_kept
from plugsurgeon.graph.shapes import named_state, needs_values, output_structure


@dataclass(frozen=True)
class Outcome:
    """What a call gave: its output's structure, or the first line of the error it raised."""

    structure: tuple | None
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.error is None


def run_outcome(module: nn.Module, inputs: tuple[Any, ...], training: bool, mode: FakeTensorMode | None = None,
                fakes: dict[int, torch.Tensor] | None = None) -> Outcome:
    """Run ``module`` in the given mode on fake copies of ``inputs`` (real zeros where the model reads
    tensor values), without changing any of its state, flags or attributes.

    Runs that share ``mode`` share the fake copies of the tensors they have in common (converting
    every parameter costs more than the run itself); ``fakes`` maps ``id`` of a real tensor to its
    fake copy across those runs, since even the mode's own memo costs a lookup per tensor."""
    try:
        output = _run(module, inputs, training, fake=mode or FakeTensorMode(allow_non_fake_inputs=True), fakes=fakes)
    except Exception as error:  # noqa: BLE001 - the model may raise anything
        if not needs_values(error):
            return Outcome(None, f"{type(error).__name__}: {first_line(error)}")
        try:
            with torch.no_grad():
                output = _run(module, inputs, training, fake=None)
        except Exception as real_error:  # noqa: BLE001
            return Outcome(None, f"{type(real_error).__name__}: {first_line(real_error)}")
    return Outcome(output_structure(output))


def _run(module: nn.Module, inputs: tuple[Any, ...], training: bool, *, fake: FakeTensorMode | None,
         fakes: dict[int, torch.Tensor] | None = None) -> Any:
    if fake is not None:
        fakes = {} if fakes is None else fakes
        state = {}
        for name, t in named_state(module, with_parameters=True):
            if id(t) not in fakes:
                fakes[id(t)] = fake.from_tensor(t)
            state[name] = fakes[id(t)]
    else:
        # Parameters stay as they are on a real run: a forward does not write them. Buffers (BatchNorm
        # statistics) are cloned, so a train-mode check cannot move them.
        state = {name: t.detach().clone() for name, t in named_state(module, with_parameters=False)}
    # A real run reads its inputs (zeros); a fake one only their shapes (no memory is filled).
    blank = torch.zeros if fake is None else torch.empty
    args = tree_map(lambda v: blank(v.shape, dtype=v.dtype, device=v.device) if isinstance(v, torch.Tensor) else v, inputs)
    if fake is not None:
        args = tree_map(lambda v: fake.from_tensor(v) if isinstance(v, torch.Tensor) else v, args)
    with training_flags_kept(module, training), attributes_preserved(module), hooks_suspended(module), fake or contextlib.nullcontext():
        return functional_call(module, state, args, strict=False, tie_weights=True)


def train_batch(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The inputs with a batch of at least 2: train-mode BatchNorm refuses one value per channel."""

    def widen(v):
        if isinstance(v, torch.Tensor) and v.dim() >= 4 and v.shape[0] < 2:
            return torch.empty((2, *v.shape[1:]), dtype=v.dtype, device=v.device)
        return v

    return tree_map(widen, inputs)


def compare(original: nn.Module, edited: nn.Module, inputs: tuple[Any, ...], mode: FakeTensorMode | None = None,
            eval_structure: tuple | None = None, remembered: dict[bool, Outcome] | None = None) -> str | None:
    """None when ``edited`` runs wherever ``original`` runs, with the same output structure; else why not.

    ``mode``: a fake mode that already holds fake copies of the model's tensors (the trace's).
    ``eval_structure``: the original's eval-mode output structure on ``inputs`` if already known (shape
    propagation saw it); it saves the original's eval run whenever the edited model agrees with it,
    and is never the reason for a refusal (a disagreement runs the original to decide).
    ``remembered``: the original's outcomes per mode (True: train) from earlier calls on the same
    model and inputs; filled with those this call computes."""
    shared = mode or FakeTensorMode(allow_non_fake_inputs=True)
    fakes: dict[int, torch.Tensor] = {}  # the real tensors stay alive meanwhile: their ids stay theirs
    remembered = {} if remembered is None else remembered

    def original_outcome(args, training: bool) -> Outcome:
        if training not in remembered:
            remembered[training] = run_outcome(original, args, training, shared, fakes)
        return remembered[training]

    for training in (True, False):
        args = train_batch(inputs) if training else inputs
        known = None if training else eval_structure
        before = Outcome(known) if known is not None else original_outcome(args, training)
        if not before.ran:
            continue  # nothing to compare against in this mode
        after = run_outcome(edited, args, training, shared, fakes)
        if after.ran and after.structure != before.structure and known is not None:
            before = original_outcome(args, training)  # the known structure was a shortcut only
            if not before.ran:
                continue
        mode_name = "train" if training else "eval"
        if not after.ran:
            return f"the edited model fails in {mode_name} mode: {after.error}"
        if after.structure != before.structure:
            return f"the edited model's {mode_name}-mode output differs in structure from the original's"
    return None


def carries_metadata(module: nn.Module, calls: list[tuple[list[tuple[int, ...]], tuple[int, ...]]], dtype: torch.dtype,
                     device: torch.device | None = None) -> bool:
    """True when ``module``, run in train mode at a batch of 2 on fake inputs of every call, returns
    one tensor of that call's output shape (at batch 2) and of the input dtype.

    With the eval-mode run of planning (same shapes, at the model's batch) this proves an edit
    locally: a module put after a node of the same shape, or in place of a module giving the same
    shape, leaves every other node of the model seeing what it saw before, in both modes, so the
    whole-model check has nothing left to find. False sends the edit to that check (which then also
    judges a module that fails where the original model fails too)."""
    for shapes, expected in calls:
        if not shapes or any(not shape or shape[0] != expected[0] for shape in shapes):
            return False  # the batch does not run straight through: only the whole model can tell
        inputs = tuple(torch.empty((2, *shape[1:]), dtype=dtype, device=device) for shape in shapes)
        wanted = output_structure(torch.empty((2, *expected[1:]), dtype=dtype, device="meta"))
        if run_outcome(module, inputs, training=True, mode=own_fake_mode(module)).structure != wanted:
            return False
    return True

