"""Export of detectors: a torchvision detector is exported whole (its transform and box selection included)
and its detections are checked in onnxruntime as sets; the matching itself; graphs that differ; YOLO; the
CLI's deploy -> export path, which deploy's own output suggests."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import plugsurgeon as ps
from plugsurgeon.cli.app import app
from plugsurgeon.deployment.report import DetectionCheck
from plugsurgeon.deployment.verify import is_detections, match_detections
from tests.deployment.helpers import TinyDetector, small_faster_rcnn

ort = pytest.importorskip("onnxruntime")
SHAPE = (1, 3, 128, 128)
FACTORY = "tests.deployment.helpers:small_faster_rcnn"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


def run_onnx(path, x: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def assert_same_detections(
    expected: dict, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor
) -> None:
    """An independent check: every detection PyTorch kept clearly above its lowest score (where round-off
    cannot move it out of the selection) has one in onnxruntime's output of the same label overlapping
    it by IoU > 0.99 with nearly the same score."""
    from torchvision.ops import box_iou

    assert len(expected["scores"]) > 0, "nothing to compare: the fixture's input should give detections"
    iou = box_iou(expected["boxes"], boxes)
    same_label = expected["labels"][:, None] == labels[None, :]
    close_score = (expected["scores"][:, None] - scores[None, :]).abs() < 1e-3
    found = ((iou > 0.99) & same_label & close_score).any(dim=1)
    clear = expected["scores"] > expected["scores"].min() + 1e-2
    assert bool(found[clear].all()), (
        f"{int((~found[clear]).sum())} of {int(clear.sum())} detections have no counterpart"
    )


# --- the matching, on detections made by hand --------------------------------------------------------------


def _detections(n: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * 80
    size = torch.rand(n, 2, generator=g) * 30 + 5
    return {
        "boxes": torch.cat([corner, corner + size], dim=1),
        "labels": torch.randint(1, 4, (n,), generator=g),
        "scores": torch.linspace(0.9, 0.4, n),
    }


def _take(detections: dict, order) -> dict:
    return {k: v[order] for k, v in detections.items()}


def test_detections_in_another_order_with_round_off_match():
    reference = _detections()
    other = _take(reference, torch.tensor([3, 0, 5, 1, 4, 2]))
    other["boxes"] = other["boxes"] + 1e-3  # well under 1e-3 x 128 px
    other["scores"] = other["scores"] - 1e-5
    check = match_detections([reference], [other], image_size=128)
    assert check.passed and (check.matched, check.at_cut, check.unmatched) == (6, 0, 0)
    assert check.max_box_diff == pytest.approx(1e-3, rel=1e-3) and check.compared_any


@pytest.mark.parametrize(
    "change",
    ["box moved", "label changed", "score changed", "extra detection", "missing detection"],
)
def test_a_detection_that_differs_above_the_cut_fails(change):
    reference = _detections()
    other = {k: v.clone() for k, v in reference.items()}
    if change == "box moved":
        other["boxes"][1] += 0.2  # 0.2 px: over 1e-3 x 128 px
    elif change == "label changed":
        other["labels"][1] = other["labels"][1] % 3 + 1
    elif change == "score changed":
        other["scores"][1] -= 0.01
    elif change == "extra detection":
        other = {k: torch.cat([v, v[:1]]) for k, v in other.items()}
        other["boxes"][-1] += 20
    else:
        other = _take(other, torch.tensor([0, 2, 3, 4, 5]))  # the second best is gone
    check = match_detections([reference], [other], image_size=128)
    assert not check.passed and check.unmatched >= 1


def test_a_detection_at_the_score_cut_may_be_on_one_side_only():
    reference = _detections()
    other = _take(reference, torch.arange(5))  # the lowest scored one (0.4) was not kept
    check = match_detections([reference], [other], image_size=128)
    assert check.passed and (check.matched, check.at_cut) == (5, 1)


def test_a_run_that_kept_too_few_fails_though_its_lost_detections_are_its_lowest():
    # A count recorded as a constant keeps the top 3 of 6: the three lost ones score far above the cut.
    reference = _detections()
    check = match_detections([reference], [_take(reference, torch.arange(3))], image_size=128)
    assert not check.passed and (check.matched, check.at_cut, check.unmatched) == (3, 1, 2)


def test_per_detection_fields_are_compared_on_matched_pairs():
    reference = _detections()
    reference["masks"] = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    close = _take(reference, order)
    close["masks"] = close["masks"] + 1e-3
    assert match_detections([reference], [close], image_size=128).passed
    far = _take(reference, order)
    far["masks"][0] = 1 - far["masks"][0]
    check = match_detections([reference], [far], image_size=128)
    assert not check.passed and "masks" in check.problems[0]


def test_no_detections_is_a_pass_that_says_nothing_was_compared():
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    check = match_detections([empty], [empty], image_size=128)
    assert check.passed and not check.compared_any
    assert not match_detections([empty], [_detections()], image_size=128).passed


def test_what_counts_as_detections():
    assert is_detections([_detections()]) and is_detections([_detections(), _detections(3)])
    # Ultralytics' Detect returns a dict with boxes and scores too, but as (B, 4 * reg_max, anchors) maps
    assert not is_detections([{"boxes": torch.zeros(1, 64, 84), "scores": torch.zeros(1, 80, 84)}])
    assert (
        not is_detections(torch.zeros(2, 4))
        and not is_detections([])
        and not is_detections([{"boxes": torch.zeros(3, 4)}])
    )
    assert isinstance(match_detections([_detections()], [_detections()], image_size=128), DetectionCheck)


# --- export: detector-shaped models that export in a second --------------------------------------------------


def test_a_detector_exports_whole_and_its_detections_match_in_onnxruntime(tmp_path):
    model = TinyDetector()
    report = ps.export_onnx(model, tmp_path / "tiny.onnx", input_shape=(1, 3, 16, 16))
    d = report.detections
    assert (
        report.passed and report.inputs_checked == 2 and report.output_names == ["boxes", "labels", "scores"]
    )
    assert d.matched > 0 and d.unmatched == 0 and d.reference == d.other
    assert any("whole TinyDetector was exported" in n for n in report.notes)
    data = json.loads(json.dumps(report.to_dict()))  # what --json prints
    assert data["detections"]["matched"] == d.matched and data["detections"]["passed"] is True
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # neither of the export's inputs
    with torch.no_grad():
        expected = model(x)[0]
    assert_same_detections(expected, *run_onnx(tmp_path / "tiny.onnx", x))


def test_a_graph_that_computes_other_detections_is_refused(tmp_path):
    with pytest.raises(ps.VerificationError, match="detections differ") as caught:
        ps.export_onnx(TinyDetector(traced_shift=1.0), tmp_path / "x.onnx", input_shape=(1, 3, 16, 16))
    assert "mistranslated" in caught.value.hint


def test_a_graph_right_only_on_its_export_input_is_refused_with_why(tmp_path):
    # The top-k count is read as a Python int: the traced graph keeps the first input's count.
    with pytest.raises(ps.VerificationError, match="detections differ") as caught:
        ps.export_onnx(TinyDetector(fixed_count=True), tmp_path / "x.onnx", input_shape=(1, 3, 16, 16))
    assert "right on the input it was exported with" in caught.value.hint


def test_a_tensor_model_right_only_on_its_export_input_is_refused_too(tmp_path):
    class Branches(nn.Module):
        """Eight branches on input values: torch.export refuses them, and the TorchScript exporter records
        the ones the export input took (two random inputs share all eight with probability 1/256)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            for i, value in enumerate(x.flatten()[:8]):
                if value > 0:
                    y = y + i
            return y

    with pytest.raises(ps.VerificationError, match="differs from PyTorch's") as caught:
        ps.export_onnx(Branches(), tmp_path / "x.onnx", input_shape=(1, 3, 8, 8))
    assert "right on the input it was exported with" in caught.value.hint


def test_a_model_neither_exporter_can_export_is_one_message_with_a_hint(tmp_path, capfd):
    class Eigen(nn.Module):  # linalg.eig: no ONNX op in either exporter
        def forward(self, x):
            return torch.linalg.eig(x[0, 0])[0].real

    with pytest.raises(ps.PlugsurgeonError, match="cannot export Eigen") as caught:
        ps.export_onnx(Eigen(), tmp_path / "x.onnx", input_shape=(1, 3, 8, 8))
    message = caught.value.message
    assert "dynamo exporter" in message and "torchscript exporter" in message and "\x1b[" not in message
    assert "get_submodule" in caught.value.hint
    # the TorchScript exporter prints the graph it failed on from C++, straight to the process's stdout
    assert capfd.readouterr().out == ""


# --- a torchvision FasterRCNN through the command line -------------------------------------------------------


def test_cli_deploys_a_faster_rcnn_then_exports_it_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths, as a user would type them
    deployed = "deployed"
    result = invoke("deploy", FACTORY, "--input-shape", "1,3,128,128", "-o", deployed)
    assert result.exit_code == 0, result.output
    # the command deploy suggests, whole on its line
    assert f"plugsurgeon export {deployed} --onnx FILE" in result.stdout.splitlines()[-1]
    assert (
        "folded: 20 BatchNorm2d into Conv2d" in result.stdout
        and "backbone.body.layer1.0.bn1" not in result.stdout
    )
    assert max(len(line) for line in result.stdout.splitlines()) <= 80

    # the input shape comes from the manifest
    exported = invoke("export", deployed, "--onnx", "frcnn.onnx", "--trust-source")
    assert exported.exit_code == 0, exported.output
    text = exported.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(line.strip() for line in text.splitlines())
    for expected in (
        "torchscript exporter",
        "input: images 1x3x128x128",
        "outputs: boxes, labels, scores",
        "onnxruntime matches PyTorch on 2 random inputs",
        "whole FasterRCNN was exported",
        " 0 unmatched",
    ):
        assert expected in flat, expected

    # the file against the model as it was before deploy, on an image neither run used: end to end
    model = small_faster_rcnn()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)[0]
    assert_same_detections(expected, *run_onnx(tmp_path / "frcnn.onnx", x))


def test_cli_export_without_onnxruntime_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = invoke("export", FACTORY, "--onnx", tmp_path / "x.onnx", "--input-shape", "1,3,128,128")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "onnxruntime" in result.output and "pip install 'plugsurgeon[onnx]'" in result.output
    assert not (tmp_path / "x.onnx").exists()


# --- torchvision's builders and YOLO: slower ----------------------------------------------------------------


@pytest.mark.slow
def test_an_edited_torchvision_faster_rcnn_exports_whole(tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    # Random weights score most boxes near 1 / 91: with the default 0.05 threshold, a seed may keep none. Keeping
    # every box that survives NMS (top 100) gives detections to compare whatever the weights.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = fasterrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=128, max_size=128, box_score_thresh=0.0
        )
    edited = ps.apply(model.eval(), "se", input_shape=SHAPE).model
    deployed = ps.deploy(edited, input_shape=SHAPE).model
    report = ps.export_onnx(deployed, tmp_path / "se.onnx", input_shape=SHAPE)
    assert report.passed and report.detections.matched > 0 and report.detections.unmatched == 0
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = deployed(x)[0]
    assert_same_detections(expected, *run_onnx(tmp_path / "se.onnx", x))


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"])
def test_torchvision_detectors_with_per_detection_fields_export_whole(builder, tmp_path):
    from torchvision.models import detection

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(detection, builder)(
            weights=None, weights_backbone=None, min_size=128, max_size=128, box_score_thresh=0.0
        )
    model.eval()
    report = ps.export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE, allow_unfused=True)
    d = report.detections
    assert report.passed and d.matched > 0 and d.unmatched == 0
    assert set(d.extras) == ({"masks"} if builder.startswith("mask") else {"keypoints", "keypoints_scores"})


@pytest.mark.slow
def test_a_detector_with_nothing_over_its_threshold_says_its_export_is_unchecked(tmp_path):
    from torchvision.models.detection import retinanet_resnet50_fpn

    # RetinaNet's classification head starts at a prior of 0.01, under its 0.05 threshold: no detections
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=128, max_size=128).eval()
    report = ps.export_onnx(model, tmp_path / "r.onnx", input_shape=SHAPE, allow_unfused=True)
    assert report.passed and not report.detections.compared_any
    assert any("no detection could be compared" in n for n in report.notes)


@pytest.mark.slow
def test_yolov8_deploys_and_exports(tmp_path):
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False)
    shape = (1, 3, 64, 64)
    deployed = ps.deploy(model, input_shape=shape).model
    report = ps.export_onnx(deployed, tmp_path / "y.onnx", input_shape=shape)
    assert report.passed and report.detections is None and report.max_rel_diff < 1e-4
    x = torch.rand(shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = deployed(x)[0]  # Detect's eval output: (decoded boxes and class scores, raw maps)
    got = run_onnx(tmp_path / "y.onnx", x)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.slow
def test_an_end_to_end_yolo_whose_fuse_drops_its_training_head_is_refused_with_the_reason():
    # What `plugsurgeon deploy ultralytics.nn.tasks:DetectionModel` builds in Ultralytics 8.4 (YOLO26): its own
    # fuse() removes the one-to-many head, so the fused model returns fewer outputs than the original.
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel("yolo26n.yaml", verbose=False)
    with pytest.raises(
        ps.VerificationError, match=r"returns \d+ tensors where the original returns \d+"
    ) as caught:
        ps.deploy(model, input_shape=(1, 3, 64, 64))
    assert "DetectionModel.fuse()" in caught.value.hint and "inf" not in caught.value.message
