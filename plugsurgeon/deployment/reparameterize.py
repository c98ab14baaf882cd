"""Train-time blocks to their inference form, each by the deploy method its own library defines.

plugsurgeon's catalog blocks (ACBlock, RepVGG, ...) follow one protocol: ``reparameterize()`` returns
the single module the block equals in eval mode, and deploy puts that module at the block's path.

Blocks from other libraries bring deploy methods with other meanings under similar names: timm's
``reparameterize()`` changes the block in place and returns None (RepVGG, MobileOne, GhostNetV3,
RepGhost, LCNetV2, FastViT), and timm's ``reparameterize_model`` then walks into the block's children,
which have their own turn; timm's ``fuse()`` returns the fused module, while an Ultralytics model's
``fuse()`` rewrites the whole model in place. Calling one convention with another's expectations
breaks (ghostnetv3 returned None into a protocol that wanted a module), so those methods are called
the way their library calls them, from the table ``CONVENTIONS`` keyed by method name, on deploy's
copy of the model; what they did is reported, and verification proves the result. A method that is
only safe inside its library's model-wide pass, or that raises, is left alone and reported.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from plugsurgeon.deployment.report import LeftAlone, Reparameterized
from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.graph.edit import put
from plugsurgeon.plugins.registry import is_plugin

OWN_METHOD = "reparameterize"


@dataclass(frozen=True)
class Convention:
    """How a third-party library means one deploy method.

    Whatever the method returns, a module other than the block itself replaces the block, and
    anything else (None, the block) means it changed in place. ``descends``: after an in-place call
    the block's children get their own turn, as in timm's ``reparameterize_model``; a ``fuse()`` that
    rewrites in place already covers its subtree (Ultralytics' model-level fuse).
    """

    method: str
    used_by: str  # who defines it this way, for the reference of whoever reads the report
    descends: bool
    options: dict[str, Any] = field(default_factory=dict)  # passed when the method takes them
    alone: str | None = None  # why it is not safe to call on its own, when it is not


# In timm's order: a block with several of these methods is handled by the first.
CONVENTIONS = (
    Convention("fuse", "timm (LeViT, RepViT, TinyViT, ... return the fused module); Ultralytics models (fuse in place)",
               descends=False, options={"verbose": False}),
    Convention("reparameterize", "timm (RepVGG, MobileOne, GhostNetV3, RepGhost, LCNetV2, FastViT), in place", descends=True),
    Convention("switch_to_deploy", "timm GhostNet/RepGhost modules, RepVGG-style code, in place", descends=True),
    Convention("fuse_convs", "Ultralytics RepConv", descends=False,
               alone="its model's fuse() must also switch the block's forward; called alone it leaves a forward that reads deleted branches"),
)


def is_own_block(module: nn.Module) -> bool:
    """A plugsurgeon catalog class, which follows our protocol."""
    return type(module).__module__.startswith("plugsurgeon.") or is_plugin(module)


def callable_without_arguments(method: Any) -> bool:
    """A VAE's ``reparameterize(mu, logvar)`` or YOLO-World's ``fuse(txt_feats)`` share a name, not a meaning."""
    if not callable(method):
        return False
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: trust the name
        return True
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def is_reparameterizable(module: nn.Module) -> bool:
    """Follows plugsurgeon's own protocol: a catalog block whose ``reparameterize()`` returns its inference module."""
    return is_own_block(module) and callable_without_arguments(getattr(module, OWN_METHOD, None))


def convention_of(module: nn.Module) -> Convention | None:
    if is_own_block(module):
        return None
    for convention in CONVENTIONS:
        if callable_without_arguments(getattr(module, convention.method, None)):
            return convention
    return None


@dataclass
class Outcome:
    root: nn.Module
    reparameterized: list[Reparameterized] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)


def reparameterize_all(model: nn.Module) -> Outcome:
    """Every train-time block of ``model`` (modified in place) to its inference form, top-down.

    Our own blocks convert first, everywhere: a third-party model-wide pass (Ultralytics' ``fuse()``
    folds each ``Conv``'s BN into whatever its ``conv`` is) would otherwise reach an ACBlock first and
    fold into its square kernel alone. Returns the root (a new module when the root itself is
    replaced), what was converted and what was left alone. A module shared by several paths is
    converted once and replaced at all of them.
    """
    outcome = Outcome(model)
    for own in (True, False):
        walk = _Walk(own=own)
        walk.visit(outcome.root, "")
        outcome.root = put(outcome.root, {path: module for module, paths in walk.replacements.values() for path in paths})
        outcome.reparameterized += walk.done
        outcome.left_alone += walk.left_alone
    outcome.root.eval()
    return outcome


def find_reparameterizable(model: nn.Module) -> dict[int, list[str]]:
    """The blocks deploy would still convert, by identity in ``model``, with the paths they sit at.

    Third-party methods are tried on a copy: one with nothing left to do (a timm block already
    reparameterized) is not reported, whatever its name says. Our own blocks always convert.
    """
    trial = copy.deepcopy(model)
    done = []
    for own in (True, False):
        walk = _Walk(own=own, trial=True)
        walk.visit(trial, "")
        done += walk.done
    found: dict[int, list[str]] = {}
    for item in done:
        try:
            module = model.get_submodule(item.path)
        except AttributeError:  # created by an ancestor's in-place conversion, which is reported itself
            continue
        found.setdefault(id(module), []).append(item.path)
    return found


class _Walk:
    """timm's ``reparameterize_model`` walk, with our protocol for our blocks and a report.

    ``own``: this walk converts our blocks only (third-party ones are walked into), else third-party
    blocks only (ours are left as they are). ``trial``: our blocks are recorded without being called
    (they always convert); third-party methods still run, so only run a trial on a copy.
    """

    def __init__(self, *, own: bool, trial: bool = False) -> None:
        self.own = own
        self.trial = trial
        self.seen: set[int] = set()
        self.replacements: dict[int, tuple[nn.Module, list[str]]] = {}
        self.records: dict[int, Reparameterized] = {}
        self.done: list[Reparameterized] = []
        self.left_alone: list[LeftAlone] = []

    def visit(self, module: nn.Module, path: str) -> None:
        key = id(module)
        if key in self.seen:
            if key in self.replacements:  # a shared instance: replaced at this path too, and reported there
                self.replacements[key][1].append(path)
                if key in self.records:
                    self.done.append(replace(self.records[key], path=path))
            return
        self.seen.add(key)
        replacement, descend, record = self.convert(module, path)
        if record is not None:
            self.records[key] = record
            self.done.append(record)
        if replacement is not None:
            self.replacements[key] = (replacement, [path])
        elif descend:
            for name, child in list(module.named_children()):
                self.visit(child, f"{path}.{name}" if path else name)

    def convert(self, module: nn.Module, path: str) -> tuple[nn.Module | None, bool, Reparameterized | None]:
        """(the module that replaces this one or None, whether its children get their turn, what was done)."""
        name = type(module).__name__
        if is_reparameterizable(module):
            if not self.own:
                return None, False, None
            if self.trial:
                return None, False, Reparameterized(path, name, "?")
            result = _own(module, path)
            return result, False, Reparameterized(path, name, type(result).__name__)
        convention = convention_of(module)
        if convention is None or self.own:
            return None, True, None
        if convention.alone:
            self.left_alone.append(LeftAlone(path, name, f"{convention.method}()", convention.alone))
            return None, True, None
        return self.foreign(module, path, convention)

    def foreign(self, module: nn.Module, path: str, convention: Convention) -> tuple[nn.Module | None, bool, Reparameterized | None]:
        name, method_name = type(module).__name__, f"{convention.method}()"
        before, keep = structure(module), copy.deepcopy(module)
        method = getattr(module, convention.method)
        module.eval()
        try:
            with torch.no_grad():
                result = method(**_accepted(method, convention.options))
        except Exception as error:  # noqa: BLE001 - a third-party method may raise anything
            reason = f"{method_name} raised {type(error).__name__}: {str(error).strip()[:200]}; the block stays as it was"
            self.left_alone.append(LeftAlone(path, name, method_name, reason))
            return keep, False, None
        if isinstance(result, nn.Module) and result is not module:
            return result.eval(), False, Reparameterized(path, name, type(result).__name__, method=method_name, in_place=False)
        changed = structure(module) != before
        return None, convention.descends, Reparameterized(path, name, name, method=method_name, in_place=True) if changed else None

def _own(block: nn.Module, path: str) -> nn.Module:
    where = f"'{path or '(root)'}' ({type(block).__name__})"
    block.eval()
    try:
        with torch.no_grad():
            result = getattr(block, OWN_METHOD)()
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's method may raise anything
        raise PlugsurgeonError(f"reparameterize() of {where} failed: {type(error).__name__}: {error}",
                               hint="the block cannot be converted; deploy the model without it") from None
    if not isinstance(result, nn.Module):
        raise PlugsurgeonError(f"reparameterize() of {where} returned {type(result).__name__}, not an nn.Module",
                               hint="reparameterize() must return the equivalent module")
    if any(is_reparameterizable(m) for m in result.modules()):
        raise PlugsurgeonError(f"reparameterize() of {where} returned a module that is still reparameterizable",
                               hint="reparameterize() must return the plain inference module")
    return result.eval()


def _accepted(method, options: dict[str, Any]) -> dict[str, Any]:
    try:
        names = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in options.items() if k in names}


def structure(module: nn.Module) -> tuple:
    """What an in-place conversion changes: submodules and their classes, tensor names and shapes,
    and forwards set on instances (Ultralytics switches ``forward`` to ``forward_fuse``)."""
    modules = tuple((path, type(m).__name__, "forward" in vars(m)) for path, m in module.named_modules(remove_duplicate=False))
    tensors = tuple((k, tuple(v.shape)) for k, v in module.state_dict(keep_vars=True).items())
    return modules, tensors
