"""Roles that mean the same on every architecture (docs/roles.md): the extractor and its last map
(`backbone`), the end of each of its stages (`stage`), and the neck (`neck.level`, `neck.merge`,
`upsample`), on real zoo models. Expected paths are read off each architecture by hand: the YOLO YAMLs'
backbone/head sections, smp's encoder/decoder split, torchvision's module names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from tests.sites.shapes_nets import conv_bn_act


def roles(model, shape) -> dict[str, list]:
    found: dict[str, list] = {}
    for site in ps.find_sites(model, input_shape=shape):
        found.setdefault(site.role, []).append(site)
    return found


def paths(sites) -> list[str]:
    return [s.path for s in sites]


# -- Ultralytics YOLOv8: backbone = YAML layers 0-9 (Conv, Conv, C2f, Conv, C2f, Conv, C2f, Conv, C2f, SPPF);
# head: 10 Upsample, 11 Concat(10, 6), 12 C2f, 13 Upsample, 14 Concat(13, 4), 15 C2f, 16 Conv s2,
# 17 Concat(16, 12), 18 C2f, 19 Conv s2, 20 Concat(19, 9), 21 C2f, 22 Detect(15, 18, 21).
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_yolov8_extractor_pan_neck_and_detect_head(mode, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False)
    getattr(model, mode)()
    found = roles(model, (1, 3, 128, 128))
    assert paths(found["backbone"]) == ["model.9.cv2.act"]  # SPPF's output, where the neck starts
    assert [(s.path, s.stage) for s in found["stage"]] == [
        ("model.0.act", 1), ("model.2.cv2.act", 2), ("model.4.cv2.act", 3), ("model.6.cv2.act", 4), ("model.9.cv2.act", 5)]
    assert paths(found["upsample"]) == ["model.10", "model.13"]
    # Top-down merges, at their lateral input: the P4 and P3 maps of the extractor (layers 6 and 4).
    assert sorted(paths(found["neck.merge"])) == ["model.4.cv2.act", "model.6.cv2.act"]
    assert [s.extra for s in found["neck.merge"]] and all(len(s.extra) == 1 for s in found["neck.merge"])
    # Levels: what Detect reads, the outputs of the PAN's last C2f at each stride.
    assert paths(found["neck.level"]) == ["model.15.cv2.act", "model.18.cv2.act", "model.21.cv2.act"]
    assert [s.stage for s in found["neck.level"]] == [3, 4, 5]
    assert all(len(s.extra) == 2 for s in found["neck.level"])
    inside_detect = [s.path for role in ("backbone", "stage", "neck.level", "neck.merge", "upsample")
                     for s in found.get(role, []) if s.path.startswith("model.22")]
    assert inside_detect == []


def test_yolov8_classifier_backbone_is_before_the_classify_head(monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    model = tasks.ClassificationModel("yolov8n-cls.yaml", verbose=False).eval()
    found = roles(model, (1, 3, 128, 128))
    # Classify (layer 9) has its own 1x1 conv before pooling: that conv is the head's, not the extractor's.
    assert paths(found["backbone"]) == ["model.8.cv2.act"]
    assert paths(found["stage"])[-1] == "model.8.cv2.act"
    assert "neck.level" not in found and "upsample" not in found


# -- segmentation_models_pytorch: encoder / decoder / segmentation_head
ENCODER_STAGES = ["encoder.relu", "encoder.layer1.2.relu", "encoder.layer2.3.relu", "encoder.layer3.5.relu",
                  "encoder.layer4.2.relu"]


def test_smp_fpn_backbone_and_stages_are_the_encoders_and_the_decoder_is_the_neck():
    smp = pytest.importorskip("segmentation_models_pytorch")
    found = roles(smp.FPN("resnet34", encoder_weights=None).eval(), (1, 3, 128, 128))
    assert paths(found["backbone"]) == ["encoder.layer4.2.relu"]
    assert paths(found["stage"]) == ENCODER_STAGES
    assert paths(found["neck.merge"]) == ["decoder.p4.skip_conv", "decoder.p3.skip_conv", "decoder.p2.skip_conv"]
    levels = found["neck.level"]
    assert sorted(s.stage for s in levels) == [2, 3, 4, 5] and all(s.path.startswith("decoder.") for s in levels)


def test_smp_unet_backbone_is_the_encoders_last_map():
    smp = pytest.importorskip("segmentation_models_pytorch")
    found = roles(smp.Unet("resnet34", encoder_weights=None).eval(), (1, 3, 128, 128))
    assert paths(found["backbone"]) == ["encoder.layer4.2.relu"]
    assert paths(found["stage"]) == ENCODER_STAGES
    # Each decoder block concatenates the upsampled map with an encoder skip: a top-down merge, whose
    # site is the lateral input (the skip: the encoder's map at strides 2..16), the upsampled map its extra.
    merges = found["neck.merge"]
    assert sorted(paths(merges)) == sorted(ENCODER_STAGES[:4])
    assert all(len(s.extra) == 1 and s.extra_scopes[0][0].owner.startswith("decoder") for s in merges)


# -- timm ConvNeXt: stem (stride 4), four stages of (2, 2, 6, 2) blocks, each stage after the first opening
# with a channels-first LayerNorm and a stride-2 conv; the head pools, then normalises.
def test_timm_convnext_stages_end_at_each_stages_last_block():
    timm = pytest.importorskip("timm")
    found = roles(timm.create_model("convnext_atto", pretrained=False), (1, 3, 64, 64))
    assert [(s.path.split(":")[0], s.stage) for s in found["stage"]] == [
        ("stages.0.blocks.1", 2), ("stages.1.blocks.1", 3), ("stages.2.blocks.5", 4), ("stages.3.blocks.1", 5)]
    assert found["backbone"][0].path.split(":")[0] == "stages.3.blocks.1"


def test_hrnet_fusions_inside_the_extractor_are_no_neck():
    timm = pytest.importorskip("timm")
    found = roles(timm.create_model("hrnet_w18_small", pretrained=False), (1, 3, 64, 64))
    assert paths(found["backbone"]) == ["final_layer.2"]  # the map the classifier pools
    assert "neck.merge" not in found and "neck.level" not in found
    assert len(found["upsample"]) > 0  # its fuse layers do upsample


# -- torchvision
def test_torchvision_segmentation_backbone_is_before_the_aspp_head():
    found = roles(ps.load_model("deeplabv3_mobilenet_v3_large"), (1, 3, 64, 64))
    assert paths(found["backbone"]) == ["backbone.16.2"]  # the last features block, not the classifier's
    assert all(s.path.startswith("backbone.") for s in found["stage"])
    # The ASPP image-pooling branch resizes a 1x1 map back: a broadcast, not an upsample.
    assert len(found["upsample"]) == 1 and not found["upsample"][0].path.startswith("classifier")


# -- a model fx cannot trace whole: its children are traced one by one
def test_a_row_of_parts_has_its_extractor_before_the_first_part_fed_several_maps():
    class Fuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(48, 16, 3, padding=1)

        def forward(self, fine, coarse):
            return self.conv(torch.cat([fine, F.interpolate(coarse, size=fine.shape[-2:])], 1))

    class Row(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.s1, self.s2 = conv_bn_act(3, 8, 3, 2), conv_bn_act(8, 16, 3, 2), conv_bn_act(16, 32, 3, 2)
            self.fuse = Fuse()
            self.out = conv_bn_act(16, 16)

        def forward(self, x):
            fine = self.s1(self.stem(x))
            coarse = self.s2(fine)
            if coarse.sum() > 0:  # data-dependent: fx cannot trace the root
                coarse = coarse * 2
            return self.out(self.fuse(fine, coarse))

    model = Row().eval()
    assert [p.path for p in ps.trace(model, (1, 3, 64, 64)).parts] == ["stem", "s1", "s2", "fuse", "out"]
    found = roles(model, (1, 3, 64, 64))
    assert paths(found["backbone"]) == ["s2.2"]
    assert [(s.path, s.stage) for s in found["stage"]] == [("stem.2", 1), ("s1.2", 2), ("s2.2", 3)]
    assert paths(found["neck.merge"]) == ["fuse:fine"]  # the part fed both maps merges them
