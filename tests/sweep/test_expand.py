"""Expansion: the distinct placements a space gives on a real model, duplicates found from the edits themselves."""

import pytest

import plugsurgeon as ps
from plugsurgeon.sweep.expand import expand
from tests.slow import slow_except
from tests.sweep.tiny import one_thread  # noqa: F401 - the fixture, used below

pytestmark = pytest.mark.usefixtures("one_thread")


def subsets_space(**step):
    return {"sweep": {"name": "stages", "steps": [{"plugin": "se", "at": "residual.branch",
                                                   "stages": {"subsets_of": [2, 3, 4, 5]}, **step}]}}


def sites_by_stage(model, shape):
    traced = ps.trace(model, shape)
    found = {}
    for site in ps.find_sites(traced, "residual.branch"):
        found.setdefault(site.stage, []).append(site.path)
    return traced, found


@pytest.mark.parametrize("name", slow_except(["resnet18", "resnet50"], default=["resnet18"]))
def test_the_non_empty_subsets_of_four_stages_are_fifteen_placements(name):
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    traced, by_stage = sites_by_stage(model, (1, 3, 64, 64))
    assert sorted(by_stage) == [2, 3, 4, 5]
    expansion = expand(model, subsets_space(), traced=traced)
    assert expansion.combinations == 15 and len(expansion.candidates) == 15 and not expansion.refused
    for candidate in expansion.candidates:  # each candidate puts one SE after every block of its stages
        stages = candidate.recipe.steps[0].where.stages
        assert candidate.edits == sum(len(by_stage[s]) for s in stages)
        assert candidate.params_added > 0 and candidate.macs_added > 0
        assert candidate.params == expansion.baseline.params + candidate.params_added


@pytest.mark.slow
def test_densities_collapse_where_they_select_the_same_sites_resnet50():
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    traced, by_stage = sites_by_stage(model, (1, 3, 64, 64))
    assert all(len(paths) > 1 for paths in by_stage.values())  # 3, 4, 6, 3 bottlenecks
    expansion = expand(model, subsets_space(density=["every", "per_stage_last", "last"]), traced=traced)
    # every: 15 distinct; per_stage_last: 15 more (a stage has several blocks); last: the last block of the
    # highest chosen stage, which per_stage_last of that stage alone already is -- 45 choices, 30 placements.
    assert expansion.combinations == 45 and len(expansion.candidates) == 30
    assert sum(c.same for c in expansion.candidates) == 45
    last_of_5 = next(c for c in expansion.candidates if c.edits == 1 and c.recipe.steps[0].where.stages == [2, 3, 4, 5])
    assert last_of_5.same == 9  # `last` of the 8 subsets holding stage 5, and per_stage_last of {5}


def test_choices_a_plugin_ignores_collapse_and_refused_placements_are_listed():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    space = {"sweep": {"steps": [{"plugin": ["se", "eca"], "at": "residual.branch", "stages": [[4], [5]],
                                  "where": {"min_channels": 512}, "args": {"reduction": [8, 16]}}]}}
    expansion = expand(model, space, input_shape=(1, 3, 64, 64))
    # Stage 4 has 256 channels: no site passes min_channels 512, whatever the plugin (4 choices, refused).
    # Stage 5: se with 2 reductions, eca once for its 2 (it takes no reduction).
    assert expansion.combinations == 8
    assert sorted((c.recipe.steps[0].plugin, c.same) for c in expansion.candidates) == [("eca", 2), ("se", 1), ("se", 1)]
    assert expansion.refused and all("min_channels" in c.error for c in expansion.refused)


@pytest.mark.slow
def test_yolo_bottlenecks_by_stage():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False)
    traced, by_stage = sites_by_stage(model, (1, 3, 128, 128))
    # YOLOv8n's backbone C2f blocks keep their shortcut (1, 2, 2, 1 bottlenecks at strides 4..32); the head's do not.
    assert {s: len(p) for s, p in by_stage.items()} == {2: 1, 3: 2, 4: 2, 5: 1}
    expansion = expand(model, subsets_space(density=["every", "per_stage_last"]), traced=traced)
    # per_stage_last differs from every only for subsets holding stage 3 or 4 (two bottlenecks): 15 + 12.
    assert expansion.combinations == 30 and len(expansion.candidates) == 27
