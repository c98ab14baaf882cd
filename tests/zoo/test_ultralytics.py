"""Ultralytics YOLO (random weights from the YAMLs, offline): the attention recipes land on every bottleneck with
a shortcut, and the roles (backbone, stage, neck, upsample) mean what they mean on a ResNet + FPN.

Ground truth comes from Ultralytics itself: a block has a shortcut when its ``add`` attribute is True; the feature
extractor is the model YAML's ``backbone`` section (``model.0`` .. ``model.{len(backbone) - 1}``), the head is
the rest, ``Detect`` / ``Classify`` last; shapes are recorded with forward hooks on an eager run.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import count_adds
from tests.zoo.helpers import capture, new_module_paths, run, structure, within

pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import ClassificationModel, DetectionModel  # noqa: E402

SHAPE = (1, 3, 160, 160)
DETECTORS = ["yolov8n.yaml", "yolo11n.yaml"]


def build(yaml: str) -> nn.Module:
    cls = ClassificationModel if "-cls" in yaml else DetectionModel
    return cls(yaml, verbose=False)


def layers(model: nn.Module) -> nn.ModuleList:
    return model.model


def backbone_last(model: nn.Module) -> int:
    """Index of the extractor's last layer: the YAML's backbone section ends there."""
    return len(model.yaml["backbone"]) - 1


def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
    mods = {str(i): m for i, m in enumerate(layers(model))}
    records, remove = capture(mods)
    try:
        run(model, x, train=False)
    finally:
        remove()
    return {int(i): outs[0] for i, outs in records.items()}


def layer_inputs(model: nn.Module, x: torch.Tensor, index: int) -> list[torch.Tensor]:
    """The tensors layer ``index`` receives (Concat and Detect take lists)."""
    got = []
    handle = layers(model)[index].register_forward_pre_hook(lambda _m, args: got.append(args[0]))
    try:
        run(model, x, train=False)
    finally:
        handle.remove()
    value = got[0]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def shortcut_blocks(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if getattr(m, "add", None) is True}


def head_path(model: nn.Module) -> str:
    return f"model.{len(layers(model)) - 1}"


@pytest.fixture(scope="module")
def traced():
    """One model and one trace per YAML, shared by the site tests (find_sites takes a traced model)."""
    cache = {}

    def get(yaml: str):
        if yaml not in cache:
            model = build(yaml).eval()
            cache[yaml] = (model, ps.trace(model, SHAPE))
        return cache[yaml]

    return get


@pytest.mark.parametrize(("yaml", "recipe"), slow_except([(y, r) for y in DETECTORS for r in ("cbam", "se", "eca")],
                                                      default={("yolov8n.yaml", "cbam"), ("yolo11n.yaml", "se")}))
def test_attention_on_every_bottleneck_with_a_shortcut(yaml, recipe):
    model = build(yaml).eval()
    x = torch.randn(SHAPE)
    blocks = shortcut_blocks(model)
    assert blocks, "the model has shortcut blocks"
    # At most as many plugins in a block as same-shape adds run inside it (PSABlock: 2 shortcuts + the
    # positional-encoding add of its attention); a Bottleneck has exactly one shortcut.
    block_inputs, remove = capture(blocks, inputs=True)
    run(model, x, train=False)
    remove()
    most = {name: count_adds(block, block_inputs[name][0]) for name, block in blocks.items()}

    dry = None
    if recipe == "cbam":  # a dry run fails wherever apply fails, and plans the same edits (one recipe suffices)
        try:
            dry = ps.apply(model, recipe, input_shape=SHAPE, dry_run=True)
        except ps.PlugsurgeonError as error:
            dry = error
    result = ps.apply(model, recipe, input_shape=SHAPE)
    if dry is not None:
        assert not isinstance(dry, Exception), f"the dry run failed where apply succeeds: {dry}"
        assert len(dry.report.edits) == len(result.report.edits)

    edited = result.model
    assert type(edited) is type(model)
    new = new_module_paths(model, edited)
    assert len(new) == len(result.report.edits)
    per_block = {name: [p for p in new if within(p, name)] for name in blocks}
    stray = [p for p in new if not any(within(p, name) for name in blocks)]
    assert not stray, f"{recipe} modules outside any shortcut block: {stray}"
    for name, block in blocks.items():
        least = 1 if type(block).__name__.endswith("Bottleneck") else 2
        assert least <= len(per_block[name]) <= most[name], (name, type(block).__name__, per_block[name])

    batch = torch.randn(2, *SHAPE[1:])  # ASPP's image pooling meets a 1x1 map: train-mode BatchNorm needs N > 1
    for train in (False, True):
        assert structure(run(edited, batch, train=train)) == structure(run(model, batch, train=train)), f"train={train}"
    assert not edited.training or model.training  # the edited copy keeps the caller's mode


@pytest.mark.parametrize("yaml", [*DETECTORS, "yolov8n-cls.yaml"])
def test_backbone_site_is_the_extractors_last_map(yaml, traced):
    model, trace = traced(yaml)
    x = torch.randn(SHAPE)
    last = backbone_last(model)
    assert last < len(layers(model)) - 1
    expected = tuple(layer_outputs(model, x)[last].shape)
    sites = ps.find_sites(trace, "backbone")
    assert len(sites) == 1, [s.path for s in sites]
    (site,) = sites
    assert within(site.path, f"model.{last}") or within(site.owner, f"model.{last}"), (site.path, site.owner)
    assert tuple(site.shape) == expected
    assert not within(site.path, head_path(model))


@pytest.mark.parametrize("yaml", DETECTORS)
def test_stage_sites_lie_on_the_extractor_one_per_stride(yaml, traced):
    model, trace = traced(yaml)
    x = torch.randn(SHAPE)
    last = backbone_last(model)
    outputs = layer_outputs(model, x)
    # The last backbone layer at each stride: that is where each stage ends.
    ends: dict[int, int] = {}
    for index in range(last + 1):
        stride = SHAPE[-1] // outputs[index].shape[-1]
        ends[stride] = index
    sites = ps.find_sites(trace, "stage")
    outside = [s.path for s in sites if not any(within(s.path, f"model.{i}") for i in range(last + 1))]
    assert not outside, f"stage sites outside the extractor (model.0..model.{last}): {outside}"
    assert sorted(s.stage for s in sites) == sorted(int(math.log2(stride)) for stride in ends)
    for site in sites:
        index = ends[2 ** site.stage]
        assert within(site.path, f"model.{index}"), (site.path, site.stage, index)
        assert tuple(site.shape) == tuple(outputs[index].shape)


@pytest.mark.parametrize("yaml", DETECTORS)
def test_pan_neck_levels_merges_and_upsamples(yaml, traced):
    model, trace = traced(yaml)
    x = torch.randn(SHAPE)
    outputs = layer_outputs(model, x)
    head = layers(model)[-1]
    levels = sorted(tuple(outputs[i].shape) for i in head.f)  # what Detect reads
    upsamples = [i for i, m in enumerate(layers(model)) if isinstance(m, nn.Upsample)]
    # Top-down merges: a Concat fed by an Upsample; its other input is the lateral (finer backbone) map.
    laterals = []
    for i, m in enumerate(layers(model)):
        sources = [i + f if f < 0 else f for f in ([m.f] if isinstance(m.f, int) else m.f)]
        if type(m).__name__ == "Concat" and any(s in upsamples for s in sources):
            laterals += [tuple(outputs[s].shape) for s in sources if s not in upsamples]

    sites = {role: ps.find_sites(trace, role) for role in ("neck.level", "neck.merge", "upsample")}
    assert len(sites["upsample"]) == len(upsamples) == 2
    assert sorted(tuple(s.shape) for s in sites["neck.level"]) == levels
    assert sorted(tuple(s.shape) for s in sites["neck.merge"]) == sorted(laterals)
    for site in (s for group in sites.values() for s in group):
        assert not within(site.path, head_path(model)), f"{site.role} site inside Detect: {site.path}"


@pytest.mark.parametrize(("yaml", "recipe"), slow_except([(y, r) for y in [*DETECTORS, "yolov8n-cls.yaml"] for r in ("sppf", "aspp")],
                                                      default={("yolov8n.yaml", "sppf"), ("yolov8n-cls.yaml", "aspp")}))
def test_pyramid_pooling_lands_on_the_extractors_last_map(yaml, recipe):
    model = build(yaml).eval()
    x = torch.randn(SHAPE)
    last = backbone_last(model)
    expected = layer_outputs(model, x)[last]
    result = ps.apply(model, recipe, input_shape=SHAPE)
    edited = result.model.eval()
    assert type(edited) is type(model)
    (edit,) = result.report.edits
    assert not within(edit.module, head_path(model)) and not within(edit.site, head_path(model))
    # The new module reads exactly the original extractor output (same weights up to it, eval mode).
    plugin = edited.get_submodule(edit.module)
    seen, remove = capture({"plugin": plugin}, inputs=True)
    run(edited, x, train=False)
    remove()
    assert len(seen["plugin"]) == 1
    torch.testing.assert_close(seen["plugin"][0], expected)
    params = sum(p.numel() for p in model.parameters())
    assert result.report.params_after - params == sum(p.numel() for p in plugin.parameters())
    batch = torch.randn(2, *SHAPE[1:])  # ASPP's image pooling has a BatchNorm on a 1x1 map: it trains on batches > 1
    for train in (False, True):
        assert structure(run(edited, batch, train=train)) == structure(run(model, batch, train=train)), f"train={train}"
