"""An edited model lives on: what frameworks and users do with a model after surgery keeps the edit and the function.

For a representative of each zoo, edited as a user would (random BatchNorm statistics, so a wrong fold
or a lost module shows in the numbers), every operation below must give a model that computes the
same function as the edited model (fp32 round-off) and still holds the new modules: ``copy.deepcopy``,
pickling reloaded in a fresh process, a state_dict round trip into a freshly edited model, dtype and
channels_last conversions, EMA copies (timm's ModelEmaV3, Ultralytics' ModelEMA), DDP, torch.compile
and a second ``ps.apply`` on top.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_leaves

import plugsurgeon as ps
from plugsurgeon.graph.edited import original_class
from tests.nets import randomize_batchnorm

timm = pytest.importorskip("timm")
smp = pytest.importorskip("segmentation_models_pytorch")
ultralytics_tasks = pytest.importorskip("ultralytics.nn.tasks")


def _torchvision_resnet() -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None)


def _torchvision_detector() -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)


def _yolo(yaml: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        cls = ultralytics_tasks.ClassificationModel if "-cls" in yaml else ultralytics_tasks.DetectionModel
        return cls(yaml, verbose=False)

    return build


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    recipe: dict
    input_shape: tuple[int, ...]
    second: dict  # a second recipe applied on top of the edited model
    images: bool = False  # torchvision detectors take a list of images

    def call(self, model: nn.Module, x: torch.Tensor):
        return model(list(x)) if self.images else model(x)


def _steps(*steps: dict) -> dict:
    return {"name": "lifecycle", "steps": list(steps)}


CBAM = _steps({"plugin": "cbam", "at": "residual.branch"})
ECA_ON_TOP = _steps({"plugin": "eca", "at": "residual.branch"})
CASES = {
    "torchvision-resnet18": Case(_torchvision_resnet, CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "torchvision-fasterrcnn": Case(_torchvision_detector, _steps({"plugin": "se", "at": "residual.branch"}), (1, 3, 128, 128),
                                   _steps({"plugin": "eca", "at": "residual.branch", "where": {"last": 2}}), images=True),
    "timm-resnet10t": Case(lambda: timm.create_model("resnet10t", pretrained=False), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "smp-unet": Case(lambda: smp.Unet("resnet18", encoder_weights=None, classes=2), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "yolov8n": Case(_yolo("yolov8n.yaml"), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "yolov8n-stage": Case(_yolo("yolov8n.yaml"), _steps({"plugin": "se", "at": "stage"}), (1, 3, 64, 64),
                          _steps({"plugin": "eca", "at": "stage"})),
    # Edits inside Ultralytics Conv blocks, which its fuse() switches to forward_fuse.
    "yolov8n-neck": Case(_yolo("yolov8n.yaml"), _steps({"plugin": "gc", "at": "neck.level"}), (1, 3, 64, 64),
                         _steps({"plugin": "eca", "at": "neck.level"})),
    "yolo11n": Case(_yolo("yolo11n.yaml"), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "yolov8n-cls": Case(_yolo("yolov8n-cls.yaml"), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    # Edits that land directly on a top-level Ultralytics layer (its model loop reads each layer's f and i).
    "yolov10n": Case(_yolo("yolov10n.yaml"), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
    "yolo26n": Case(_yolo("yolo26n.yaml"), CBAM, (1, 3, 64, 64), ECA_ON_TOP),
}


@dataclass
class Edited:
    case: Case
    model: nn.Module  # edited, eval mode
    x: torch.Tensor
    expected: object  # the edited model's output on x
    new_modules: dict[str, type]  # path -> class of every module surgery added


def _edit(case: Case, seed: int = 0) -> Edited:
    torch.manual_seed(seed)
    base = randomize_batchnorm(case.build().eval(), seed)
    result = ps.apply(base, case.recipe, input_shape=case.input_shape)
    model = result.model.eval()
    # Plugins are identity at init: moved off it, so a copy that lost one (or skipped it) shows in the numbers.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for edit in result.report.edits:
            for tensor in model.get_submodule(edit.module).parameters():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = case.call(model, x)
    return Edited(case, model, x, expected, {e.module: type(model.get_submodule(e.module)) for e in result.report.edits})


class EditedCases(dict):
    """Each case edited once per module, on first use (the slow cases cost nothing in the default run)."""

    def __missing__(self, name: str) -> Edited:
        self[name] = _edit(CASES[name])
        return self[name]


@pytest.fixture(scope="module")
def edited() -> EditedCases:
    return EditedCases()


def assert_same_function(case: Case, model: nn.Module, x: torch.Tensor, expected, *, atol: float = 1e-5, rtol: float = 1e-4,
                         first_only: bool = False) -> None:
    model.eval()
    with torch.no_grad():
        got = case.call(model, x)
    if first_only:
        got = tree_leaves(got)[0]
    got_leaves, expected_leaves = tree_leaves(got), tree_leaves(expected)
    assert len(got_leaves) == len(expected_leaves)
    for g, e in zip(got_leaves, expected_leaves, strict=True):
        if isinstance(e, torch.Tensor):
            torch.testing.assert_close(g.to(e.dtype).contiguous(), e, atol=atol, rtol=rtol)
        else:
            assert g == e


def assert_edit_kept(item: Edited, model: nn.Module) -> None:
    found = {name: type(m) for name, m in model.named_modules()}
    for path, cls in item.new_modules.items():
        assert path in found and issubclass(found[path], cls), path


def assert_classes_kept(original: nn.Module, model: nn.Module) -> None:
    """Every module keeps (an edit subclass of) its class, so isinstance checks in framework code hold."""
    classes = {name: original_class(m) for name, m in original.named_modules()}
    for name, module in model.named_modules():
        if name in classes:
            assert isinstance(module, classes[name]) and type(module).__name__ == classes[name].__name__, name


# The default suite lives every operation through on one classifier and the YOLO whose copies broke;
# the other zoo representatives run under -m slow.
DEFAULT = ("torchvision-resnet18", "yolo26n")
NAMES = [name if name in DEFAULT else pytest.param(name, marks=pytest.mark.slow) for name in CASES]


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_keeps_edit_class_and_function(edited, name):
    item = edited[name]
    copied = copy.deepcopy(item.model)
    assert_edit_kept(item, copied)
    assert_classes_kept(item.model, copied)
    assert_same_function(item.case, copied, item.x, item.expected)
    assert_same_function(item.case, copy.deepcopy(copied), item.x, item.expected)  # a copy of a copy


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_into_a_freshly_edited_model(edited, name):
    item = edited[name]
    fresh = _edit(item.case, seed=1).model  # other weights, same structure
    fresh.load_state_dict(item.model.state_dict(), strict=True)
    assert_same_function(item.case, fresh, item.x, item.expected)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_memory_format_conversions(edited, name):
    item = edited[name]
    as_double = copy.deepcopy(item.model).double()
    if item.case.images:  # a detector's discrete choices (NMS) may flip in another precision: its backbone computes the same
        with torch.no_grad():
            features = item.model.backbone(item.x)
            double_features = as_double.backbone(item.x.double())
        for got, want in zip(tree_leaves(double_features), tree_leaves(features), strict=True):
            torch.testing.assert_close(got.float(), want, atol=1e-4, rtol=1e-3)
    else:
        assert_same_function(item.case, as_double, item.x.double(), item.expected, atol=1e-4, rtol=1e-3)
    channels_last = copy.deepcopy(item.model).to(memory_format=torch.channels_last)
    assert_same_function(item.case, channels_last, item.x.contiguous(memory_format=torch.channels_last), item.expected)


@pytest.mark.parametrize("name", NAMES)
def test_ema_copies(edited, name):
    item = edited[name]
    timm_ema = timm.utils.ModelEmaV3(item.model, decay=0.9)
    assert_edit_kept(item, timm_ema.module)
    assert_same_function(item.case, timm_ema.module, item.x, item.expected)
    timm_ema.update(item.model)
    assert_same_function(item.case, timm_ema.module, item.x, item.expected)  # an update towards the same weights
    from ultralytics.utils.torch_utils import ModelEMA

    yolo_ema = ModelEMA(item.model)
    yolo_ema.update(item.model)
    assert_edit_kept(item, yolo_ema.ema)
    assert_same_function(item.case, yolo_ema.ema, item.x, item.expected, atol=1e-4)


# Ultralytics' own fuse() by default on edits inside its Conv blocks, the case it switches to forward_fuse.
ULTRALYTICS = [name if name == "yolov8n-neck" else pytest.param(name, marks=pytest.mark.slow)
               for name in CASES if name.startswith("yolo")]


@pytest.mark.parametrize("name", ULTRALYTICS)
def test_ultralytics_own_fuse_keeps_the_edit(edited, name):
    """predict(), val() and export() fuse the model first: an edited Conv switches to the edited form
    of its forward_fuse, so the fused model still runs the inserted modules."""
    item = edited[name]
    fused = copy.deepcopy(item.model).fuse(verbose=False)
    assert fused.is_fused()
    assert_edit_kept(item, fused)
    # The predictions (an end-to-end head's fuse() drops its one-to-many branch from what else it returns).
    predictions = tree_leaves(item.expected)[0]
    assert_same_function(item.case, fused, item.x, predictions, atol=1e-4, rtol=1e-3, first_only=True)


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not built in")
    store = tmp_path_factory.mktemp("ddp") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["torchvision-resnet18", pytest.param("yolo26n", marks=pytest.mark.slow),
                                  pytest.param("smp-unet", marks=pytest.mark.slow)])
def test_ddp(edited, name, process_group):
    item = edited[name]
    wrapped = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(item.model))
    assert_same_function(item.case, wrapped, item.x, item.expected)


@pytest.mark.parametrize("name", ["torchvision-resnet18", pytest.param("yolov8n", marks=pytest.mark.slow),
                                  pytest.param("yolo26n", marks=pytest.mark.slow)])
def test_torch_compile(edited, name):
    item = edited[name]
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(item.model), backend="aot_eager", fullgraph=False)
    assert_same_function(item.case, compiled, item.x, item.expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_second_apply_on_top_keeps_the_first_edit(edited, name):
    item = edited[name]
    result = ps.apply(item.model, item.case.second, input_shape=item.case.input_shape)
    assert_edit_kept(item, result.model)
    assert result.report.edits and not result.report.renamed_keys
    assert_classes_kept(item.model, result.model)
    with torch.no_grad():
        item.case.call(result.model.eval(), item.x)


FRESH_PROCESS = textwrap.dedent("""
    import sys, torch
    from torch.utils._pytree import tree_leaves
    for path in sys.argv[1:]:
        model = torch.load(path + ".model.pt", weights_only=False).eval()
        io = torch.load(path + ".io.pt", weights_only=False)
        with torch.no_grad():
            out = model(list(io["x"])) if io["images"] else model(io["x"])
        torch.save({"out": out, "classes": {n: (type(m).__module__, type(m).__name__) for n, m in model.named_modules()}},
                   path + ".reloaded.pt")
""")


@pytest.mark.parametrize("names", [DEFAULT, pytest.param(tuple(CASES), marks=pytest.mark.slow)], ids=["default", "zoo"])
def test_pickles_reload_in_a_fresh_process(edited, names, tmp_path):
    paths = []
    for name in names:
        item = edited[name]
        path = str(tmp_path / name)
        torch.save(item.model, path + ".model.pt")
        torch.save({"x": item.x, "images": item.case.images}, path + ".io.pt")
        paths.append(path)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    ran = subprocess.run([sys.executable, "-c", FRESH_PROCESS, *paths], capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    for name, path in zip(names, paths, strict=True):
        item = edited[name]
        reloaded = torch.load(path + ".reloaded.pt", weights_only=False)
        for got, want in zip(tree_leaves(reloaded["out"]), tree_leaves(item.expected), strict=True):
            if isinstance(want, torch.Tensor):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        classes = reloaded["classes"]
        for path_in_model, cls in item.new_modules.items():
            assert classes[path_in_model] == (cls.__module__, cls.__name__), (name, path_in_model)
        for module_path, module in item.model.named_modules():
            assert classes[module_path][1] == type(module).__name__, (name, module_path)
