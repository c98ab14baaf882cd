"""A ready-made metric for Ultralytics detectors: train each candidate for a set number of epochs on a ``data.yaml``, mAP50-95.

Training goes through ``ps.ultralytics.train``, Ultralytics' own trainer with the candidate's edit replayed in it,
so every candidate gets Ultralytics' augmentation, schedule and validation. A model built from a YAML trains from a
fresh build (Ultralytics' rule; the same seed for every candidate); the fitness after each epoch is reported to
Optuna's pruner in single-objective sweeps.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from plugsurgeon.errors import PlugsurgeonError


class DetectionObjective:
    """``evaluate(model, trial) -> {"map50_95": mAP}``: Ultralytics training of the edited detector, then its validation.

    Args:
        data: The dataset's ``data.yaml`` (Ultralytics' format).
        epochs: Training epochs per candidate.
        imgsz: The training and validation image size.
        batch: Images per batch.
        device: Ultralytics' ``device`` (``cpu``, ``0``, ``cuda:0``).
        project: Where runs are written (default: a temporary directory, removed with the objective).
        **train_kwargs: Further arguments for ``YOLO.train`` (``lr0``, ``workers``, ``amp``...).

    Raises:
        PlugsurgeonError: ``data`` does not exist, or the model is not an Ultralytics model built from a YAML.

    Examples:
        >>> evaluate = ps.sweep.DetectionObjective("data.yaml", epochs=10, imgsz=640, device=0)
        >>> ps.sweep.run(DetectionModel("yolov8n.yaml"), "space.yaml", evaluate, metrics={"map50_95": "maximize"})
    """

    def __init__(self, data: str | Path, *, epochs: int = 1, imgsz: int = 640, batch: int = 16, device: str = "cpu",
                 project: str | Path | None = None, **train_kwargs: Any) -> None:
        if not Path(data).is_file():
            raise PlugsurgeonError(f"detection data '{data}' does not exist", hint="give the dataset's data.yaml (Ultralytics' format)")
        self._scratch = tempfile.TemporaryDirectory(prefix="plugsurgeon-sweep-")  # runs' files when no project is given
        self.settings = {"data": str(data), "epochs": epochs, "imgsz": imgsz, "batch": batch, "device": device,
                         "project": str(project) if project is not None else self._scratch.name, "exist_ok": True,
                         "plots": False, "verbose": False, "workers": 0, "seed": 0, **train_kwargs}
        self.runs = 0

    def __call__(self, model: nn.Module, trial: Any = None) -> dict[str, float]:
        from ultralytics import YOLO

        from plugsurgeon.integrations import ultralytics as psu

        config = getattr(model, "yaml", None)
        source = config.get("yaml_file") if isinstance(config, dict) else None
        if not source:
            raise PlugsurgeonError(f"the detection objective trains Ultralytics models built from a YAML, not {type(model).__name__}",
                                   hint="load it as DetectionModel('yolov8n.yaml'), or give your own objective")
        yolo = YOLO(source)
        yolo.model = model  # type: ignore[assignment]  # Ultralytics types it loosely; the candidate: its recorded edit is replayed inside the trainer
        if trial is not None and len(trial.study.directions) == 1:
            yolo.add_callback("on_fit_epoch_end", lambda trainer: _report(trial, trainer))
        self.runs += 1
        name = f"trial{getattr(trial, 'number', self.runs)}"
        metrics = psu.train(yolo, **{"name": name, **self.settings})
        box = getattr(metrics, "box", None)
        if box is not None:
            return {"map50_95": float(box.map)}
        if isinstance(metrics, dict) and "metrics/mAP50-95(B)" in metrics:
            return {"map50_95": float(metrics["metrics/mAP50-95(B)"])}
        raise PlugsurgeonError("Ultralytics' training returned no box mAP", hint="the detection objective is for detection datasets")


def _report(trial: Any, trainer: Any) -> None:
    import optuna

    fitness = getattr(trainer, "fitness", None)
    if fitness is None:
        return
    trial.report(float(fitness), int(trainer.epoch))
    if trial.should_prune():
        raise optuna.TrialPruned(f"fitness {float(fitness):.4g} after epoch {int(trainer.epoch) + 1} is below the median of earlier trials")
