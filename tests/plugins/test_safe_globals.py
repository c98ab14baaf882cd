"""Checkpoints holding plugin modules load with ``torch.load(weights_only=True)`` once
``safe_globals()`` is allow-listed, and are refused without it (issue 15, point 1).

Only replacement plugins and plain containers of plugins are saved whole here: an edit that inserts
a module into a block makes that block a torch.fx GraphModule, which pickles its generated code and
so never loads weights-only.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torchvision
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.safe import safe_globals
from plugsurgeon.sites.site import ROLES, role_matches
from tests.nets import TinyFPN, TinyResNet, randomize_batchnorm

INPUT = (2, 3, 32, 32)

# What a caller allows to load the unedited resnet18 whole: its own classes, torchvision's and torch.nn's.
RESNET_CLASSES = sorted({type(m) for m in torchvision.models.resnet18().modules()}, key=lambda c: c.__qualname__)


def saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def load_weights_only(buffer: io.BytesIO, allowed: list[type]):
    buffer.seek(0)
    with torch.serialization.safe_globals(allowed):
        return torch.load(buffer, weights_only=True)


def test_lists_every_plugin_class_and_the_torch_modules_they_hold():
    listed = safe_globals()
    assert listed == safe_globals() and len(set(listed)) == len(listed)
    for name, spec in ps.catalog().items():
        assert set(spec.classes) <= set(listed), name
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Sequential} <= set(listed)
    assert nn.Module not in listed and torch.fx.GraphModule not in listed
    assert all(c.__module__.startswith(("plugsurgeon.plugins.", "torch.nn.modules.")) for c in listed)


def test_resnet_with_acnet_saved_whole_loads_weights_only_and_computes_the_same():
    model = randomize_batchnorm(ps.apply(torchvision.models.resnet18(num_classes=10), "acnet", input_shape=(1, 3, 64, 64)).model).eval()
    assert type(model.layer1[0].conv1).__name__ == "ACBlock"  # replaced in place: the block stays a BasicBlock
    buffer = saved(model)
    with pytest.raises(pickle.UnpicklingError, match="ACBlock"):
        load_weights_only(buffer, RESNET_CLASSES)  # the host's classes alone are not enough
    loaded = load_weights_only(buffer, [*safe_globals(), *RESNET_CLASSES]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_container_of_plugins_loads_weights_only():
    cbam = ps.get_plugin("cbam").factory(channels=16)
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), cbam)).eval()
    buffer = saved(model)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buffer, weights_only=True)
    loaded = load_weights_only(buffer, safe_globals()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def _first_edit(name: str):
    """The plugin applied at the first role it declares that a tiny host has a site for."""
    spec = ps.get_plugin(name)
    for role in sorted({r for r in ROLES if any(role_matches(r, declared) for declared in spec.roles)}):
        host = randomize_batchnorm(TinyFPN() if role.startswith(("neck", "upsample")) else TinyResNet()).eval()
        step = ps.Step(plugin=name, at=role, where=dict(spec.suggested_where))
        try:
            return ps.apply(host, ps.Recipe(name="safe", steps=[step]), input_shape=INPUT, inplace=True)
        except ps.SiteError:
            continue
    pytest.fail(f"no tiny host has a site for plugin '{name}'")


@pytest.mark.parametrize("name", sorted(ps.catalog()))
def test_every_registered_plugin_round_trips_weights_only(name: str):
    """Each plugin module, as surgery built it, saved whole (in a list) and loaded weights-only:
    the same class, the same state, the same output on the inputs it saw inside the model."""
    result = _first_edit(name)
    model = result.model.eval()
    modules = [model.get_submodule(edit.module) for edit in result.report.edits]
    inputs: dict[int, tuple] = {}
    handles = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(id(m), args)) for m in modules]
    with torch.no_grad():
        model(torch.randn(INPUT))
    for handle in handles:
        handle.remove()

    loaded = load_weights_only(saved(modules), safe_globals())
    for original, copy in zip(modules, loaded, strict=True):
        assert type(copy) is type(original)
        assert copy.state_dict().keys() == original.state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(copy.eval()(*inputs[id(original)]), original(*inputs[id(original)]), rtol=0, atol=0)
