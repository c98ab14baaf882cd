"""Saved detectors reload as they were saved: the transform's size and the detection thresholds are
recorded in the manifest and set on the rebuilt model before its edits are redone (issue 15, point 4).

Each family is built with a non-default configuration (torchvision's builders default to 800 px, or
SSD's fixed size), edited, saved under its torchvision name, loaded, and run on the same images.
Random weights score every class near 1/91, so thresholds of 0 keep detections to compare.
"""

import json
import shutil

import pytest
import torch
import torchvision

import plugsurgeon as ps
from plugsurgeon.store.config import read_config

# (builder, recipe, configuration the builder takes, SSD's fixed size set after building)
FAMILIES = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("se", {"min_size": 64, "max_size": 96}, None),
    "ssdlite320_mobilenet_v3_large": ("se", {}, 128),
    "maskrcnn_resnet50_fpn": ("se", {"min_size": 64, "max_size": 96}, None),
    "keypointrcnn_resnet50_fpn": ("se", {"min_size": (48, 64), "max_size": 96}, None),
    "retinanet_resnet50_fpn": ("se", {"min_size": 64, "max_size": 96}, None),
    "fcos_resnet50_fpn": ("se", {"min_size": 64, "max_size": 96}, None),
    "ssd300_vgg16": ("acnet", {}, 268),
}
FAST = {"fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"}
TWO_STAGE = {"box_score_thresh": 0.0, "box_detections_per_img": 10, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20}
ONE_STAGE = {"score_thresh": 0, "detections_per_img": 10, "topk_candidates": 50}  # an int threshold, as users write it


def build(name: str, *, device: str = "cpu") -> torch.nn.Module:
    _recipe, kwargs, fixed = FAMILIES[name]
    selection = ONE_STAGE if name.startswith(("ssd", "retinanet", "fcos")) else TWO_STAGE
    with torch.device(device):
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs, **selection)
    if fixed is not None:  # SSD's builders fix the size; a user changes it on the transform
        model.transform.fixed_size = (fixed, fixed)
    return model.eval()


def default(name: str, *, device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return torchvision.models.get_model(name, weights=None, weights_backbone=None)


def round_trip(name: str, directory) -> tuple[torch.nn.Module, torch.nn.Module]:
    recipe = FAMILIES[name][0]
    edited = ps.apply(build(name), recipe, input_shape=(1, 3, 64, 64)).model.eval()
    ps.save(edited, directory, source=name)
    return edited, ps.load(directory)


def assert_same_detections(saved: torch.nn.Module, loaded: torch.nn.Module) -> None:
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    with torch.no_grad():
        expected, found = saved(images), loaded(images)
    for want, got in zip(expected, found, strict=True):
        assert set(want) == set(got) and len(want["boxes"]) > 0
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in FAMILIES])
def test_saved_detector_reloads_at_its_own_size_with_the_same_detections(name, tmp_path):
    saved, loaded = round_trip(name, tmp_path / "saved")
    assert loaded.transform.min_size == tuple(saved.transform.min_size)
    assert loaded.transform.fixed_size == saved.transform.fixed_size
    assert read_config(loaded) == read_config(saved) != read_config(default(name, device="meta"))
    assert_same_detections(saved, loaded)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_records_what_it_was_built_with(name):
    """The records of a configured build, set on a default build, make it read back the same (on the
    meta device: no weights are made)."""
    configured, plain = build(name, device="meta"), default(name, device="meta")
    from plugsurgeon.store.config import apply_config

    records = read_config(configured)
    kinds = {record.kind.removeprefix("torchvision.") for record in records}
    assert "GeneralizedRCNNTransform" in kinds and kinds & {"RoIHeads", "RetinaNet", "FCOS", "SSD"}
    assert read_config(plain) != records
    apply_config(plain, records, where="test")
    assert read_config(plain) == records


@pytest.fixture(scope="module")
def saved_faster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("faster") / "saved"
    saved, _loaded = round_trip("fasterrcnn_mobilenet_v3_large_320_fpn", directory)
    return directory, saved


def edited_copy(directory, tmp_path, change):
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_manifest_records_the_transform_as_data(saved_faster):
    directory, _saved = saved_faster
    config = json.loads((directory / "manifest.json").read_text())["config"]
    transform = next(record for record in config if record["path"] == "transform")
    assert transform["kind"] == "torchvision.GeneralizedRCNNTransform"
    assert (transform["min_size"], transform["max_size"], transform["fixed_size"]) == ([64], 96, None)
    assert {record["path"] for record in config} == {"transform", "rpn", "roi_heads"}


def test_manifest_written_before_config_loads_with_the_builders_defaults(saved_faster, tmp_path):
    """Backward compatible: a manifest without ``config`` loads as it always did, at the builder's
    defaults (which is what every model loaded with ps.load_model has), with no check to fail."""
    directory, _saved = saved_faster
    old = edited_copy(directory, tmp_path, lambda manifest: manifest.pop("config"))
    loaded = ps.load(old)
    assert loaded.transform.min_size == (320,) and loaded.roi_heads.score_thresh == 0.05


def test_configuration_at_another_class_is_refused(saved_faster, tmp_path):
    directory, _saved = saved_faster

    def move(manifest):
        next(r for r in manifest["config"] if r["path"] == "transform")["path"] = "rpn"

    with pytest.raises(ps.ModelLoadError, match="GeneralizedRCNNTransform at 'rpn', where the rebuilt model has a RegionProposalNetwork"):
        ps.load(edited_copy(directory, tmp_path, move))


def test_configuration_dropped_from_a_manifest_is_refused(saved_faster, tmp_path):
    directory, _saved = saved_faster

    def drop(manifest):
        manifest["config"] = [r for r in manifest["config"] if r["path"] != "rpn"]

    with pytest.raises(ps.ModelLoadError, match=r"another configuration than the rebuilt model holds \(at rpn\)"):
        ps.load(edited_copy(directory, tmp_path, drop))


@pytest.mark.parametrize(("field", "value"), [("min_size", [0]), ("min_size", ["64"]), ("max_size", 1e9), ("fixed_size", [64]),
                                              ("skip_resize", 1), ("code", "os.system")])
def test_configuration_values_are_typed_and_bounded(saved_faster, tmp_path, field, value):
    directory, _saved = saved_faster

    def change(manifest):
        next(r for r in manifest["config"] if r["path"] == "transform")[field] = value

    with pytest.raises(ps.ModelLoadError, match="not a valid plugsurgeon manifest: field 'config"):
        ps.load(edited_copy(directory, tmp_path, change))


def test_configuration_of_an_unknown_kind_is_refused(saved_faster, tmp_path):
    directory, _saved = saved_faster

    def change(manifest):
        manifest["config"].append({"kind": "builtins.exec", "path": ""})

    with pytest.raises(ps.ModelLoadError, match="not a valid plugsurgeon manifest: field 'config"):
        ps.load(edited_copy(directory, tmp_path, change))


def test_configuration_that_cannot_be_recorded_refuses_the_save(tmp_path):
    model = default("fasterrcnn_mobilenet_v3_large_320_fpn", device="meta")
    model.transform.max_size = 640.5  # torchvision keeps an int; a float would not reload as it is
    with pytest.raises(ps.PlugsurgeonError, match=r"configuration of 'transform' \(GeneralizedRCNNTransform\): field 'max_size'") as error:
        ps.save(model, tmp_path / "x", source="fasterrcnn_mobilenet_v3_large_320_fpn")
    assert "factory" in error.value.hint and not (tmp_path / "x").exists()


def test_models_without_configured_modules_record_none(tmp_path):
    model = ps.load_model("resnet18")
    ps.save(model, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"] == []
