"""A misspelled plugin or role inside a recipe file is reported before torch is imported (it took the time to
load torch, 4-25 s, to say "unknown plugin 'cbma'"); a plugin the model's own module registers (a
``package.module:factory`` model) is not a typo: it is accepted then, and checked once that module is imported."""

from __future__ import annotations

import textwrap

import plugsurgeon as ps
from plugsurgeon.plugins.registry import BUILT_IN_MODULES
from plugsurgeon.surgery.recipe_names import builtin_plugin_names
from tests.cli.torch_free import run_cases, write_recipes

# A user's module that registers a plugin as it is imported, and builds the model the recipe edits.
USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    import plugsurgeon as ps


    @ps.register_plugin("channel_scale", roles=("conv",), mode="after", infer=lambda site, replaced: {"channels": site.channels},
                        structural=("channels",), identity_at_init=True, paper="LayerScale, arXiv:2103.17239", year=2021,
                        summary="a learnable per-channel scale")
    class ChannelScale(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.scale[:, None, None]


    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
''')


def test_the_torch_free_plugin_names_are_the_registry_built_in_ones():
    built_in = {name for name, spec in ps.catalog().items() if spec.factory.__module__ in BUILT_IN_MODULES}
    assert set(builtin_plugin_names()) == built_in and len(built_in) > 30


def test_misspelled_plugins_and_roles_in_a_recipe_are_reported_before_torch_loads(tmp_path):
    files = {
        "plugin": "name: a\nsteps:\n  - {plugin: se, at: residual.branch}\n  - {plugin: cbma, at: residual.branch}\n",
        "role": "name: b\nsteps:\n  - {plugin: se, at: residual.brnach}\n",
        "user": "name: c\nsteps:\n  - {plugin: channel_scale, at: conv}\n",
    }
    paths = write_recipes(tmp_path, files)
    (tmp_path / "user_plugins_module.py").write_text(USER_MODULE)
    cases = [[command, "resnet18", "--recipe", paths[name]] for command in ("apply", "show") for name in ("plugin", "role")]
    cases.append(["apply", "resnet18", "--recipe", "se", "--recipe", paths["plugin"]])  # the second of a chain too
    cases.append(["apply", "resnet18", "--recipe", paths["user"]])  # no module registers it: a typo
    # The model's module registers channel_scale: accepted, and applied once that module is imported.
    cases.append(["apply", "user_plugins_module:build", "--recipe", paths["user"], "--input-shape", "1,3,16,16", "--dry-run"])
    seen, ran = run_cases(cases, path=[tmp_path])
    assert seen == [[1, False]] * (len(cases) - 1) + [[0, True]], list(zip(cases, seen, strict=False))
    messages = " ".join(ran.stderr.split())
    assert "plugin.yaml: unknown plugin 'cbma'; did you mean 'cbam'" in messages
    assert "role.yaml: unknown site role 'residual.brnach'; did you mean 'residual.branch'" in messages
    assert "user.yaml: unknown plugin 'channel_scale'" in messages
    assert "channel_scale" in ran.stdout  # the dry run's plan
