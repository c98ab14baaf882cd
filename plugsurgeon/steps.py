"""Replaying recorded steps (surgery now, deploy later) when a saved model is loaded."""

from __future__ import annotations

from typing import Any

from torch import nn

from plugsurgeon.errors import ModelLoadError


def replay(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    kind = step.get("kind")
    if kind == "recipe":
        from plugsurgeon.recipe import Recipe
        from plugsurgeon.surgery import apply

        recipe = Recipe(**step["recipe"])
        return apply(model, recipe, input_shape=tuple(step["input_shape"]), inplace=True).model
    if kind == "deploy":
        from plugsurgeon.deployment.deploy import rebuild

        return rebuild(model, tuple(step["input_shape"]))
    raise ModelLoadError(f"the manifest records a step of unknown kind '{kind}'", hint="it was written by a newer plugsurgeon")
