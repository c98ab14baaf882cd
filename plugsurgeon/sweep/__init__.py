"""Where should the module go: a search over placements (plugin, stages, density, arguments) on your metric, with Optuna.

``ps.sweep`` is this package (like ``ps.ultralytics``, it imports an optional extra: optuna):

    >>> result = ps.sweep.run(model, "space.yaml", evaluate, costs=["macs"], trials=30)
    >>> ps.sweep.expand(model, "space.yaml").candidates  # the distinct placements, priced, nothing trained
"""

from plugsurgeon.sweep.classification import ImageFolderObjective
from plugsurgeon.sweep.detection import DetectionObjective
from plugsurgeon.sweep.expand import Candidate, Expansion, expand
from plugsurgeon.sweep.results import Row, SweepResult
from plugsurgeon.sweep.space import Space, load_space
from plugsurgeon.sweep.study import TrialDone
from plugsurgeon.sweep.study import sweep as run

__all__ = ["Candidate", "DetectionObjective", "Expansion", "ImageFolderObjective", "Row", "Space", "SweepResult", "TrialDone", "expand", "load_space", "run"]
