"""Edited architectures under timm names: ``timm.create_model("resnet50_cbam", pretrained=True)``.

timm builds a model, loads its pretrained weights and wraps it for ``features_only`` all inside the
architecture's own entry point (``build_model_with_cfg``, with per-architecture feature classes and
weight filters no public name reaches). So the one public place for an edit is a new entry point,
registered with ``timm.models.register_model``, that asks timm for the base exactly as the caller
asked for the edited name (same pretrained tag and overlay, same kwargs, ``features_only`` included),
then applies the recipe to what comes back. Surgery keeps every original parameter name, so the
weights timm loaded stay where they are and only the plugin modules are new; that is checked on
every build, since a recipe that renames keys would leave base checkpoints unable to load.

With ``features_only=True`` the recipe is applied to the feature network timm built (a
``FeatureListNet`` around the base's layers, or the architecture's own feature class): the edit is
in the features the caller gets, planned on that network at the registered input shape.

timm's training script names its model on the command line, so the process that runs it must
register first: a launcher that calls ``register`` and then timm's ``train.main()``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import timm
    import timm.models
except ImportError as _missing:  # pragma: no cover - depends on the environment
    from plugsurgeon.errors import PlugsurgeonError

    raise PlugsurgeonError(f"plugsurgeon's timm integration needs the timm package ({_missing})",
                           hint="pip install 'plugsurgeon[timm]'") from None
from torch import nn

from plugsurgeon.errors import PlugsurgeonError, UnknownNameError, did_you_mean
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.integrations import timm_models
from plugsurgeon.surgery.recipe import Recipe, load_recipe

__all__ = ["register"]

# timm reads "name.tag" as an architecture and a pretrained tag, and "source:id" as a hub or folder.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UNEXPECTED = "Unexpected keys ("  # how timm's load_pretrained logs the tensors a non-strict load left out


@dataclass(frozen=True)
class _Edited:
    """What a registered name builds: the base (with the pretrained tag it defaults to) and the validated recipe."""

    name: str
    base: str
    tag: str | None
    recipe: Recipe
    input_shape: tuple[int, ...]


_registered: dict[str, _Edited] = {}


def register(name: str, *, base: str, recipe: str | Path | Recipe | dict, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
             replace: bool = False) -> str:
    """Register ``name`` with timm as ``base`` edited by ``recipe``; returns ``name``.

    ``timm.create_model(name, pretrained=True, ...)`` then builds ``base`` through timm (timm loads the
    base's pretrained weights, ``pretrained_cfg_overlay=dict(file=...)`` included), applies the recipe
    in place, and returns the edited model; the name takes every pretrained tag of the base
    (``name.a1_in1k``), and every other argument goes to the base. ``base`` may carry a tag
    (``"resnet50.a1_in1k"``) to make it the default. The recipe is loaded and validated now, so a
    missing or malformed one fails here, not at the first ``create_model``. ``input_shape`` is the
    shape surgery plans at (its channels and size follow ``in_chans`` / ``img_size`` given to
    ``create_model``). A name already registered here is replaced only with ``replace=True``; timm's
    own architectures are never replaced.

    Args:
        name: The new architecture's name: letters, digits and underscores (``resnet50_cbam``).
        base: The timm architecture it edits, optionally with a pretrained tag (``resnet50.a1_in1k``).
        recipe: A built-in recipe's name, a path to a recipe YAML file, its content as a mapping, or
            a ``Recipe``.
        input_shape: The shape surgery plans at, N,C,H,W (channels and size follow ``in_chans`` and
            ``img_size`` given to ``create_model``).
        replace: Replace an edited architecture registered here under ``name`` before.

    Returns:
        ``name``.

    Raises:
        PlugsurgeonError: ``name`` is not a valid name, is ``base`` itself or one of timm's own
            architectures, is already registered (without ``replace``), or would be built from
            itself; ``input_shape`` is not N,C,H,W.
        UnknownNameError: timm has no architecture ``base``.
        RecipeError: The recipe does not load.

    Examples:
        >>> import timm
        >>> ps.timm.register("resnet50_cbam", base="resnet50.a1_in1k", recipe="cbam")
        'resnet50_cbam'
        >>> model = timm.create_model("resnet50_cbam", pretrained=True, num_classes=10)
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise PlugsurgeonError(f"'{name}' cannot be a timm model name: timm reads '.' as a pretrained tag and ':' or '/' as a source",
                               hint="use letters, digits and underscores, e.g. 'resnet50_cbam'")
    arch, tag = timm.models.split_model_name_tag(base)
    if not timm.models.is_model(arch):
        suggestion = did_you_mean(arch, timm.list_models())
        raise UnknownNameError(f"timm has no model '{arch}'" + (f"; {suggestion}" if suggestion else ""),
                               hint="timm.list_models('resnet*') lists timm's architectures")
    if name == arch:
        raise PlugsurgeonError(f"'{name}' is its own base: the edited architecture needs a name of its own",
                               hint=f"for example '{arch}_{_recipe_label(recipe)}'")
    ours = name in _registered
    if timm.models.is_model(name) and not ours:
        raise PlugsurgeonError(f"'{name}' is one of timm's own architectures; registering an edit under it would replace it for everyone",
                               hint=f"pick another name, e.g. '{name}_{_recipe_label(recipe)}'")
    if ours and not replace:
        raise PlugsurgeonError(f"'{name}' is already registered with timm as an edited architecture",
                               hint="pass replace=True to replace it, or pick another name")
    chain, step = [name, arch], _registered.get(arch)
    while step is not None:  # a base that is itself an edit: building it must not come back here
        chain.append(step.base)
        if step.base == name:
            raise PlugsurgeonError(f"'{name}' would be built from itself: {' <- '.join(chain)}",
                                   hint="register it on a base that is not built from it")
        step = _registered.get(step.base)
    edited = _Edited(name, arch, tag, load_recipe(recipe), tuple(int(n) for n in input_shape))
    if len(edited.input_shape) != 4:
        raise PlugsurgeonError(f"input_shape {edited.input_shape} is not (batch, channels, height, width)",
                               hint="for example input_shape=(1, 3, 224, 224)")
    cfgs = _pretrained_cfgs(arch, tag)
    if cfgs is None:
        timm_models.default_cfgs.pop(name, None)
    else:
        timm_models.default_cfgs[name] = cfgs
    entrypoint = _entrypoint(edited)
    setattr(timm_models, name, entrypoint)
    _registered[name] = edited
    with warnings.catch_warnings():  # replacing was asked for (or the name is new): timm's overwrite warning says nothing new
        warnings.filterwarnings("ignore", message="Overwriting", category=UserWarning)
        timm.models.register_model(entrypoint)
    return name


def _recipe_label(recipe: Any) -> str:
    if isinstance(recipe, Recipe):
        return recipe.name
    return Path(recipe).stem if isinstance(recipe, (str, Path)) else "edited"


def _pretrained_cfgs(arch: str, tag: str | None) -> Any:
    """The base's pretrained configs, for the edited name to offer the same tags and data config (None when it has none)."""
    by_name = timm.models.get_arch_pretrained_cfgs(arch)  # "resnet50.a1_in1k" -> cfg, the default first
    cfgs = {timm.models.split_model_name_tag(key)[1]: cfg for key, cfg in by_name.items()}
    if tag and tag not in cfgs:
        suggestion = did_you_mean(tag, list(cfgs))
        raise UnknownNameError(f"timm's '{arch}' has no pretrained tag '{tag}'" + (f"; {suggestion}" if suggestion else ""),
                               hint=f"timm.list_pretrained('{arch}.*') lists its tags")
    if not cfgs:
        return None
    tags = deque(cfgs)
    if tag:  # the tag named in base is the one an untagged name loads
        tags.remove(tag)
        tags.appendleft(tag)
    return timm.models.DefaultCfg(tags=tags, cfgs=cfgs, is_pretrained=any(c.has_weights for c in cfgs.values()))


def _entrypoint(edited: _Edited):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create(edited, pretrained, kwargs)

    # register_model files the entry point under its __name__, in the module named by __module__.
    entrypoint.__name__ = entrypoint.__qualname__ = edited.name
    entrypoint.__module__ = timm_models.__name__
    entrypoint.__doc__ = f"timm's {edited.base} edited by plugsurgeon recipe '{edited.recipe.name}'."
    return entrypoint


def _create(edited: _Edited, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    # Surgery imports torch.fx machinery: only when a model is built, not when timm lists its models.
    from plugsurgeon.surgery.commit import apply

    if edited.tag and not kwargs.get("pretrained_cfg"):  # "name.tag" reaches here as pretrained_cfg="tag"
        kwargs["pretrained_cfg"] = edited.tag
    unexpected = _UnexpectedKeys()
    try:
        with unexpected.listening():
            model = timm.create_model(edited.base, pretrained=pretrained, **kwargs)
    except RuntimeError as error:
        # timm loads pretrained weights into the unedited base: strictly when the head is kept, and
        # then an edited model's own checkpoint fails on its plugin tensors.
        if pretrained and "Unexpected key(s)" in str(error):
            raise _edited_checkpoint(edited, str(error).splitlines()[-1].strip()) from error
        raise
    result = apply(model, edited.recipe, inplace=True, input_shape=_input_shape(edited.input_shape, kwargs))
    dropped = sorted(set(unexpected.keys) & set(result.report.new_keys))
    if dropped:  # a non-strict load (new head, new in_chans) only logs them: the plugins would be silently untrained
        raise _edited_checkpoint(edited, ", ".join(dropped))
    renamed = result.report.renamed_keys
    if renamed:
        raise PlugsurgeonError(f"recipe '{edited.recipe.name}' renames {len(renamed)} of {edited.base}'s weights ({', '.join(renamed[:3])}), "
                               f"so {edited.base}'s pretrained weights and checkpoints cannot load into '{edited.name}' by name",
                               hint="register a recipe whose plugins are added beside the original layers (cbam, se, ...), or build "
                                    f"the base with timm.create_model('{edited.base}', ...) and call ps.apply on it")
    edited_model = result.model
    for attribute in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(edited_model, attribute, None)
        if isinstance(cfg, dict):
            # Everything else stays the base's (data config, weight source); the architecture names
            # what timm must build to re-create this model (push_to_hub writes it to config.json).
            cfg["architecture"] = edited.name
    return edited_model


def _edited_checkpoint(edited: _Edited, keys: str) -> PlugsurgeonError:
    return PlugsurgeonError(f"the pretrained weights for '{edited.name}' hold tensors that timm's {edited.base} does not have "
                            f"({keys[:300]}): timm loads pretrained weights into the base, before the edit",
                            hint=f"pretrained weights are {edited.base}'s; to load a checkpoint of '{edited.name}' itself, pass "
                                 "checkpoint_path=FILE (timm's --initial-checkpoint) instead of pretrained=True")


class _UnexpectedKeys(logging.Handler):
    """The tensors timm's pretrained loader reports it could not place, read from its log.

    A non-strict load (a new head, other input channels) drops them with a warning only, and there is
    no other public way to learn of them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(_UNEXPECTED):
            self.keys += message[len(_UNEXPECTED):message.find(")")].split(", ")

    @contextmanager
    def listening(self) -> Iterator[None]:
        logger = logging.getLogger("timm")
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)


def _input_shape(shape: tuple[int, ...], kwargs: dict[str, Any]) -> tuple[int, ...]:
    """The shape to plan at: the registered one, with the channels and size the caller asked timm for."""
    batch, channels, height, width = shape
    if kwargs.get("in_chans"):
        channels = int(kwargs["in_chans"])
    size = kwargs.get("img_size")
    if size:
        height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    return batch, channels, height, width
