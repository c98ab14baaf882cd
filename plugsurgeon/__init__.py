"""plugsurgeon: find insertion points by role, splice in plug-and-play modules, deploy with a numeric guarantee.

Attributes load lazily, so ``plugsurgeon --help`` and ``import plugsurgeon`` do not import torch until
something that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "PlugsurgeonError": "plugsurgeon.errors",
    "ModelLoadError": "plugsurgeon.errors",
    "RecipeError": "plugsurgeon.errors",
    "SiteError": "plugsurgeon.errors",
    "TraceError": "plugsurgeon.errors",
    "UnknownNameError": "plugsurgeon.errors",
    "VerificationError": "plugsurgeon.errors",
    "load": "plugsurgeon.store.saved",
    "load_weights": "plugsurgeon.store.saved",
    "save": "plugsurgeon.store.saved",
    "load_model": "plugsurgeon.store.loader",
    "PluginArgs": "plugsurgeon.plugins.args",
    "PluginSpec": "plugsurgeon.plugins.registry",
    "catalog": "plugsurgeon.plugins.registry",
    "get_plugin": "plugsurgeon.plugins.registry",
    "register_plugin": "plugsurgeon.plugins.registry",
    "safe_globals": "plugsurgeon.plugins.safe",
    "Recipe": "plugsurgeon.surgery.recipe",
    "Step": "plugsurgeon.surgery.recipe",
    "builtin_recipes": "plugsurgeon.surgery.recipe",
    "load_recipe": "plugsurgeon.surgery.recipe",
    "parse_recipe": "plugsurgeon.surgery.recipe",
    "Where": "plugsurgeon.sites.select",
    "ROLES": "plugsurgeon.sites.site",
    "Site": "plugsurgeon.sites.site",
    "Plan": "plugsurgeon.surgery.plan",
    "PlannedEdit": "plugsurgeon.surgery.edits",
    "PlannedInsertion": "plugsurgeon.surgery.edits",
    "PlannedReplacement": "plugsurgeon.surgery.edits",
    "PlannedStrideOne": "plugsurgeon.surgery.edits",
    "SurgeryResult": "plugsurgeon.surgery.commit",
    "apply": "plugsurgeon.surgery.commit",
    "apply_plan": "plugsurgeon.surgery.commit",
    "plan": "plugsurgeon.surgery.plan",
    "edited_source": "plugsurgeon.graph.edited",
    "find_sites": "plugsurgeon.sites.find",
    "trace": "plugsurgeon.graph.trace",
    "deploy": "plugsurgeon.deployment.deploy",
    "DeployResult": "plugsurgeon.deployment.deploy",
    "export_onnx": "plugsurgeon.export.onnx",
    "picture": "plugsurgeon.drawing.draw",
}
# Framework integrations, as submodules (ps.timm.register(...), ps.ultralytics.train(...)); left out of
# __all__, since each imports its framework, an optional extra.
_INTEGRATIONS = {"timm": "plugsurgeon.integrations.timm", "ultralytics": "plugsurgeon.integrations.ultralytics",
                 "sweep": "plugsurgeon.sweep"}  # the placement search (ps.sweep.run), on the optional optuna

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _INTEGRATIONS:
        value = importlib.import_module(_INTEGRATIONS[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'plugsurgeon' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from plugsurgeon.deployment.deploy import DeployResult, deploy
    from plugsurgeon.drawing.draw import picture
    from plugsurgeon.errors import (
        ModelLoadError,
        PlugsurgeonError,
        RecipeError,
        SiteError,
        TraceError,
        UnknownNameError,
        VerificationError,
    )
    from plugsurgeon.export.onnx import export_onnx
    from plugsurgeon.graph.edited import edited_source
    from plugsurgeon.graph.trace import trace
    from plugsurgeon.plugins.args import PluginArgs
    from plugsurgeon.plugins.registry import PluginSpec, catalog, get_plugin, register_plugin
    from plugsurgeon.plugins.safe import safe_globals
    from plugsurgeon.sites.find import find_sites
    from plugsurgeon.sites.select import Where
    from plugsurgeon.sites.site import ROLES, Site
    from plugsurgeon.store.loader import load_model
    from plugsurgeon.store.saved import load, load_weights, save
    from plugsurgeon.surgery.commit import SurgeryResult, apply, apply_plan
    from plugsurgeon.surgery.edits import PlannedEdit, PlannedInsertion, PlannedReplacement, PlannedStrideOne
    from plugsurgeon.surgery.plan import Plan, plan
    from plugsurgeon.surgery.recipe import Recipe, Step, builtin_recipes, load_recipe, parse_recipe
