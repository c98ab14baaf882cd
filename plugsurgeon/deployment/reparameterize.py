"""The reparameterization protocol: a train-time block with a ``reparameterize()`` method returns the
single module it is equivalent to in eval mode, and deploy puts that module at the block's path.

One protocol for every block (ACBlock, RepVGG, ...): nothing here knows their classes.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import torch
from torch import nn

from plugsurgeon.deployment.report import Reparameterized
from plugsurgeon.errors import PlugsurgeonError


def is_reparameterizable(module: nn.Module) -> bool:
    """Has a ``reparameterize()`` callable without arguments (a VAE's ``reparameterize(mu, logvar)``
    is another thing with the same name, and is left alone)."""
    method = getattr(module, "reparameterize", None)
    if not callable(method):
        return False
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: trust the name
        return True
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def find_reparameterizable(model: nn.Module) -> dict[int, list[str]]:
    """Outermost reparameterizable modules (a block inside another is the outer one's business),
    by identity, with every path they sit at (a module shared by two paths is converted once)."""
    found: dict[int, list[str]] = defaultdict(list)
    outer: list[str] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if any(o == "" or path.startswith(o + ".") for o in outer):
            continue
        if is_reparameterizable(module):
            outer.append(path)
            found[id(module)].append(path)
    return dict(found)


def reparameterize_all(model: nn.Module) -> tuple[nn.Module, list[Reparameterized]]:
    """Replace every reparameterizable module of ``model`` (modified in place) by its ``reparameterize()``.

    Returns the root (a new module when the root itself is such a block) and what was replaced.
    The results are put in eval mode.
    """
    found = find_reparameterizable(model)
    modules = {id(m): m for _, m in model.named_modules(remove_duplicate=False)}
    replacements: dict[str, nn.Module] = {}
    done: list[Reparameterized] = []
    for key, paths in found.items():
        block = modules[key]
        where = f"'{paths[0] or '(root)'}' ({type(block).__name__})"
        block.eval()
        try:
            with torch.no_grad():
                result = block.reparameterize()
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
        result.eval()
        for path in paths:
            replacements[path] = result
            done.append(Reparameterized(path, type(block).__name__, type(result).__name__))
    root = model
    for path, module in replacements.items():
        if path == "":
            root = module
        else:
            root.set_submodule(path, module)
    return root, done
