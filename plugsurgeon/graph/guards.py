"""Guards that put a module back exactly as it was after surgery looked at it: plain attributes a forward
wrote, the caller's hooks, and every module's train/eval flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def attributes_preserved(model: nn.Module):
    """Undo attribute writes that a forward makes while traced (torchvision's AnchorGenerator caches
    its anchors on itself; a failed trace would leave Proxies in the user's model)."""
    saved = []
    for module in model.modules():
        state = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
        saved.append((module, state))
    try:
        yield
    finally:
        for module, state in saved:
            for key in [k for k in vars(module) if k not in state and k not in ("_parameters", "_buffers", "_modules")]:
                del module.__dict__[key]
            for key, value in state.items():
                if module.__dict__.get(key, _MISSING) is not value:
                    module.__dict__[key] = value


_MISSING = object()
HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
                "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def hooks_suspended(model: nn.Module):
    """The caller's hooks do not run while surgery looks at the model: they were written for real
    values and may read them (they would fail on fake tensors) or record them (our runs are not theirs).
    The hook tables are set aside whole and put back as they were."""
    saved = []
    for module in model.modules():
        tables = {name: module.__dict__[name] for name in HOOK_TABLES if name in module.__dict__}
        saved.append((module, tables))
        for name, table in tables.items():
            module.__dict__[name] = type(table)()
    try:
        yield
    finally:
        for module, tables in saved:
            module.__dict__.update(tables)


@contextlib.contextmanager
def training_flags_kept(model: nn.Module, training: bool | None = None) -> Iterator[None]:
    """Every module's train/eval flag is put back afterwards, each as it was (a frozen BatchNorm inside a
    training model stays in eval mode); ``training`` sets the whole model to that mode meanwhile."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield
    finally:
        for module, flag in flags:
            module.training = flag
