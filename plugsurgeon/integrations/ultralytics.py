"""Train an edited YOLO with Ultralytics' own trainer, and keep the edit for the model's whole life there.

Ultralytics' trainer does not train the model object it is given: ``get_model`` builds a fresh
network from the YAML and copies the tensors whose names and shapes match, so an edit made on
``YOLO.model`` is silently dropped, from the trainer's model, its EMA and every checkpoint. The one
place to keep it is ``get_model`` itself, which Ultralytics lets a trainer subclass override (and
``YOLO.train(trainer=...)`` accepts such a class). ``trainer()`` makes that subclass: its
``get_model`` applies the recipe to the fresh build, or, given a model plugsurgeon already edited
(fine-tuning, resuming from ``last.pt``), rebuilds it by replaying the model's recorded steps and
loads every tensor by name.

Ultralytics' ``fuse()`` (which ``predict``, ``val`` and ``export`` call) folds each ``Conv``'s BN
into whatever its ``conv`` holds, reading only ``conv.weight``: on a train-time block such as an
ACBlock that is the square kernel alone, and the fused model silently computes something else. So
the model ``get_model`` returns is made an instance of a subclass of its own class, defined here
(so checkpoints pickle it by reference), whose ``fuse()`` first replaces every plugsurgeon
train-time block by the single module its ``reparameterize()`` returns, then fuses as Ultralytics
does. It is still an instance of the Ultralytics class, under the same class name, so every
``isinstance`` check and task guess in Ultralytics keeps working.

What cannot be kept: a model loaded from an edited checkpoint and trained with Ultralytics'
*default* trainer (``YOLO("last.pt").train(...)``) is rebuilt from the YAML again. Nothing of the
edited model runs on that path except generic ``nn.Module`` reads (``state_dict``, ``float``), the
same reads every legitimate user makes, so no public extension point can tell it apart and warn;
train with ``train()`` (or ``trainer=``) instead, as the module's README section says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

try:
    from ultralytics.models import yolo as _yolo
    from ultralytics.nn import tasks as _tasks
except ImportError as _missing:  # pragma: no cover - depends on the environment
    from plugsurgeon.errors import PlugsurgeonError

    raise PlugsurgeonError(f"plugsurgeon's Ultralytics integration needs the ultralytics package ({_missing})",
                           hint="pip install 'ultralytics>=8.4'") from None

from plugsurgeon.deployment.reparameterize import is_reparameterizable
from plugsurgeon.errors import ModelLoadError, PlugsurgeonError, RecipeError
from plugsurgeon.store.replay import replay
from plugsurgeon.surgery.commit import apply as apply_recipe
from plugsurgeon.surgery.recipe import Recipe, load_recipe
from plugsurgeon.surgery.record import get_provenance, set_provenance

if TYPE_CHECKING:  # the classes the mixins below are mixed into, for the type checker (no base at run time)
    from ultralytics.engine.trainer import BaseTrainer as _TrainerBase
    from ultralytics.nn.tasks import BaseModel as _ModelBase
else:
    _TrainerBase = _ModelBase = object

__all__ = ["TASKS", "apply", "train", "trainer", "fuse_safe", "reparameterize_blocks", "recorded_steps",
           "DetectionModel", "SegmentationModel", "PoseModel", "ClassificationModel", "OBBModel", "RTDETRDetectionModel"]

# The trainer Ultralytics uses for each task (YOLO.task_map's "trainer").
TASKS: dict[str, type] = {
    "detect": _yolo.detect.DetectionTrainer,
    "segment": _yolo.segment.SegmentationTrainer,
    "pose": _yolo.pose.PoseTrainer,
    "classify": _yolo.classify.ClassificationTrainer,
    "obb": _yolo.obb.OBBTrainer,
}


# --- fusing a model that holds train-time blocks ---------------------------------------------------

def reparameterize_blocks(model: nn.Module) -> int:
    """Replace, in place, every plugsurgeon train-time block of ``model`` (a catalog block whose
    ``reparameterize()`` returns the module it equals in eval mode, e.g. ACBlock) by that module;
    returns how many were replaced. Ultralytics' own blocks (RepConv, RepVGGDW) are left to its
    ``fuse()``, which knows them. A block shared by several paths is converted once."""
    found: list[tuple[nn.Module, str, str, nn.Module]] = []  # (parent, attribute, path, block)

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if is_reparameterizable(child):
                found.append((parent, name, path, child))
            else:
                visit(child, path)

    visit(model, "")
    uses: dict[int, int] = {}
    for *_, block in found:
        uses[id(block)] = uses.get(id(block), 0) + 1
    done: dict[int, nn.Module] = {}
    for parent, name, path, block in found:
        if id(block) not in done:
            done[id(block)] = _inference_form(block, path)
            if uses[id(block)] == 1:
                _bias_into_norm(parent, name, done[id(block)])
        setattr(parent, name, done[id(block)])
    return len(done)


def _bias_into_norm(parent: nn.Module, name: str, conv: nn.Module) -> None:
    """Ultralytics' conv layers hold a bias-free ``conv`` and the ``bn`` after it, and RepConv's
    own fold reads only ``conv.weight``: the bias a reparameterized block gained (its branch BNs'
    shifts) would be dropped there. It moves into that BN's running mean instead, exactly:
    BN(y + b) with mean m is BN(y) with mean m - b."""
    norm = getattr(parent, "bn", None)
    bias = getattr(conv, "bias", None)
    if name != "conv" or not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or not isinstance(bias, torch.Tensor):
        return
    with torch.no_grad():
        norm.running_mean.sub_(bias.to(norm.running_mean.dtype))
    conv.bias = None  # type: ignore[assignment]  # a module's parameter may be set to None (nn.Module.__setattr__)


def _inference_form(block: nn.Module, path: str) -> nn.Module:
    block.eval()  # its branch BNs fold with their running statistics, as Ultralytics' BN fold does
    try:
        with torch.no_grad():
            result = block.reparameterize()  # type: ignore[operator]  # a reparameterizable block's own method
    except PlugsurgeonError:
        raise
    except Exception as error:  # noqa: BLE001 - a plugin's method may raise anything
        raise PlugsurgeonError(f"cannot fuse the model: reparameterize() of '{path}' ({type(block).__name__}) failed: "
                               f"{type(error).__name__}: {error}") from None
    if not isinstance(result, nn.Module):
        raise PlugsurgeonError(f"cannot fuse the model: reparameterize() of '{path}' ({type(block).__name__}) returned "
                               f"{type(result).__name__}, not a module")
    return result.eval()


class _ReparameterizesBeforeFusing(_ModelBase):
    """``fuse()`` that first turns plugsurgeon's train-time blocks into their inference modules:
    Ultralytics' BN folding then sees the plain conv each block equals, and folds it exactly."""

    def fuse(self, *args: Any, **kwargs: Any):
        reparameterize_blocks(self)
        return super().fuse(*args, **kwargs)


# Same names as Ultralytics' classes: an edited model reads as the model it is (summaries, reports).
class DetectionModel(_ReparameterizesBeforeFusing, _tasks.DetectionModel):
    """An edited Ultralytics ``DetectionModel``: fuses its train-time blocks exactly."""


class SegmentationModel(_ReparameterizesBeforeFusing, _tasks.SegmentationModel):
    """An edited Ultralytics ``SegmentationModel``: fuses its train-time blocks exactly."""


class PoseModel(_ReparameterizesBeforeFusing, _tasks.PoseModel):
    """An edited Ultralytics ``PoseModel``: fuses its train-time blocks exactly."""


class ClassificationModel(_ReparameterizesBeforeFusing, _tasks.ClassificationModel):
    """An edited Ultralytics ``ClassificationModel``: fuses its train-time blocks exactly."""


class OBBModel(_ReparameterizesBeforeFusing, _tasks.OBBModel):
    """An edited Ultralytics ``OBBModel``: fuses its train-time blocks exactly."""


class RTDETRDetectionModel(_ReparameterizesBeforeFusing, _tasks.RTDETRDetectionModel):
    """An edited Ultralytics ``RTDETRDetectionModel``: fuses its train-time blocks exactly."""


_FUSE_SAFE: dict[type, type] = {
    _tasks.DetectionModel: DetectionModel,
    _tasks.SegmentationModel: SegmentationModel,
    _tasks.PoseModel: PoseModel,
    _tasks.ClassificationModel: ClassificationModel,
    _tasks.OBBModel: OBBModel,
    _tasks.RTDETRDetectionModel: RTDETRDetectionModel,
}


def fuse_safe(model: nn.Module) -> nn.Module:
    """Make an edited Ultralytics model (in place) an instance of this module's subclass of its class,
    whose ``fuse()`` reparameterizes plugsurgeon train-time blocks first; returns it.

    ``train()`` and ``trainer()`` do this to every model they build. Call it on an edited model that
    is exported or run through ``predict``/``val`` without being trained here. A model of another
    class is returned as it is when it holds no train-time block, and refused when it does: its
    ``fuse()`` would export something else than it computes.

    Args:
        model: An Ultralytics model (``YOLO(...).model``), edited by plugsurgeon.

    Returns:
        ``model`` itself, its class now the fuse-safe subclass.

    Raises:
        PlugsurgeonError: ``model`` is of a class this module has no subclass for and holds
            train-time blocks.

    Examples:
        >>> yolo = YOLO("yolov8n.pt")
        >>> ps.apply(yolo.model, "acnet", input_shape=(1, 3, 640, 640), inplace=True)
        >>> yolo.model = ps.ultralytics.fuse_safe(yolo.model)
        >>> yolo.export(format="onnx")  # fuse() folds the ACBlocks exactly
    """
    cls = type(model)
    if cls in _FUSE_SAFE.values():
        return model
    if cls in _FUSE_SAFE:
        model.__class__ = _FUSE_SAFE[cls]  # the same object, attributes and all; only fuse() is added
        return model
    blocks = [path for path, m in model.named_modules() if is_reparameterizable(m)]
    if blocks and callable(getattr(model, "fuse", None)):
        raise PlugsurgeonError(
            f"a {cls.__name__} holding train-time blocks ({blocks[0]}{' and more' if len(blocks) > 1 else ''}) cannot be made safe "
            "for Ultralytics' fuse(), which would fold its BNs as if the blocks were plain convolutions",
            hint="call plugsurgeon.integrations.ultralytics.reparameterize_blocks(model) before predict/val/export, "
                 "or deploy it with ps.deploy")
    return model


def apply(yolo: Any, recipe: str | Path | Recipe | dict, *, input_shape: Sequence[int] | None = None, **options: Any):
    """``ps.apply`` on a YOLO object's model, in place, made safe for Ultralytics' ``fuse()``; returns the
    SurgeryResult. ``input_shape`` defaults to ``(1, channels, 640, 640)``, Ultralytics' default size.

    The YOLO object then predicts, validates and exports the edited model; train it with ``train(yolo)``,
    which replays the edit inside Ultralytics' trainer (its default trainer would rebuild the plain network).

    Args:
        yolo: An Ultralytics ``YOLO`` object.
        recipe: A built-in recipe's name, a path to a recipe YAML file, its content as a mapping, or
            a ``Recipe``.
        input_shape: The shape surgery plans at, N,C,H,W; default ``(1, channels, 640, 640)``.
        **options: Passed on to ``ps.apply`` (``dry_run``, ``traced``).

    Returns:
        The ``SurgeryResult``; ``yolo.model`` is its model.

    Raises:
        PlugsurgeonError: ``yolo`` holds no PyTorch model; or as ``ps.apply``.

    Examples:
        >>> from ultralytics import YOLO
        >>> yolo = YOLO("yolov8n.pt")
        >>> result = ps.ultralytics.apply(yolo, "cbam")
        >>> yolo.predict("bus.jpg")  # the edited model
    """
    model = getattr(yolo, "model", None)
    if not isinstance(model, nn.Module):
        raise PlugsurgeonError(f"expected an Ultralytics YOLO with a PyTorch model, got {type(yolo).__name__}",
                               hint="from ultralytics import YOLO; apply(YOLO('yolov8n.yaml'), 'cbam')")
    if input_shape is None:
        input_shape = (1, int(getattr(model, "yaml", {}).get("channels", 3)), 640, 640)
    result = apply_recipe(model, recipe, input_shape=tuple(input_shape), inplace=True, **options)
    if not options.get("dry_run"):
        yolo.model = fuse_safe(result.model)
        result.model = yolo.model
    return result


# --- the trainer -------------------------------------------------------------------------------

Task = Literal["detect", "segment", "pose", "classify", "obb"]


def trainer(recipe: str | Path | Recipe | dict | None, *, task: Task = "detect",
            input_shape: Sequence[int] | None = None) -> type:
    """A subclass of the task's Ultralytics trainer whose ``get_model`` keeps plugsurgeon's edit.

    Pass it as ``YOLO.train(trainer=...)``. Its ``get_model``: given a model plugsurgeon edited
    (``YOLO("last.pt")`` to fine-tune, the checkpoint of a resumed run), rebuilds the plain network,
    replays the model's recorded steps and loads every tensor by name; otherwise builds the plain
    model as Ultralytics does (pretrained tensors copied) and applies ``recipe``, traced at
    ``input_shape`` (default ``(1, channels, imgsz, imgsz)`` from the run's arguments). With
    ``recipe=None`` it only keeps edits and refuses an unedited model.

    Args:
        recipe: The recipe to apply to an unedited model (a name, a path, a mapping or a
            ``Recipe``), or None to only keep the edits of an edited one.
        task: The Ultralytics task whose trainer is extended: ``detect``, ``segment``, ``pose``,
            ``classify`` or ``obb``.
        input_shape: The shape surgery plans at, N,C,H,W; default ``(1, channels, imgsz, imgsz)``.

    Returns:
        The trainer class.

    Raises:
        PlugsurgeonError: No trainer is supported for ``task``.
        RecipeError: The recipe does not load.

    Examples:
        >>> yolo = YOLO("yolov8n.yaml")
        >>> yolo.train(trainer=ps.ultralytics.trainer("cbam", task="detect"), data="coco8.yaml", epochs=3)
    """
    base = TASKS.get(task)
    if base is None:
        raise PlugsurgeonError(f"no Ultralytics trainer is supported for task '{task}'",
                               hint=f"the supported tasks are {', '.join(TASKS)}")
    return _trainer_class(base, None if recipe is None else load_recipe(recipe), (), input_shape)


def train(yolo: Any, recipe: str | Path | Recipe | dict | None = None, *, input_shape: Sequence[int] | None = None,
          **train_kwargs: Any) -> Any:
    """``yolo.train(**train_kwargs)`` with a trainer that keeps plugsurgeon's edit; returns its metrics.

    ``recipe`` may be left out when ``yolo.model`` is already edited (``ps.apply(yolo.model, ...,
    inplace=True)``, or a ``YOLO("last.pt")`` trained here): its recorded steps are replayed.
    Afterwards ``yolo.model`` is the trained, edited model, loaded from the run's best checkpoint as
    Ultralytics does. A YOLO built from a YAML trains from a fresh build, as in Ultralytics. The
    trainer extends the one the YOLO object itself would use (its ``task_map``), so model families
    with their own trainer (RT-DETR) keep it.

    Args:
        yolo: An Ultralytics ``YOLO`` object, edited or not.
        recipe: The recipe to apply (a name, a path, a mapping or a ``Recipe``); None when
            ``yolo.model`` is already edited.
        input_shape: The shape surgery plans at, N,C,H,W; default ``(1, channels, imgsz, imgsz)``.
        **train_kwargs: Passed on to ``yolo.train`` (``data``, ``epochs``, ``imgsz``...), all but
            ``trainer``.

    Returns:
        What ``yolo.train`` returns: the run's metrics.

    Raises:
        PlugsurgeonError: ``trainer=`` is given, or ``yolo`` has no PyTorch model or trainer.
        RecipeError: No recipe is given for an unedited model, or the recipe does not load, or an
            edited model does not record the recipe given.

    Examples:
        >>> yolo = YOLO("yolov8n.pt")
        >>> metrics = ps.ultralytics.train(yolo, "cbam", data="coco8.yaml", epochs=3, imgsz=640)
        >>> yolo.predict("bus.jpg")  # the trained model, CBAM included
    """
    if "trainer" in train_kwargs:
        raise PlugsurgeonError("train() makes the trainer itself and was also given `trainer=`",
                               hint="pass the recipe to train(), or call yolo.train(trainer=plugsurgeon.integrations.ultralytics.trainer(recipe))")
    model = getattr(yolo, "model", None)
    try:
        base = yolo.task_map[yolo.task]["trainer"]
    except (AttributeError, KeyError, NotImplementedError):
        base = None
    if not isinstance(model, nn.Module) or base is None:
        raise PlugsurgeonError(f"expected an Ultralytics YOLO with a PyTorch model and a trainer for its task, got {type(yolo).__name__}",
                               hint="from ultralytics import YOLO; train(YOLO('yolov8n.yaml'), 'cbam', data=...)")
    steps = recorded_steps(model)
    loaded = None if recipe is None else load_recipe(recipe)
    if loaded is None and not steps:
        raise RecipeError(f"{type(model).__name__} carries no plugsurgeon edit and no recipe was given",
                          hint="name the recipe: train(yolo, 'cbam', data=...)")
    return yolo.train(trainer=_trainer_class(base, loaded, steps, input_shape), **train_kwargs)


def recorded_steps(model: Any) -> list[dict[str, Any]]:
    """The edit steps plugsurgeon recorded on ``model`` (empty for an unedited model or a non-module)."""
    if not isinstance(model, nn.Module):
        return []
    return [dict(step) for step in get_provenance(model).get("steps", [])]


def _trainer_class(base: type, recipe: Recipe | None, steps: Sequence[dict[str, Any]], input_shape: Sequence[int] | None) -> type:
    if input_shape is not None:
        input_shape = tuple(int(n) for n in input_shape)
    name = f"Plugsurgeon{base.__name__}"  # Ultralytics adds its training callbacks to classes named *Trainer*
    attributes = {"_ps_recipe": recipe, "_ps_steps": tuple(steps), "_ps_input_shape": input_shape,
                  "__module__": __name__, "__qualname__": name, "__doc__": base.__doc__}
    return type(name, (_KeepsEdits, base), attributes)


class _KeepsEdits(_TrainerBase):
    """Mixed in before the task's trainer: ``get_model`` builds the edited model (see ``trainer()``)."""

    _ps_recipe: Recipe | None = None
    _ps_steps: tuple[dict[str, Any], ...] = ()  # the steps of the model train() was given (a YAML-built YOLO passes no weights)
    _ps_input_shape: tuple[int, ...] | None = None

    def get_model(self, cfg=None, weights=None, verbose=True):
        steps = recorded_steps(weights) or list(self._ps_steps)
        if steps:
            self._check_recipe_recorded(steps)
            model = self._rebuild(cfg, weights, steps, verbose)
        elif self._ps_recipe is None:
            raise RecipeError("this trainer only keeps plugsurgeon edits, and was given no edited model to train "
                              "(a YOLO built from a YAML, or trained with pretrained=False, passes none)",
                              hint="make the trainer with a recipe, trainer('cbam', task=...); or train(yolo, data=...), "
                                   "which replays the edits the YOLO's model records")
        else:
            model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
            model = apply_recipe(model, self._ps_recipe, inplace=True, input_shape=self._edit_shape()).model
        return fuse_safe(model)

    def _rebuild(self, cfg, weights, steps: list[dict[str, Any]], verbose: bool) -> nn.Module:
        """The plain network from ``cfg`` with ``steps`` replayed, holding ``weights``' tensors."""
        edited = bool(recorded_steps(weights))
        if edited and _is_fused(weights):
            raise ModelLoadError(f"the {type(weights).__name__} to train was fused for inference (YOLO.fuse()), so its BNs "
                                 "and train-time branches are gone and its tensors no longer fit the edited network",
                                 hint="train from the checkpoint file instead: train(YOLO('path/to/last.pt'), data=...)")
        # Unedited weights (another `pretrained=` file) transfer as Ultralytics transfers them, before the
        # replay, which builds each new module from the layers it finds (ACNet keeps the conv's kernel).
        model = super().get_model(cfg=cfg, weights=None if edited else weights, verbose=verbose)
        provenance = get_provenance(weights) if edited else {"source": None, "steps": steps}
        for index, step in enumerate(steps, start=1):
            model = replay(model, step, where=f"recorded step {index} of the model to train")
        set_provenance(model, {**provenance, "steps": [dict(s) for s in steps]})
        if edited:
            _load_every_tensor(model, weights, verbose)
        return model

    def _check_recipe_recorded(self, steps: list[dict[str, Any]]) -> None:
        """A recipe given with an already edited model must be one it records: applying it again
        would stack a second copy, and ignoring another one would train something else than asked."""
        if self._ps_recipe is None:
            return
        wanted = self._ps_recipe.model_dump(mode="json", exclude_defaults=True)
        recorded: list[Any] = [step.get("recipe") for step in steps if step.get("kind") == "recipe"]
        if wanted not in recorded:
            names = ", ".join(f"'{r.get('name', '?')}'" for r in recorded) or "none"
            raise RecipeError(
                f"the model to train already carries plugsurgeon edits (recipes {names}), and recipe '{self._ps_recipe.name}' is not one of them",
                hint="to train it as it is, leave the recipe out (train(yolo, data=...)); to add the recipe, "
                     "ps.apply(yolo.model, recipe, inplace=True) first")

    def _edit_shape(self) -> tuple[int, ...]:
        if self._ps_input_shape is not None:
            return self._ps_input_shape
        size = self.args.imgsz
        h, w = (size, size) if isinstance(size, int) else (tuple(size) * 2)[:2]
        return (1, int(self.data.get("channels", 3)), int(h), int(w))


def _is_fused(model: nn.Module) -> bool:
    is_fused = getattr(model, "is_fused", None)
    return bool(is_fused()) if callable(is_fused) else False


def _load_every_tensor(model: nn.Module, weights: nn.Module, verbose: bool) -> None:
    """Every tensor of ``weights`` into ``model``, by name; the names must be exactly the same.

    Shapes match unless the dataset's classes differ from the checkpoint's (a new class count, or
    the same classes in another order): then Ultralytics' own transfer, which adapts the head's class
    layers to the data, loads the rest, every tensor of which has the same name and shape.
    """
    source = weights.state_dict()
    target = model.state_dict()
    missing, unexpected = sorted(target.keys() - source.keys()), sorted(source.keys() - target.keys())
    if missing or unexpected:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
        raise ModelLoadError(f"replaying the recorded edits did not rebuild the model to train: tensor names differ, {'; '.join(parts)}",
                             hint="train with the plugsurgeon and ultralytics versions the model was edited with")
    same_shapes = all(source[k].shape == target[k].shape for k in target)
    if same_shapes and getattr(model, "names", None) == getattr(weights, "names", None):
        model.load_state_dict(source, strict=True)
    else:
        model.load(weights, verbose=verbose)  # type: ignore[operator]  # an Ultralytics model's own method
