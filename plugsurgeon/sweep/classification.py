"""A ready-made metric: fine-tune each candidate on an ImageFolder for a set number of steps, top-1 on its validation folder.

For users without code of their own: ``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg`` (torchvision's
``ImageFolder``). Every candidate starts from the same weights (the sweep applies each to a copy of the
model) and the same seed, so candidates differ by their placement only. Intermediate top-1 is reported
to Optuna's pruner in single-objective sweeps, which can stop a bad candidate early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from plugsurgeon.errors import PlugsurgeonError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFolderObjective:
    """``evaluate(model, trial) -> {"top1": accuracy}``: SGD fine-tuning on ``root/train``, top-1 on ``root/val``.

    Args:
        root: The directory holding ``train/`` and ``val/``, one sub-directory per class in each.
        steps: Optimiser steps per candidate (0: evaluate as it is).
        batch_size: Images per step.
        lr: SGD's learning rate (momentum 0.9).
        image_size: Images are resized to this square size.
        device: Where candidates train.
        seed: The seed every candidate starts from.
        evaluations: How many times top-1 is reported to the pruner during training.

    Raises:
        PlugsurgeonError: ``root`` lacks ``train/`` or ``val/``, or they hold no images.

    Examples:
        >>> evaluate = ps.sweep.ImageFolderObjective("data/flowers", steps=200, image_size=160)
        >>> ps.sweep.run(model, "space.yaml", evaluate, metrics={"top1": "maximize"}, costs=["macs"])
    """

    def __init__(self, root: str | Path, *, steps: int = 100, batch_size: int = 32, lr: float = 0.01, image_size: int = 224,
                 device: str = "cpu", seed: int = 0, evaluations: int = 4) -> None:
        from torchvision import datasets, transforms

        root = Path(root)
        for part in ("train", "val"):
            if not (root / part).is_dir():
                raise PlugsurgeonError(f"'{root}' has no {part}/ directory",
                                       hint="an ImageFolder root holds train/CLASS/*.jpg and val/CLASS/*.jpg")
        transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        try:
            self.train_set = datasets.ImageFolder(str(root / "train"), transform=transform)
            self.val_set = datasets.ImageFolder(str(root / "val"), transform=transform)
        except (FileNotFoundError, OSError) as error:
            raise PlugsurgeonError(f"cannot read the ImageFolder at '{root}': {error}") from None
        if self.train_set.classes != self.val_set.classes:
            raise PlugsurgeonError(f"'{root}': train/ and val/ hold different classes",
                                   hint="give both the same class directories")
        self.steps, self.batch_size, self.lr, self.device, self.seed = steps, batch_size, lr, torch.device(device), seed
        self.evaluations = max(1, evaluations)

    def __call__(self, model: nn.Module, trial: Any = None) -> dict[str, float]:
        torch.manual_seed(self.seed)
        model.to(self.device)
        classes = len(self.train_set.classes)
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=False,
                                             generator=torch.Generator().manual_seed(self.seed))
        optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=self.lr, momentum=0.9)
        report = trial is not None and len(trial.study.directions) == 1  # Optuna prunes single-objective studies only
        every = max(1, self.steps // self.evaluations)
        step = 0
        while step < self.steps:
            for images, labels in loader:
                model.train()
                logits = _logits(model(images.to(self.device)), classes)
                loss = nn.functional.cross_entropy(logits, labels.to(self.device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                step += 1
                if report and step % every == 0 and step < self.steps:
                    trial.report(self.top1(model), step)
                    if trial.should_prune():
                        import optuna

                        raise optuna.TrialPruned(f"top-1 at step {step} is below the median of earlier trials")
                if step >= self.steps:
                    break
        return {"top1": self.top1(model)}

    def top1(self, model: nn.Module) -> float:
        """Top-1 accuracy on the validation folder, in eval mode."""
        model.eval()
        classes = len(self.val_set.classes)
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=self.batch_size)
        right = total = 0
        with torch.inference_mode():
            for images, labels in loader:
                predicted = _logits(model(images.to(self.device)), classes).argmax(1).cpu()
                right += int((predicted == labels).sum())
                total += len(labels)
        return right / max(1, total)


def _logits(output: Any, classes: int) -> torch.Tensor:
    """The model's class scores: its output, or the first tensor of a tuple, at least ``classes`` wide."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise PlugsurgeonError("the classification objective needs a model returning N x classes scores",
                               hint="use a classification model, or your own --objective")
    if output.shape[1] < classes:
        raise PlugsurgeonError(f"the model scores {output.shape[1]} classes and the ImageFolder has {classes}",
                               hint="give the model at least as many outputs as classes (e.g. num_classes=...)")
    return output
