"""Checks shared by the zoo tests and the zoo sweep: output structure, new modules, hooks. No plugsurgeon code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten


def structure(output: Any, *, ragged: bool = False) -> tuple:
    """The pytree structure of ``output`` with each tensor leaf's shape (or, if ``ragged``, only its dims
    after the first: detections differ in number between models with different weights)."""
    leaves, spec = tree_flatten(output)
    shapes = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            shapes.append(("tensor", tuple(leaf.shape[1:]) if ragged else tuple(leaf.shape), leaf.dtype))
        else:
            shapes.append((type(leaf).__name__,))
    return str(spec), tuple(shapes)


def run(model: nn.Module, inputs, *, train: bool, targets=None) -> Any:
    """One forward in train or eval mode (no grad); the model's mode is restored."""
    was = model.training
    model.train(train)
    try:
        with torch.no_grad():
            return model(inputs) if targets is None else model(inputs, targets)
    finally:
        model.train(was)


def new_module_paths(original: nn.Module, edited: nn.Module) -> list[str]:
    """Paths of the outermost modules in ``edited`` that are not in ``original`` (the inserted plugins)."""
    before = {name for name, _ in original.named_modules()}
    new = [name for name, _ in edited.named_modules() if name and name not in before]
    return [n for n in new if not any(n.startswith(other + ".") for other in new if other != n)]


def within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + ":")


def capture(modules: dict[str, nn.Module], *, inputs: bool = False) -> tuple[dict[str, list], Callable[[], None]]:
    """Record every call's output (or first input) of each named module; returns (records, remove)."""
    records: dict[str, list] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():
        if inputs:
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, name=name: records[name].append(args[0].detach().clone())))
        else:
            handles.append(module.register_forward_hook(
                lambda _m, _a, out, name=name: records[name].append(out.detach().clone() if isinstance(out, torch.Tensor) else out)))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return records, remove


# torchvision detectors


def build_detector(name: str, size: int = 320) -> nn.Module:
    """A torchvision detector with random weights that resizes images to ``size`` (SSD: its fixed size)."""
    import torchvision

    kwargs = {} if name.startswith("ssd") else {"min_size": size, "max_size": size}
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs).eval()


def image_size(model: nn.Module) -> int:
    """The square size the detector's transform resizes to (SSD: fixed; the others: min_size)."""
    transform = model.transform
    return transform.fixed_size[0] if getattr(transform, "fixed_size", None) else transform.min_size[0]


def detection_images(size: int, n: int = 2) -> list[torch.Tensor]:
    """Two images: SSDLite's extra layers reach 1x1 maps, whose train-mode BatchNorm needs a batch > 1."""
    return [torch.rand(3, size, size) for _ in range(n)]


def targets_for(model: nn.Module, size: int, n: int = 2) -> list[dict]:
    """One box per image, with the masks / keypoints the model's heads train on."""
    targets = []
    for _ in range(n):
        target = {"boxes": torch.tensor([[10.0, 20.0, 120.0, 160.0]]), "labels": torch.tensor([1])}
        if getattr(model, "roi_heads", None) is not None and model.roi_heads.has_mask():
            target["masks"] = torch.zeros(1, size, size, dtype=torch.uint8)
            target["masks"][0, 20:160, 10:120] = 1
        if getattr(model, "roi_heads", None) is not None and model.roi_heads.has_keypoint():
            k = model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels
            target["keypoints"] = torch.tensor([[[50.0, 60.0, 1.0]] * k])
        targets.append(target)
    return targets


def extractor(model: nn.Module) -> nn.Module:
    return model.backbone.body if hasattr(model.backbone, "body") else model.backbone
