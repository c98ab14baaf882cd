"""The ready-made classification metric on a tiny ImageFolder the test writes: it learns, and a sweep runs on it."""

import numpy as np
import pytest
import torch
from PIL import Image

from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.sweep.classification import ImageFolderObjective
from plugsurgeon.sweep.study import sweep
from tests.sweep.tiny import (
    FourStages,
    one_thread,  # noqa: F401 - the fixture, used below
)

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def image_folder(root, per_class=6):
    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for name, colour in COLOURS.items():
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_fine_tuning_learns_the_colours_and_a_sweep_ranks_by_top1(tmp_path):
    root = image_folder(tmp_path / "data")
    objective = ImageFolderObjective(root, steps=20, batch_size=18, lr=0.02, image_size=32)
    torch.manual_seed(0)
    untrained = objective.top1(FourStages())
    trained = objective(FourStages())["top1"]
    assert trained == 1.0 and untrained < 1.0  # three flat colours: learnt in 20 full-batch steps
    space = {"sweep": {"steps": [{"plugin": "se", "at": "residual.branch", "stages": [[4], [5]]}]}}
    result = sweep(FourStages(), space, ImageFolderObjective(root, steps=2, batch_size=18, image_size=32),
                   metrics={"top1": "maximize"}, output=tmp_path / "out", input_shape=(1, 3, 32, 32))
    assert len(result.candidates) == 2 and all(0 <= r.values["top1"] <= 1 for r in result.candidates)


def test_a_folder_without_val_is_one_message(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(PlugsurgeonError, match="no val/ directory"):
        ImageFolderObjective(tmp_path)
