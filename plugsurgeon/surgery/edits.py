"""The edit records of a plan: what one edit changes, as immutable data of one of three kinds.

An insertion adds a module after a site, inside its owner's forward; a replacement swaps the module a
site calls; a stride-one twin runs a strided conv at stride 1 so that the module inserted after it can
take over the stride (anti-aliased downsampling). Planning makes them from fake modules; committing
makes new records holding the real ones (``materialized``), so a plan is never changed by being applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from plugsurgeon.errors import PlugsurgeonError, RecipeError
from plugsurgeon.graph.trace import Scope
from plugsurgeon.plugins._conv import stride_one
from plugsurgeon.plugins.registry import PluginSpec
from plugsurgeon.sites.site import Site


@dataclass(frozen=True, kw_only=True)
class PlannedEdit:
    """What every kind of edit holds: the recipe step and plugin it serves, its site and its module.

    Attributes:
        step_index: The recipe step, counted from 1 as users count them.
        spec: The step's plugin.
        site: The site the edit serves.
        module: The new module: a fake one (shapes only) in a plan, the real one once materialized.
        params_added: Parameters the edit adds (less those of a replaced module it does not keep).
        flops_added: FLOPs the edit adds at the traced input shape, None when unknown.
        owner: Absolute path of the module whose forward calls the new module.
        scope: Where in the traced graph that forward is.
        args: The step's plugin arguments, to build the real module.
        dtype: The dtype of the tensors the new module joins.
        device: The device of the module it joins.
        proven: The new module keeps shapes and dtype in train and eval mode and its owner traces alone
            as inside the model: the edit needs no whole-model check.

    Examples:
        >>> planned = ps.plan(torchvision.models.resnet18(), "cbam")
        >>> edit = planned.edits[0]
        >>> type(edit).__name__, edit.site.path, edit.module_path
        ('PlannedInsertion', 'layer1.0.bn2', 'layer1.0.cbam')
    """

    # How a saved directory's manifest names this kind of edit ("after" or "replace").
    mode: ClassVar[Literal["after", "replace"]]

    step_index: int
    spec: PluginSpec
    site: Site
    module: nn.Module
    params_added: int
    flops_added: int | None
    owner: str
    scope: Scope
    args: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    proven: bool = False

    @property
    def module_path(self) -> str:
        """Where the new module sits in the edited model."""
        raise NotImplementedError

    @property
    def where(self) -> str:
        """The edit as error messages name it."""
        return f"step {self.step_index} ({self.spec.name}) at '{self.site.path}'"

    def replaced(self, model: nn.Module) -> nn.Module | None:
        """The module of ``model`` this edit swaps out, None for an insertion."""
        return None

    def materialized(self, model: nn.Module) -> PlannedEdit:
        """The same edit holding its real module, built from ``model``'s own layers."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class PlannedInsertion(PlannedEdit):
    """A module inserted after the site's node, as attribute ``attribute`` of its owner (reading the
    owner's locals ``extra_locals`` too, for a multi-input plugin).

    Examples:
        >>> edit = ps.plan(torchvision.models.resnet18(), "se").edits[0]
        >>> edit.owner, edit.attribute, edit.mode
        ('layer1.0', 'se', 'after')
    """

    mode: ClassVar[Literal["after", "replace"]] = "after"

    attribute: str
    extra_locals: tuple[int, ...] = ()
    # Inserted where all its inputs exist, read only by the site's readers that run after that point
    # (graph.edit.Insertion.on_edges): a multi-input module whose other inputs are built from the site.
    on_edges: bool = False

    @property
    def module_path(self) -> str:
        return f"{self.owner}.{self.attribute}" if self.owner else self.attribute

    def named(self, attribute: str) -> PlannedInsertion:
        """The same insertion under another attribute name."""
        return replace(self, attribute=attribute)

    def materialized(self, model: nn.Module) -> PlannedInsertion:
        module = build_plugin(self.spec, self.site, None, self.args, self.where, dtype=self.dtype, device=self.device)
        return replace(self, module=module)


@dataclass(frozen=True, kw_only=True)
class PlannedReplacement(PlannedEdit):
    """The module at ``path`` (the one the site calls) swapped for the plugin's.

    Examples:
        >>> model = torchvision.models.resnet18()
        >>> edit = ps.plan(model, "acnet").edits[0]
        >>> edit.path, type(edit.replaced(model)).__name__, type(edit.module).__name__
        ('layer1.0.conv1', 'Conv2d', 'ACBlock')
    """

    mode: ClassVar[Literal["after", "replace"]] = "replace"

    path: str

    @property
    def module_path(self) -> str:
        return self.path

    def replaced(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.path)

    def materialized(self, model: nn.Module) -> PlannedReplacement:
        module = build_plugin(self.spec, self.site, self.replaced(model), self.args, self.where, dtype=self.dtype, device=self.device)
        return replace(self, module=module)


@dataclass(frozen=True, kw_only=True)
class PlannedStrideOne(PlannedEdit):
    """The strided conv at ``path`` replaced by its stride-1 twin (same weight and bias, so the same
    parameter names), the second half of an insertion that takes over the conv's stride: neither half
    keeps the shapes alone, so they are planned, skipped and committed together. ``spec`` is the
    plugin of that insertion's step.

    Examples:
        >>> planned = ps.plan(torchvision.models.resnet18(), "antialias")
        >>> [(type(e).__name__, e.module_path) for e in planned.edits][1:3]
        [('PlannedInsertion', 'layer2.0.blur'), ('PlannedStrideOne', 'layer2.0.conv1')]
    """

    mode: ClassVar[Literal["after", "replace"]] = "replace"

    path: str

    @property
    def module_path(self) -> str:
        return self.path

    @property
    def where(self) -> str:
        return f"{super().where}, running '{self.path}' at stride 1"

    def replaced(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.path)

    def materialized(self, model: nn.Module) -> PlannedStrideOne:
        return replace(self, module=stride_one(self.replaced(model), self.path))


def build_plugin(spec: PluginSpec, site: Site, replaced: nn.Module | None, args: dict[str, Any], where: str, **options: Any) -> nn.Module:
    """``spec.build``, with a constructor's own exception turned into the user's error it is, and a
    replacement in the train/eval mode of the module it replaces."""
    try:
        module = spec.build(site, replaced, dict(args), **options)
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - constructors raise anything on bad arguments
        raise RecipeError(f"{where}: cannot build the plugin: {error}", hint=f"`plugsurgeon plugins` shows what '{spec.name}' takes") from None
    if replaced is not None:
        module.train(replaced.training)
    return module
