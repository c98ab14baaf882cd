"""An edited YOLO trained by Ultralytics' own trainer (plugsurgeon.integrations.ultralytics), offline, on a tiny
synthetic dataset each test writes: the edit is in the trainer's model, its EMA, ``last.pt`` and ``YOLO(last.pt)``;
training changes the plugin weights; fine-tuning and resuming keep them; val/predict run; and the ONNX file
Ultralytics exports computes what the trained torch model computes (for ACNet, only if its blocks are
reparameterized before Ultralytics folds the BNs, which the check makes sure of).

One case (detect + CBAM, with the ONNX check) runs by default; the others are ``slow``.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no settings sync, font or weight downloads

import numpy as np
import pytest
import torch
from torch import nn

import plugsurgeon as ps

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import BaseModel  # noqa: E402
from ultralytics.nn.tasks import DetectionModel as PlainDetectionModel  # noqa: E402

from plugsurgeon.integrations import ultralytics as psu  # noqa: E402

IMGSZ = 64
YAML = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml", "classify": "yolov8n-cls.yaml"}
MODEL = {"detect": psu.DetectionModel, "segment": psu.SegmentationModel, "pose": psu.PoseModel, "classify": psu.ClassificationModel}
NAMES = {0: "red", 1: "blue"}


def write_dataset(root, task: str, images: int = 4, seed: int = 0) -> str:
    """A YOLO-format dataset: coloured boxes on noise, with box labels (detect), polygons (segment) or
    boxes and 4 keypoints (pose); for classify, a folder per class. Returns what ``data=`` takes."""
    rng = np.random.default_rng(seed)
    from PIL import Image

    if task == "classify":
        for split in ("train", "val"):
            for cls, colour in ((0, (255, 0, 0)), (1, (0, 0, 255))):
                (root / split / NAMES[cls]).mkdir(parents=True)
                for i in range(images // 2):
                    image = rng.integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
                    image[16:48, 16:48] = colour
                    Image.fromarray(image).save(root / split / NAMES[cls] / f"{i}.png")
        return str(root)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(images):
        image = rng.integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        lines = []
        for _ in range(2):
            w, h = rng.uniform(0.25, 0.5, 2)
            x, y = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            cls = int(rng.integers(0, len(NAMES)))
            x0, y0, x1, y1 = (int(v * IMGSZ) for v in (x - w / 2, y - h / 2, x + w / 2, y + h / 2))
            image[y0:y1, x0:x1] = (255, 0, 0) if cls == 0 else (0, 0, 255)
            if task == "segment":
                polygon = (x - w / 2, y - h / 2, x + w / 2, y - h / 2, x + w / 2, y + h / 2, x - w / 2, y + h / 2)
                lines.append(f"{cls} " + " ".join(f"{v:.5f}" for v in polygon))
            elif task == "pose":  # the box's corners, visible
                corners = ((x - w / 2, y - h / 2), (x + w / 2, y - h / 2), (x + w / 2, y + h / 2), (x - w / 2, y + h / 2))
                lines.append(f"{cls} {x:.5f} {y:.5f} {w:.5f} {h:.5f} " + " ".join(f"{a:.5f} {b:.5f} 2" for a, b in corners))
            else:
                lines.append(f"{cls} {x:.5f} {y:.5f} {w:.5f} {h:.5f}")
        Image.fromarray(image).save(root / "images" / "train" / f"{i}.png")
        (root / "labels" / "train" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {k}: {v}\n" for k, v in NAMES.items())
    keypoints = "kpt_shape: [4, 3]\nflip_idx: [1, 0, 3, 2]\n" if task == "pose" else ""
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\n{keypoints}names:\n{names}")
    return str(root / "data.yaml")


def settings(tmp_path, data: str, name: str, **more) -> dict:
    """One epoch (no warmup, so the first step already moves every weight), tiny, offline, nothing plotted."""
    return {"data": data, "epochs": 1, "imgsz": IMGSZ, "batch": 4, "workers": 0, "plots": False, "amp": False, "verbose": False,
            "project": str(tmp_path / "runs"), "name": name, "exist_ok": True, "deterministic": False, **more}


def plugin_classes(recipe: str) -> tuple[type[nn.Module], ...]:
    return ps.get_plugin(recipe).classes


def count(model: nn.Module, recipe: str) -> int:
    return sum(isinstance(m, plugin_classes(recipe)) for m in model.modules())


def plugin_paths(model: nn.Module, recipe: str) -> list[str]:
    return [path for path, m in model.named_modules() if isinstance(m, plugin_classes(recipe))]


def plugin_tensors(model: nn.Module, recipe: str) -> dict[str, torch.Tensor]:
    """The plugins' parameters, by name, as float copies."""
    paths = plugin_paths(model, recipe)
    return {name: p.detach().float().clone() for name, p in model.named_parameters()
            if any(name.startswith(path + ".") for path in paths)}


def snapshot_at_start(yolo, recipe: str) -> dict[str, torch.Tensor]:
    """Filled with the trainer's plugin weights once its model is built, before the first step."""
    seen: dict[str, torch.Tensor] = {}
    yolo.add_callback("on_pretrain_routine_end", lambda trainer: seen.update(plugin_tensors(trainer.model, recipe)))
    return seen


def checkpoint_model(path) -> nn.Module:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint.get("ema") or checkpoint["model"]


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The eval outputs an ONNX export has, in order: predictions (and a segmenter's mask prototypes);
    a classifier's probabilities."""
    with torch.no_grad():
        out = model.eval()(x)
    first = out if isinstance(out, torch.Tensor) else out[0]
    return list(first) if isinstance(first, (tuple, list)) else [first]


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest error relative to its channel's largest value: a detector's box rows (pixels) would
    otherwise set the scale for its class probabilities."""
    dims = [d for d in range(reference.dim()) if d != 1]
    scale = reference.abs().amax(dim=dims, keepdim=True).clamp_min(1e-6)
    return ((got - reference).abs() / scale).max().item()


def onnx_matches(yolo, x: torch.Tensor) -> None:
    """Export with Ultralytics and run it in onnxruntime: the same as ``yolo.model`` unfused, in eval mode."""
    import onnxruntime

    expected = outputs(yolo.model, x)
    path = yolo.export(format="onnx", imgsz=IMGSZ, simplify=False, verbose=False)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(expected)
    for out, ref in zip(got, expected, strict=True):
        assert out.shape == tuple(ref.shape)
        assert relative_error(torch.from_numpy(out), ref) < 1e-4


def randomize_norms(model: nn.Module, recipe: str | None = None) -> None:
    """Give every BatchNorm (inside a plugin, with ``recipe``) the statistics of a long training run: after
    one tiny epoch ACNet's branch BNs (zero at init) are still nearly zero, and an export that dropped them
    would pass."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if recipe is None or isinstance(module, plugin_classes(recipe)):
            for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
                for tensor, low, high in ((bn.weight.data, 0.5, 1.5), (bn.bias.data, -0.5, 0.5),
                                          (bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 1.5)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


# "given": how the recipe reaches the trainer: named to train(), or already applied to the YOLO's model
# (the way the issue found it dropped: ps.apply(yolo.model, ...) on a YAML-built YOLO, then train).
CASES = [
    pytest.param("detect", "cbam", id="detect-cbam"),
    pytest.param("detect", "cbam-applied", id="detect-cbam-applied", marks=pytest.mark.slow),
    pytest.param("detect", "acnet", id="detect-acnet", marks=pytest.mark.slow),
    pytest.param("segment", "cbam", id="segment-cbam", marks=pytest.mark.slow),
    pytest.param("segment", "acnet", id="segment-acnet", marks=pytest.mark.slow),
    pytest.param("pose", "acnet", id="pose-acnet", marks=pytest.mark.slow),
    pytest.param("classify", "cbam", id="classify-cbam", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("task", "recipe"), CASES)
def test_the_edit_survives_training_fine_tuning_and_export(tmp_path, task, recipe):
    recipe, applied = recipe.removesuffix("-applied"), recipe.endswith("-applied")
    data = write_dataset(tmp_path / "data", task)

    # Train: the edit is in the trainer's model, its EMA, last.pt and the YOLO's model afterwards.
    yolo = YOLO(YAML[task])
    at_start = snapshot_at_start(yolo, recipe)
    if applied:
        ps.apply(yolo.model, recipe, inplace=True, input_shape=(1, 3, IMGSZ, IMGSZ))
        psu.train(yolo, **settings(tmp_path, data, "train"))
    else:
        psu.train(yolo, recipe, **settings(tmp_path, data, "train"))
    trainer = yolo.trainer
    n = count(trainer.model, recipe)
    assert n > 0
    assert count(trainer.ema.ema, recipe) == n
    last = trainer.last
    assert count(checkpoint_model(last), recipe) == n
    assert count(yolo.model, recipe) == n
    assert isinstance(yolo.model, MODEL[task])

    # Training moved every plugin's weights (a single tensor may have had no gradient: a ReLU'd bias in a
    # 2-unit bottleneck can be dead on four images).
    trained = plugin_tensors(trainer.model, recipe)
    assert at_start and at_start.keys() == trained.keys()
    changed = {k for k in trained if not torch.equal(trained[k], at_start[k])}
    untrained = [path for path in plugin_paths(trainer.model, recipe) if not any(k.startswith(path + ".") for k in changed)]
    assert not untrained, f"plugins training did not change: {untrained}"

    # Reloaded, the checkpoint holds the edit and its trained weights.
    reloaded = YOLO(str(last))
    assert count(reloaded.model, recipe) == n
    saved = plugin_tensors(reloaded.model, recipe)

    # Fine-tuning from last.pt starts from exactly those weights (every tensor loaded) and keeps the edit.
    tuned = YOLO(str(last))
    tuned_start = snapshot_at_start(tuned, recipe)
    psu.train(tuned, **settings(tmp_path, data, "tune"))
    assert tuned_start.keys() == saved.keys()
    assert all(torch.equal(tuned_start[k], saved[k]) for k in saved)
    assert count(tuned.trainer.model, recipe) == count(tuned.trainer.ema.ema, recipe) == n
    assert count(checkpoint_model(tuned.trainer.last), recipe) == count(tuned.model, recipe) == n

    # Another recipe on an edited model is refused before anything trains.
    with pytest.raises(ps.RecipeError, match="already carries"):
        psu.train(YOLO(str(last)), "se" if recipe != "se" else "cbam", **settings(tmp_path, data, "refused"))

    # The ONNX file Ultralytics exports computes the trained model (Ultralytics fuses it on the way).
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    exported = YOLO(str(last))
    onnx_matches(exported, x)
    if recipe == "acnet":
        randomize_norms(exported.model, recipe)
        reference = outputs(exported.model, x)
        naive = outputs(BaseModel.fuse(copy.deepcopy(exported.model), verbose=False), x)  # Ultralytics' fuse alone
        assert relative_error(naive[0], reference[0]) > 1e-3  # what onnx_matches would catch
        onnx_matches(exported, x)

    # val and predict run (both fuse the model as Ultralytics does).
    metrics = YOLO(str(last)).val(data=data, imgsz=IMGSZ, batch=4, workers=0, plots=False, verbose=False,
                                  project=str(tmp_path / "runs"), name="val", exist_ok=True)
    assert metrics is not None
    predictor = YOLO(str(last))
    (result,) = predictor.predict(x, imgsz=IMGSZ, verbose=False)
    assert (result.probs if task == "classify" else result.boxes) is not None

    # A model fused in place has lost the tensors the edited network trains: refused, with what to do.
    with pytest.raises(ps.ModelLoadError, match="fused"):
        psu.train(predictor.fuse(), **settings(tmp_path, data, "fused"))


@pytest.mark.slow
def test_resume_keeps_the_edit(tmp_path):
    data = write_dataset(tmp_path / "data", "detect")

    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(trainer):
        if trainer.epoch == 0:
            raise Interrupted

    yolo = YOLO(YAML["detect"])
    yolo.add_callback("on_fit_epoch_end", stop_after_first_epoch)  # after last.pt is saved, optimizer and all
    with pytest.raises(Interrupted):
        psu.train(yolo, "cbam", **settings(tmp_path, data, "run", epochs=2))
    last = tmp_path / "runs" / "run" / "weights" / "last.pt"
    n = count(checkpoint_model(last), "cbam")
    assert n > 0

    # Ultralytics' default trainer cannot resume it: it rebuilds the plain network and fails loudly, not silently.
    with pytest.raises(Exception):  # noqa: B017 - whichever of its strict loads fails first
        YOLO(str(last)).train(resume=True)

    resumed = YOLO(str(last))
    psu.train(resumed, resume=True)
    assert resumed.trainer.start_epoch == 1
    assert count(resumed.trainer.model, "cbam") == count(resumed.trainer.ema.ema, "cbam") == n
    assert count(resumed.model, "cbam") == n


# A two-level detector with RepC3 blocks: RepConv's own fold reads only its conv's weight, so an ACBlock's
# folded bias must reach it through the BN (RT-DETR's RepC3 neck; cheaper to build here).
REPCONV = {"nc": 2, "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "RepC3", [16]], [-1, 1, "Conv", [32, 3, 2]],
                                 [-1, 1, "RepC3", [32]]],
           "head": [[[1, 3], 1, "Detect", ["nc"]]]}


@pytest.mark.parametrize("cfg", [YAML["detect"], REPCONV], ids=["yolov8n", "repc3"])
def test_fuse_folds_train_time_blocks_exactly(cfg):
    """Without training: Ultralytics' fuse() alone folds BN into an ACBlock's square kernel only; the model
    made fuse-safe reparameterizes the blocks first and fuses to exactly what it computed."""
    model = PlainDetectionModel(copy.deepcopy(cfg), nc=2, verbose=False)
    ps.apply(model, "acnet", inplace=True, input_shape=(1, 3, IMGSZ, IMGSZ))
    randomize_norms(model)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    reference = outputs(model, x)[0]
    naive = outputs(copy.deepcopy(model).fuse(verbose=False), x)[0]
    assert relative_error(naive, reference) > 1e-2

    safe = psu.fuse_safe(model)
    assert safe is model and isinstance(model, PlainDetectionModel) and type(model).__name__ == "DetectionModel"
    fused = copy.deepcopy(model).fuse(verbose=False)
    assert count(fused, "acnet") == 0 and fused.is_fused()
    assert relative_error(outputs(fused, x)[0], reference) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("yaml", ["yolov10n.yaml", "yolo26n.yaml"])
def test_detectors_edited_on_their_top_level_layers_train(tmp_path, yaml):
    """CBAM lands directly on top-level layers of these YOLOs; the trainer's EMA and checkpoints copy them."""
    data = write_dataset(tmp_path / "data", "detect")
    yolo = YOLO(yaml)
    psu.train(yolo, "cbam", **settings(tmp_path, data, "train"))
    n = count(yolo.trainer.model, "cbam")
    assert n > 0 and count(yolo.trainer.ema.ema, "cbam") == n and count(checkpoint_model(yolo.trainer.last), "cbam") == n
    (result,) = YOLO(str(yolo.trainer.last)).predict(torch.rand(1, 3, IMGSZ, IMGSZ), imgsz=IMGSZ, verbose=False)
    assert result.boxes is not None


def test_apply_edits_the_yolo_object_and_its_predict_fuses_exactly():
    """psu.apply edits YOLO.model in place and makes it fuse-safe: predict() fuses a trained-looking ACNet
    model to what it computed (Ultralytics' fuse alone would not), and the edit survives the fuse."""
    yolo = YOLO(YAML["detect"])
    result = psu.apply(yolo, "acnet", input_shape=(1, 3, IMGSZ, IMGSZ))
    assert result.model is yolo.model and isinstance(yolo.model, psu.DetectionModel) and result.report.applied
    randomize_norms(yolo.model)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    reference = outputs(copy.deepcopy(yolo.model), x)[0]
    yolo.predict(x, imgsz=IMGSZ, verbose=False)  # the predictor's backend runs a fused copy of yolo.model
    fused = yolo.predictor.model.model
    assert fused.is_fused() and count(fused, "acnet") == 0
    assert relative_error(outputs(fused, x)[0], reference) < 1e-4


def test_mistakes_are_refused_with_a_hint(tmp_path):
    with pytest.raises(ps.RecipeError, match="no plugsurgeon edit") as plain:
        psu.train(YOLO(YAML["detect"]), data="unused.yaml")
    assert plain.value.hint
    with pytest.raises(ps.PlugsurgeonError, match="makes the trainer"):
        psu.train(YOLO(YAML["detect"]), "cbam", trainer=psu.trainer("cbam"))
    with pytest.raises(ps.PlugsurgeonError, match="task 'depth'"):
        psu.trainer("cbam", task="depth")
    with pytest.raises(ps.UnknownNameError):
        psu.trainer("no-such-recipe")
    assert issubclass(psu.trainer("cbam", task="segment"), psu.TASKS["segment"])
