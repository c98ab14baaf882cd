"""The ready-made detection metric: a YOLO's placements trained by Ultralytics on a tiny dataset the test writes (slow)."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported

import pytest

from plugsurgeon.errors import PlugsurgeonError

pytestmark = pytest.mark.slow


def test_a_yolo_sweep_trains_each_placement_and_reads_map(tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    from plugsurgeon.sweep.detection import DetectionObjective
    from plugsurgeon.sweep.study import sweep
    from tests.integrations.test_ultralytics_training import write_dataset

    data = write_dataset(tmp_path / "data", "detect")
    objective = DetectionObjective(data, epochs=1, imgsz=64, batch=4, project=tmp_path / "runs", amp=False, deterministic=False)
    space = {"sweep": {"steps": [{"plugin": "se", "at": "residual.branch", "stages": [[4], [5]]}]}}
    result = sweep(DetectionModel("yolov8n.yaml", verbose=False), space, objective, metrics={"map50_95": "maximize"},
                   output=tmp_path / "out", input_shape=(1, 3, 64, 64))
    assert [r.state for r in result.rows] == ["COMPLETE", "COMPLETE"], [r.error for r in result.rows]
    assert all(0 <= r.values["map50_95"] <= 1 for r in result.candidates)
    # One Ultralytics run per candidate, and each trained its candidate's edit: SE after stage 4's two bottlenecks
    # (YOLOv8n's C2f blocks: 1, 2, 2, 1 at stages 2..5), or after stage 5's one.
    from ultralytics import YOLO

    from plugsurgeon.plugins.se import SqueezeExcitation

    runs = sorted((tmp_path / "runs").iterdir())
    trained = [YOLO(run / "weights" / "last.pt").model for run in runs]
    assert sorted(sum(isinstance(m, SqueezeExcitation) for m in model.modules()) for model in trained) == [1, 2]


def test_data_that_does_not_exist_is_one_message(tmp_path):
    from plugsurgeon.sweep.detection import DetectionObjective

    with pytest.raises(PlugsurgeonError, match="does not exist"):
        DetectionObjective(tmp_path / "data.yaml")
