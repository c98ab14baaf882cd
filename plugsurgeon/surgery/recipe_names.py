"""A recipe's plugin and role names, checked before torch is imported.

``plugsurgeon apply resnet18 --recipe mine.yaml`` with ``plugin: cbma`` or ``at: residual.brnach`` inside
should say so at once, not after torch and the model have loaded. Both lists are known without torch: the
built-in plugins are those of ``catalog.json`` (generated from the registry, and kept equal to it by a
test), the roles are the role table itself (``sites/roles.py`` imports no torch).

A plugin that is not built in may still exist: registered in this process already (the registry module is
then imported, and planning checks the name), or by the user's own code that the model spec imports (a
``package.module:factory`` model). Such a name is left for the schema check (``load_recipe``), which runs
once that code is imported.
"""

from __future__ import annotations

import sys

from plugsurgeon.errors import UnknownNameError, did_you_mean
from plugsurgeon.plugins.catalog import load as load_catalog
from plugsurgeon.sites.roles import active_roles

_REGISTRY_MODULE = "plugsurgeon.plugins.registry"


def builtin_plugin_names() -> list[str]:
    """The names of the built-in plugins, read from ``catalog.json`` (no torch, no plugin imported).

    Returns:
        The names, sorted.
    """
    return sorted(entry["name"] for entry in load_catalog())


def check_step_names(data: object, source: str, *, user_plugins: bool = False) -> list[str]:
    """Refuse a step whose plugin or role name is unknown; what the schema check finds later is left to it.

    Args:
        data: The recipe's YAML data (``read_yaml``); anything but a mapping of steps is left to the schema.
        source: Where it was read from, for messages.
        user_plugins: Whether code that can register plugins runs before the recipe is loaded (the model
            spec names the user's module).

    Returns:
        The plugin names that are not built in but may be registered (in this process, or by the user's
        module): the caller loads that module before the recipe.

    Raises:
        UnknownNameError: A step names a plugin no one can register, or a role of no role table.
    """
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return []
    builtin = builtin_plugin_names()
    later = []
    for step in steps:
        if not isinstance(step, dict):
            continue
        plugin, at = step.get("plugin"), step.get("at")
        if isinstance(plugin, str) and plugin not in builtin:
            if not (user_plugins or _REGISTRY_MODULE in sys.modules):
                suggestion = did_you_mean(plugin, builtin)
                raise UnknownNameError(f"{source}: unknown plugin '{plugin}'" + (f"; {suggestion}" if suggestion else ""),
                                       hint="`plugsurgeon plugins` lists the catalog")
            later.append(plugin)
        if isinstance(at, str):
            try:
                active_roles().check(at)
            except UnknownNameError as error:
                raise UnknownNameError(f"{source}: {error.message}", hint=error.hint, cli_hint=error.cli_hint) from None
    return later
