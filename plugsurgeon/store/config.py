"""Configuration a model holds outside its tensors, which a rebuild from its source name does not restore.

A torchvision detector built with other arguments than its builder's defaults (``min_size=512,
max_size=512``, ``box_score_thresh=0.0``), or changed after it was built, has exactly the tensors
of the default build, so its weights load into either; but the default build resizes images to
800 pixels and keeps other detections, and so computes something else. ``save`` records that
configuration for the classes listed here and ``load`` sets it on the rebuilt model before it
redoes the recorded edits, which are then planned at the size the saved model's backbone saw.

A record is data: it names one of a fixed set of classes (``kind``), the module's path, and
fields of fixed types and bounds; loading it sets those attributes and runs nothing else. What is
recorded is what changes a trained detector's outputs at inference and its losses in training:
the transform's resizing and normalisation, and the thresholds and counts that select
detections. Anchor shapes and RoI pooling settings are not recorded: a model built with other
ones is saved with a ``package.module:factory`` source that builds it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from plugsurgeon.errors import ModelLoadError, PlugsurgeonError

MAX_RECORDS = 64
MAX_PIXELS = 1 << 16

Pixels = Annotated[int, Field(ge=1, le=MAX_PIXELS)]
Count = Annotated[int, Field(ge=0, le=1 << 24)]
Real = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Location = Annotated[str, Field(max_length=1024)]


class _Config(BaseModel):
    # strict like the rest of the manifest: JSON written by a program, so "1" is not 1.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # The class a record configures: module path and name, compared by isinstance.
    owner: ClassVar[tuple[str, str]]

    kind: str  # each record narrows it to a Literal: the manifest's discriminator
    path: Location

    # ``module`` is a torchvision module (``owner``); torchvision ships no types, so its attributes are Any.
    @classmethod
    def read(cls, path: str, module: Any) -> _Config:
        raise NotImplementedError

    def write(self, module: Any) -> None:
        raise NotImplementedError


class RCNNTransformConfig(_Config):
    """``GeneralizedRCNNTransform``: every torchvision detector's resizing and normalisation (SSD's
    ``fixed_size`` included). ``min_size`` holds several sizes for multi-scale training; eval uses the last."""

    owner: ClassVar = ("torchvision.models.detection.transform", "GeneralizedRCNNTransform")
    kind: Literal["torchvision.GeneralizedRCNNTransform"] = "torchvision.GeneralizedRCNNTransform"
    min_size: list[Pixels] = Field(min_length=1, max_length=32)
    max_size: Pixels
    image_mean: list[Real] = Field(min_length=1, max_length=16)
    image_std: list[Real] = Field(min_length=1, max_length=16)
    size_divisible: Pixels
    fixed_size: list[Pixels] | None = Field(min_length=2, max_length=2)
    skip_resize: bool

    @classmethod
    def read(cls, path: str, module: Any) -> RCNNTransformConfig:
        fixed = module.fixed_size
        return cls(path=path, min_size=_list(module.min_size), max_size=module.max_size, image_mean=_list(module.image_mean),
                   image_std=_list(module.image_std), size_divisible=module.size_divisible,
                   fixed_size=None if fixed is None else _list(fixed), skip_resize=getattr(module, "_skip_resize", False))

    def write(self, module: Any) -> None:
        module.min_size = tuple(self.min_size)
        module.max_size = self.max_size
        module.image_mean = list(self.image_mean)
        module.image_std = list(self.image_std)
        module.size_divisible = self.size_divisible
        module.fixed_size = None if self.fixed_size is None else tuple(self.fixed_size)
        module._skip_resize = self.skip_resize


class RPNConfig(_Config):
    """``RegionProposalNetwork``: how many proposals survive, before and after NMS, in each mode."""

    owner: ClassVar = ("torchvision.models.detection.rpn", "RegionProposalNetwork")
    kind: Literal["torchvision.RegionProposalNetwork"] = "torchvision.RegionProposalNetwork"
    pre_nms_top_n_training: Count
    pre_nms_top_n_testing: Count
    post_nms_top_n_training: Count
    post_nms_top_n_testing: Count
    nms_thresh: Real
    score_thresh: Real
    min_size: Real

    @classmethod
    def read(cls, path: str, module: Any) -> RPNConfig:
        pre, post = module._pre_nms_top_n, module._post_nms_top_n
        return cls(path=path, pre_nms_top_n_training=pre["training"], pre_nms_top_n_testing=pre["testing"],
                   post_nms_top_n_training=post["training"], post_nms_top_n_testing=post["testing"],
                   nms_thresh=module.nms_thresh, score_thresh=module.score_thresh, min_size=module.min_size)

    def write(self, module: Any) -> None:
        module._pre_nms_top_n = {"training": self.pre_nms_top_n_training, "testing": self.pre_nms_top_n_testing}
        module._post_nms_top_n = {"training": self.post_nms_top_n_training, "testing": self.post_nms_top_n_testing}
        module.nms_thresh, module.score_thresh, module.min_size = self.nms_thresh, self.score_thresh, self.min_size


class _Selection(_Config):
    """The detections a head keeps: score threshold, NMS threshold, at most so many per image."""

    score_thresh: Real
    nms_thresh: Real
    detections_per_img: Count

    @classmethod
    def read(cls, path: str, module: Any) -> _Selection:
        return cls(path=path, **{name: getattr(module, name) for name in cls.model_fields if name not in ("path", "kind")})

    def write(self, module: Any) -> None:
        for name in type(self).model_fields:
            if name not in ("path", "kind"):
                setattr(module, name, getattr(self, name))


class RoIHeadsConfig(_Selection):
    owner: ClassVar = ("torchvision.models.detection.roi_heads", "RoIHeads")
    kind: Literal["torchvision.RoIHeads"] = "torchvision.RoIHeads"


class RetinaNetConfig(_Selection):
    owner: ClassVar = ("torchvision.models.detection.retinanet", "RetinaNet")
    kind: Literal["torchvision.RetinaNet"] = "torchvision.RetinaNet"
    topk_candidates: Count


class FCOSConfig(_Selection):
    owner: ClassVar = ("torchvision.models.detection.fcos", "FCOS")
    kind: Literal["torchvision.FCOS"] = "torchvision.FCOS"
    topk_candidates: Count
    center_sampling_radius: Real


class SSDConfig(_Selection):
    owner: ClassVar = ("torchvision.models.detection.ssd", "SSD")
    kind: Literal["torchvision.SSD"] = "torchvision.SSD"
    topk_candidates: Count
    neg_to_pos_ratio: Real


_KINDS: tuple[type[_Config], ...] = (RCNNTransformConfig, RPNConfig, RoIHeadsConfig, RetinaNetConfig, FCOSConfig, SSDConfig)

ModuleConfig = Annotated[
    RCNNTransformConfig | RPNConfig | RoIHeadsConfig | RetinaNetConfig | FCOSConfig | SSDConfig,
    Field(discriminator="kind"),
]


def read_config(model: nn.Module) -> list[ModuleConfig]:
    """The configuration records of every module of ``model`` that is one of the known classes.

    A value of a type the record cannot hold (a float where torchvision keeps an int) is refused:
    saving it as something else could reload a model that computes otherwise.
    """
    classes = _classes()
    records: list[ModuleConfig] = []
    for path, module in model.named_modules():
        for kind, owner in classes:
            if isinstance(module, owner):
                try:
                    records.append(cast(ModuleConfig, kind.read(path, module)))  # each kind is one of ModuleConfig's
                except (ValidationError, AttributeError, KeyError, TypeError) as error:
                    raise PlugsurgeonError(
                        f"cannot record the configuration of '{path or '(model)'}' ({type(module).__name__}): {_describe(error)}",
                        hint="give it the types torchvision's builder gives (ints for sizes and counts, lists of floats for "
                        "mean and std), or save it with a package.module:factory source that builds it configured",
                    ) from None
    if len(records) > MAX_RECORDS:
        raise PlugsurgeonError(f"this model holds {len(records)} configured detector modules; a manifest records at most {MAX_RECORDS}",
                               hint="save it with a package.module:factory source that builds it configured")
    return records


def apply_config(model: nn.Module, records: list[ModuleConfig], *, where: str) -> None:
    """Set each record's configuration on the module at its path, which must be of the record's class."""
    classes = dict(_classes())
    for record in records:
        owner = classes.get(type(record))
        try:
            module = model.get_submodule(record.path)
        except AttributeError:
            module = None
        if owner is None or not isinstance(module, owner):
            found = "no module" if module is None else f"a {type(module).__name__}"
            raise ModelLoadError(
                f"{where} records the configuration of a {record.kind.removeprefix('torchvision.')} at '{record.path or '(model)'}', "
                f"where the rebuilt model has {found}",
                hint="the model source builds a different network than it did when the directory was written",
            )
        record.write(module)


def _classes() -> list[tuple[type[_Config], type]]:
    """(record, class) for each known class importable here; torchvision is imported only when present."""
    import importlib

    found = []
    for kind in _KINDS:
        module_name, name = kind.owner
        try:
            found.append((kind, getattr(importlib.import_module(module_name), name)))
        except (ImportError, AttributeError):
            continue
    return found


def _list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False, include_input=False)[0]
        return f"field '{'.'.join(str(p) for p in first['loc'])}': {first['msg'][:200]}"
    return f"{type(error).__name__}: {str(error)[:200]}"
