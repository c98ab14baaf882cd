"""plugsurgeon: find insertion points by role, splice in plug-and-play modules, deploy with a numeric guarantee."""

from __future__ import annotations

__version__ = "0.1.0"

from plugsurgeon.errors import (
    ModelLoadError,
    PlugsurgeonError,
    RecipeError,
    SiteError,
    TraceError,
    UnknownNameError,
    VerificationError,
)
from plugsurgeon.io import load, load_weights, save
from plugsurgeon.models import load_model
from plugsurgeon.plugins.registry import PluginSpec, catalog, get_plugin, register_plugin
from plugsurgeon.recipe import Recipe, Step, builtin_recipes, load_recipe, parse_recipe
from plugsurgeon.sites.select import Where
from plugsurgeon.sites.site import ROLES, Site
from plugsurgeon.surgery import Plan, SurgeryResult, apply, apply_plan, plan
from plugsurgeon.api import find_sites, trace

__all__ = [
    "__version__",
    "ModelLoadError",
    "PlugsurgeonError",
    "RecipeError",
    "SiteError",
    "TraceError",
    "UnknownNameError",
    "VerificationError",
    "load",
    "load_weights",
    "save",
    "load_model",
    "PluginSpec",
    "catalog",
    "get_plugin",
    "register_plugin",
    "Recipe",
    "Step",
    "builtin_recipes",
    "load_recipe",
    "parse_recipe",
    "Where",
    "ROLES",
    "Site",
    "Plan",
    "SurgeryResult",
    "apply",
    "apply_plan",
    "plan",
    "find_sites",
    "trace",
]
