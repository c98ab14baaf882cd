"""Every Ultralytics model YAML of the installed version: `backbone`, `stage` and `neck.level` sites where the YAML
puts the extractor and the levels the head reads.

Ground truth is the YAML itself, read with yaml.safe_load: the backbone section's length names the extractor's last
layer (``model.{len(backbone) - 1}``), the head's last entry's ``from`` names the layers whose maps the head reads;
the stride of each layer's output comes from forward hooks on an eager run. Nothing here asks plugsurgeon where
things are: the sites are checked against those facts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import plugsurgeon as ps
from tests.slow import slow_except

pytest.importorskip("ultralytics")
import ultralytics  # noqa: E402
from ultralytics.nn import tasks  # noqa: E402

SIZE = 256
CFG = Path(ultralytics.__file__).parent / "cfg" / "models"
YAMLS = sorted(str(p.relative_to(CFG)) for p in CFG.rglob("*.yaml"))

# Models that do not build offline, with why (each is checked to still fail, so the list cannot go stale).
UNBUILDABLE = {
    "11/yolo11-cls-resnet18.yaml": "its TorchVision layer loads ImageNet weights (a download)",
}
# The YAML names levels the traced (eval-mode) forward does not read side by side: the levels found are the pyramid's
# output at each size, the maps its top-down path upsamples (the YAML's nn.Upsample layers read them) and the head's.
OTHER_LEVELS = {"26/yolo26-sem.yaml": "its head reads P4 only in train mode (an auxiliary head); in eval mode it reads P3 "
                                      "alone, so no node reads the levels side by side and the pyramid rule gives them"}
# Models whose YAML draws the line where structure alone cannot: YOLOv3-SPP lists its SPP block (the context block
# YOLOv5/v8 list in their backbone) in the head, so the extractor found ends at the SPP, after the YAML's backbone.
CONVENTION = {
    "v3/yolov3-spp.yaml": "the YAML puts SPP in the head; YOLOv5/v8 put SPPF in the backbone",
}


def task_class(head: str) -> type[nn.Module]:
    if head == "RTDETRDecoder":
        return tasks.RTDETRDetectionModel
    if head == "SemanticSegment":
        return tasks.SemanticSegmentationModel
    if head == "Depth":
        return tasks.DepthModel
    if head.startswith("YOLOE"):
        return tasks.YOLOESegModel if "Segment" in head else tasks.YOLOEModel
    if head.startswith("World"):
        return tasks.WorldModel
    for name, cls in (("Segment", tasks.SegmentationModel), ("Pose", tasks.PoseModel), ("OBB", tasks.OBBModel),
                      ("Classify", tasks.ClassificationModel), ("Detect", tasks.DetectionModel)):
        if head.endswith(name) or re.fullmatch(rf"{name}\d*|v\d+{name}", head):
            return cls
    raise LookupError(f"no task class for a {head} head")


def declared(rel: str) -> dict:
    return yaml.safe_load((CFG / rel).read_text())


def build(rel: str) -> nn.Module:
    cfg = declared(rel)
    if "scales" in cfg:
        cfg["scale"] = "n" if "n" in cfg["scales"] else sorted(cfg["scales"])[0]
    return task_class(cfg["head"][-1][2])(cfg, verbose=False).eval()


def layer_of(path: str) -> int | None:
    """The top-level layer a site path lies in: model.12.cv2.act, model.10.3:add_22 and model.12 are in layer 12."""
    match = re.match(r"model\.(\d+)(?:[.:]|$)", path)
    return int(match.group(1)) if match else None


def layer_outputs(model: nn.Module) -> dict[int, tuple[int, ...]]:
    shapes: dict[int, tuple[int, ...]] = {}
    handles = [layer.register_forward_hook(lambda _m, _a, out, i=i: shapes.__setitem__(i, tuple(out.shape))
                                           if isinstance(out, torch.Tensor) else None)
               for i, layer in enumerate(model.model)]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, SIZE, SIZE))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def stride(shape: tuple[int, ...]) -> int | None:
    """SIZE over the map's size when that is a power of two; None for a map a few pixels off (a padding layer)."""
    if SIZE % shape[2] or (SIZE // shape[2]) & (SIZE // shape[2] - 1):
        return None
    return SIZE // shape[2]


@pytest.mark.parametrize("rel", slow_except([y for y in YAMLS if y not in CONVENTION], default=["v5/yolov5.yaml", "v3/yolov3-tiny.yaml"]))
def test_roles_follow_the_yaml(rel):
    if rel in UNBUILDABLE:
        with pytest.raises(Exception):  # noqa: B017 - any failure to build is what the entry says
            build(rel)
        return
    cfg, model = declared(rel), build(rel)
    last_backbone = len(cfg["backbone"]) - 1
    head_from = cfg["head"][-1][0]
    outputs = layer_outputs(model)
    traced = ps.trace(model, (1, 3, SIZE, SIZE))

    backbone = ps.find_sites(traced, "backbone")
    assert [layer_of(s.path) for s in backbone] == [last_backbone], f"backbone at {[s.path for s in backbone]}"
    assert backbone[0].shape == outputs[last_backbone]

    # The stage at each stride is the output of the backbone's last layer at that stride; a stride no layer outputs
    # (a stem that downsamples twice) may have its stage inside the first layer that goes past it. The image itself
    # (YOLOv9-E's first layer, an nn.Identity both its extractors read) ends no stage.
    last_at: dict[int, int] = {}
    for index in range(last_backbone + 1):
        if (index in outputs and len(outputs[index]) == 4 and (at := stride(outputs[index])) is not None
                and cfg["backbone"][index][2] != "nn.Identity"):
            last_at[at] = index
    stages = ps.find_sites(traced, "stage")
    assert set(last_at) <= {s.total_stride for s in stages}, f"stages {[s.path for s in stages]}"
    for site in stages:
        if site.total_stride in last_at:
            assert layer_of(site.path) == last_at[site.total_stride], f"stage {site.path} (stride {site.total_stride})"
            assert site.shape == outputs[last_at[site.total_stride]]
        else:
            past = min(i for i in range(last_backbone + 1) if i in outputs and len(outputs[i]) == 4
                       and (at := stride(outputs[i])) is not None and at > site.total_stride)
            assert layer_of(site.path) == past and "pool" not in site.path, f"stage {site.path}"
        assert site.total_stride & (site.total_stride - 1) == 0, f"stage {site.path} at stride {site.total_stride}"

    levels = ps.find_sites(traced, "neck.level")
    if isinstance(head_from, int):  # a classifier reads one map: no pyramid
        assert levels == []
    else:
        read = [i if i >= 0 else len(cfg["backbone"]) + len(cfg["head"]) - 1 + i for i in head_from]
        if rel in OTHER_LEVELS:
            upsampled = {i + f if f < 0 else f for i, (f, _n, module, _a) in enumerate(cfg["backbone"] + cfg["head"])
                         if module == "nn.Upsample"}
            assert sorted(layer_of(s.path) for s in levels) == sorted(set(read) | upsampled), f"levels {[s.path for s in levels]}"
            assert sorted(layer_of(s.path) for s in levels) != sorted(read)
            return
        assert sorted(layer_of(s.path) for s in levels) == sorted(read), f"levels {[s.path for s in levels]}"
        for site in levels:
            assert site.shape == outputs[layer_of(site.path)]


@pytest.mark.slow
@pytest.mark.parametrize("rel", sorted(CONVENTION))
def test_where_the_yaml_draws_the_line_elsewhere(rel):
    """The extractor found ends after the YAML's backbone: if this starts failing, the entry can go."""
    cfg, model = declared(rel), build(rel)
    traced = ps.trace(model, (1, 3, SIZE, SIZE))
    backbone = ps.find_sites(traced, "backbone")
    assert [layer_of(s.path) for s in backbone] != [len(cfg["backbone"]) - 1]
    assert sorted(layer_of(s.path) for s in ps.find_sites(traced, "neck.level")) == sorted(cfg["head"][-1][0])


@pytest.mark.slow
def test_levels_of_a_model_traced_layer_by_layer_take_an_insertion():
    """YOLO-World's forward and head branch on the text features' batch, so no graph holds what the head reads; its
    levels come from a run. SE there edits the layers the YAML's head reads; the model runs, at another batch too."""
    rel = "v8/yolov8-world.yaml"
    cfg, model = declared(rel), build(rel)
    result = ps.apply(model, ps.Recipe(name="se", steps=[ps.Step(plugin="se", at="neck.level")]), input_shape=(1, 3, SIZE, SIZE))
    assert sorted(layer_of(e.site) for e in result.report.edits) == sorted(cfg["head"][-1][0])
    with torch.no_grad():
        boxes = result.model.eval()(torch.randn(2, 3, SIZE, SIZE))[0]
    assert boxes.shape[0] == 2
    with pytest.raises(ps.SiteError, match="no forward that surgery can edit reads the other levels"):
        ps.apply(model, ps.Recipe(name="asff", steps=[ps.Step(plugin="asff", at="neck.level")]), input_shape=(1, 3, SIZE, SIZE),
                 dry_run=True)
