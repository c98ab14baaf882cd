"""Plugin arguments are typed and bounded: by range when a recipe is read, by the site when a step is
planned, and by the model's budget before anything real is allocated."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pydantic import Field
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

import plugsurgeon as ps
from plugsurgeon.plugins import registry
from plugsurgeon.plugins.args import PluginArgs
from plugsurgeon.plugins.budget import BUDGET_FLOOR, added_budget
from tests.nets import TinyResNet

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def sites():
    model = TinyResNet()
    found = {s.path: s for s in ps.find_sites(model, input_shape=SHAPE)}
    return model, found


def _step(plugin: str, at: str, **args) -> ps.Recipe:
    return ps.Recipe(name="t", steps=[ps.Step(plugin=plugin, at=at, args=args)])


@pytest.mark.parametrize(
    ("plugin", "site", "args", "expected"),
    [
        ("se", "layer1.0.bn2", {"min_hidden": 60000},
         "plugin 'se': argument 'min_hidden' = 60000 is more than 16 at site 'layer1.0.bn2': the site has 16 channels"),
        ("cbam", "layer2.0.bn2", {"kernel_size": 63},
         "plugin 'cbam': argument 'kernel_size' = 63 is more than 15 at site 'layer2.0.bn2': on this site's 8x8 map a window wider than 15"),
        ("eca", "layer1.0.bn2", {"kernel_size": 1001},
         "plugin 'eca': argument 'kernel_size' = 1001 is more than 31 at site 'layer1.0.bn2'"),
        ("eca", "layer1.0.bn2", {"gamma": 0.5, "b": 16.0},
         "plugin 'eca': argument 'gamma' = 0.5 is with b = 16.0, a kernel of 41 taps, more than 31 at site 'layer1.0.bn2'"),
        ("mixconv", "layer1.0.conv1", {"kernels": [3, 5, 7, 9, 11, 13, 15, 17], "split": "exponential"},
         "plugin 'mixconv': argument 'kernels' = (3, 5, 7, 9, 11, 13, ...) is 8 groups, too many at site 'layer1.0.conv1'"),
        ("splat", "stem.0", {}, "plugin 'splat': argument 'radix' = 2 is not a divisor of the 3 input channels of each group at site 'stem.0'"),
        ("dcnv1", "layer1.0.conv1", {"deformable_groups": 3},
         "plugin 'dcnv1': argument 'deformable_groups' = 3 is not a divisor of the conv's 16 input channels at site 'layer1.0.conv1'"),
    ],
)
def test_site_bounds_refuse_with_argument_value_bound_and_site(sites, plugin, site, args, expected):
    model, found = sites
    spec = ps.get_plugin(plugin)
    replaced = model.get_submodule(found[site].target) if spec.mode == "replace" else None
    with pytest.raises(ps.SiteError) as refused:
        spec.build(found[site], replaced, args)
    assert expected in refused.value.message


def test_defaults_fit_sites_smaller_than_the_default():
    # coord_attention's default min_hidden is 8 and gc's 8: above a 4-channel site's width, as in the
    # authors' code, and still accepted there (a site bound never refuses the paper's default).
    spec = ps.get_plugin("coord_attention")
    site = dataclasses.replace(ps.find_sites(TinyResNet(), "residual.branch", input_shape=SHAPE)[0], channels=4, shape=(1, 4, 2, 2))
    assert spec.build(site, None, {}).conv.out_channels == 8


def test_planning_refuses_a_site_bound_and_skips_it_when_asked():
    recipe = ps.Recipe(name="t", steps=[ps.Step(plugin="cbam", at="residual.branch", args={"kernel_size": 17})])
    with pytest.raises(ps.SiteError, match=r"argument 'kernel_size' = 17 is more than 15 at site 'layer2.0.bn2'"):
        ps.apply(TinyResNet(), recipe, input_shape=SHAPE, dry_run=True)
    skipping = ps.Recipe(name="t", steps=[ps.Step(plugin="cbam", at="residual.branch", args={"kernel_size": 17}, on_unfit="skip")])
    report = ps.apply(TinyResNet(), skipping, input_shape=SHAPE, dry_run=True).report
    assert [e.site for e in report.edits] == ["layer1.0.bn2", "layer1.1.bn2"]
    assert any("skipped 'layer2.0.bn2'" in note and "kernel_size" in note for note in report.notes)


def test_build_validates_arguments_strictly(sites):
    _model, found = sites
    spec = ps.get_plugin("se")
    with pytest.raises(ps.RecipeError, match=r"plugin 'se': argument 'reduction' = True: Input should be a valid integer"):
        spec.build(found["layer1.0.bn2"], None, {"reduction": True})
    with pytest.raises(ps.RecipeError, match=r"plugin 'se': has no argument 'ratio'; it takes \['min_hidden', 'reduction'\]"):
        spec.build(found["layer1.0.bn2"], None, {"ratio": 2})


def test_budget_refuses_with_the_numbers_before_allocating(sites):
    _model, found = sites
    site = dataclasses.replace(found["layer2.0.bn2"], channels=2048, shape=(1, 2048, 8, 8))
    with pytest.raises(ps.RecipeError) as refused:
        ps.get_plugin("ppm").build(site, None, {"kernel_size": 13}, host=TinyResNet())
    message = refused.value.message
    assert "plugin 'ppm' at 'layer2.0.bn2' would add 1,421,885,445 parameter and buffer elements (5.3 GiB)" in message
    assert f"more than the budget of {BUDGET_FLOOR:,} elements (10 x the model's" in message


def test_budget_is_relative_with_a_floor_and_a_cap():
    assert added_budget(1000) == BUDGET_FLOOR
    assert added_budget(25_557_032) == 255_570_320
    assert added_budget(10**12) == 1_000_000_000


@pytest.fixture
def probe_plugin():
    """A plugin that records whether each construction made real or fake tensors."""
    made = []

    class ProbeArgs(PluginArgs):
        width: int = Field(4, ge=1, le=1 << 30, description="hidden width")

    @registry.register_plugin("probe_alloc", roles=("residual",), mode="after", infer=registry.site_channels,
                              structural=("channels",), identity_at_init=False, paper="test, arXiv:0000.00000",
                              year=2000, summary="test", args=ProbeArgs)
    class Probe(nn.Module):
        def __init__(self, channels, width=4):
            super().__init__()
            self.fc = nn.Linear(channels, width)
            made.append(isinstance(self.fc.weight, FakeTensor))

        def forward(self, x):
            return x

    yield made
    registry._REGISTRY.pop("probe_alloc")


def test_an_over_budget_plan_is_refused_on_fake_tensors_only(probe_plugin):
    # (16 + 1) x 2**22 = 71M elements per site (weight and bias), over the 16M floor of a 43k-parameter
    # model: refused while sizing, and the module was never built with real tensors.
    with pytest.raises(ps.RecipeError, match=r"plugin 'probe_alloc' at 'layer1.0.bn2' would add 71,303,168 parameter and buffer elements"):
        ps.apply(TinyResNet(), _step("probe_alloc", "residual.branch", width=1 << 22), input_shape=SHAPE, dry_run=True)
    assert probe_plugin == [True]


def test_fake_build_keeps_the_replaced_conv_weight_and_converts_only_new_tensors(sites):
    model, found = sites
    site = found["layer1.0.conv1"]
    conv = model.get_submodule(site.target)
    rng = torch.get_rng_state()
    block = ps.get_plugin("acnet").build(site, conv, {}, fake=True, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), rng)  # sizing does not move the caller's random stream
    assert block.weight is conv.weight and block.weight.dtype == torch.float32 and not isinstance(block.weight, FakeTensor)
    assert isinstance(block.ver.weight, FakeTensor) and block.ver.weight.dtype == torch.float64
    assert isinstance(block.ver.weight, nn.Parameter)
    real = ps.get_plugin("acnet").build(site, conv, {}, dtype=torch.float64)
    assert real.weight is conv.weight and real.ver_bn.running_var.dtype == torch.float64


def test_fake_build_runs_in_the_planning_checks(sites):
    from plugsurgeon.graph.fake import run_fake

    _model, found = sites
    site = found["layer2.0.bn2"]
    module = ps.get_plugin("cbam").build(site, None, {}, fake=True)
    output, flops = run_fake(module, [site.shape])
    assert tuple(output.shape) == site.shape and flops > 0


def test_registration_requires_an_args_model_matching_the_constructor():
    class Args(PluginArgs):
        width: int = Field(8, ge=1, le=64)

    common = dict(roles=("residual",), mode="after", infer=registry.site_channels, structural=("channels",),
                  identity_at_init=False, paper="test, arXiv:0000.00000", year=2000, summary="test")

    class Unannounced(nn.Module):
        def __init__(self, channels, width=8):
            super().__init__()

    with pytest.raises(ValueError, match=r"args model PluginArgs declares \[\], the factory takes \['width'\]"):
        registry.register_plugin("t_unannounced", **common)(Unannounced)

    class OtherDefault(nn.Module):
        def __init__(self, channels, width=4):
            super().__init__()

    with pytest.raises(ValueError, match=r"argument 'width' defaults to 4 in the factory and 8 in Args"):
        registry.register_plugin("t_other_default", **common, args=Args)(OtherDefault)
    assert "t_unannounced" not in registry._REGISTRY and "t_other_default" not in registry._REGISTRY


def test_catalog_prints_each_arguments_schema():
    args = ps.get_plugin("se").to_dict()["args"]
    assert args["min_hidden"] == {
        "type": "int", "default": 1, "range": "1 <= x <= 65536",
        "site_bound": "at most the site's channels (or the default, if larger)",
        "description": "at least this many hidden units",
    }
    assert ps.get_plugin("mixconv").to_dict()["args"]["kernels"]["range"] == "1 to 8 items, each 1 <= x <= 63, odd"
    assert ps.get_plugin("scse").to_dict()["args"]["fusion"]["type"] == "one of 'add', 'max', 'mul'"
    assert ps.get_plugin("eca").to_dict()["args"]["kernel_size"]["type"] == "int or null"


def test_planning_builds_fake_modules_and_apply_builds_real_ones(probe_plugin):
    recipe = _step("probe_alloc", "residual.branch", width=8)
    ps.apply(TinyResNet(), recipe, input_shape=SHAPE, dry_run=True)
    # A dry run: four sites of two shapes sized and checked, one fake build per shape, nothing allocated.
    assert probe_plugin == [True] * 2
    probe_plugin.clear()
    result = ps.apply(TinyResNet(), recipe, input_shape=SHAPE)
    assert probe_plugin == [True] * 2 + [False] * 4  # the committed edits are real, one each
    assert not any(isinstance(p, FakeTensor) for p in result.model.parameters())


def test_a_plan_over_budget_in_total_is_refused(probe_plugin):
    # 2 x (16 + 1) x 2**18 + 2 x (32 + 1) x 2**18 = 26.2M elements: each edit fits the 16M floor of a
    # 43k-parameter model, the plan does not.
    with pytest.raises(ps.RecipeError, match=r"recipe 't' \(4 edits\) would add 26,214,400 parameter and buffer elements"):
        ps.apply(TinyResNet(), _step("probe_alloc", "residual.branch", width=1 << 18), input_shape=SHAPE, dry_run=True)
