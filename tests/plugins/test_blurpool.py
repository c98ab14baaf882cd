"""The antialias recipe computes Zhang's anti-aliased networks (ICML 2019, arXiv:1904.11486).

By hand on tiny networks: a strided conv's blur comes after its norm and activation, written out here with
torch ops. Against the paper's reference release (``antialiased_cnns``, pip): torchvision's networks edited
by the recipe configured like the release (the YAML block in docs/guide.md's antialias section, read from there)
compute the release's function with the release's weights, loaded through ``from_antialiased_cnns``.
Per-layer comparisons with the release's, kornia's and timm's BlurPool: test_reference_equivalence.py.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.blurpool import BlurPool2d, from_antialiased_cnns
from plugsurgeon.surgery.record import recipe_step
from tests.nets import randomize_batchnorm
from tests.plugins._reference_pairs import scramble

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
SIZE = 64


def release_recipe(**pool_args) -> ps.Recipe:
    """The user guide's `antialias_release` recipe; ``pool_args`` override the pool step's arguments."""
    blocks = re.findall(r"```yaml\n(name: antialias_release\n.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/guide.md's antialias section has one `antialias_release` recipe"
    recipe = ps.parse_recipe(blocks[0])
    steps = [step.model_copy(update={"args": {**step.args, **pool_args}}) if step.at == "downsample.pool" else step
             for step in recipe.steps]
    return recipe.model_copy(update={"steps": steps})


def with_filter_size(recipe: ps.Recipe, filter_size: int) -> ps.Recipe:
    steps = [step.model_copy(update={"args": {**step.args, "filter_size": filter_size}}) for step in recipe.steps]
    return recipe.model_copy(update={"steps": steps})


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def edited_like_release(name: str, recipe: ps.Recipe, filter_size: int = 4, rename=None):
    """(torchvision's ``name`` edited by ``recipe`` holding the release's weights, the release's ``name``
    with random weights and BN statistics)."""
    antialiased_cnns = pytest.importorskip("antialiased_cnns")
    import torchvision

    reference = scramble(getattr(antialiased_cnns, name)(pretrained=False, filter_size=filter_size))
    ours = ps.apply(getattr(torchvision.models, name)(weights=None), recipe, input_shape=(1, 3, SIZE, SIZE)).model
    state = from_antialiased_cnns(reference.state_dict(), filter_size=filter_size)
    ours.load_state_dict(rename(state) if rename else state, strict=True)
    return ours, reference


def assert_same_function(ours: nn.Module, reference: nn.Module, modes=("eval", "train")) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    for mode in modes:
        ours.train(mode == "train"), reference.train(mode == "train")
        with torch.no_grad():
            assert relative(ours(x), reference(x)) < 1e-5, mode


@pytest.mark.parametrize("filter_size", [4, pytest.param(3, marks=pytest.mark.slow)])  # per-layer sizes: test_reference_equivalence
def test_resnet18_is_the_release(filter_size: int):
    ours, reference = edited_like_release("resnet18", with_filter_size(release_recipe(), filter_size), filter_size)
    assert_same_function(ours, reference)


@pytest.mark.slow
def test_resnet50_is_the_release():
    ours, reference = edited_like_release("resnet50", release_recipe())
    assert_same_function(ours, reference)


@pytest.mark.slow
def test_densenet121_is_the_release_with_the_pools_own_window():
    """The release's DenseNet keeps the stem pool's 3x3 window (MaxPool2d(3, 1, 1)) and blurs its transitions'
    average pools: max_window 0, the recipe's default."""
    ours, reference = edited_like_release("densenet121", release_recipe(max_window=0))
    assert_same_function(ours, reference)


def test_mobilenet_v2_is_the_release():
    """The release's blur follows each strided depthwise conv's ReLU6, as the blur at downsample.unit. Its
    classifier has no Dropout (commented out), so its Linear is classifier.0, torchvision's classifier.1."""

    def classifier(state):
        return {re.sub(r"^classifier\.0\.", "classifier.1.", k): v for k, v in state.items()}

    ours, reference = edited_like_release("mobilenet_v2", release_recipe(), rename=classifier)
    assert_same_function(ours, reference, modes=("eval",))  # torchvision's Dropout(0.2) acts in train mode


def test_the_stem_window_is_what_tells_the_defaults_from_the_release_resnet():
    """The default recipe keeps the stem pool's 3x3 window (the paper's Max(k, 1)); the release's ResNet uses a
    2x2 one. Everything else is the same, and the window alone moves the output by far more than round-off."""
    default = ps.load_recipe("antialias")
    assert [(s.plugin, s.at, s.where, s.args) for s in default.steps] == [
        (s.plugin, s.at, s.where, {k: v for k, v in s.args.items() if (k, v) not in (("filter_size", 4), ("max_window", 2))})
        for s in release_recipe().steps]
    ours, reference = edited_like_release("resnet18", default)
    ours.eval(), reference.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, SIZE, SIZE)
        assert relative(ours(x), reference(x)) > 1e-2


def test_release_names_map_onto_torchvision_names():
    antialiased_cnns = pytest.importorskip("antialiased_cnns")
    import torchvision

    for name, renamed in (
        ("resnet18", {"layer2.0.conv2.1.weight": "layer2.0.conv2.weight", "layer3.0.downsample.1.weight": "layer3.0.downsample.0.weight",
                      "layer3.0.downsample.2.running_var": "layer3.0.downsample.1.running_var"}),
        ("resnet50", {"layer4.0.conv3.1.weight": "layer4.0.conv3.weight", "layer2.0.downsample.2.bias": "layer2.0.downsample.1.bias"}),
    ):
        release = getattr(antialiased_cnns, name)(pretrained=False).state_dict()
        mapped = from_antialiased_cnns(release)
        assert set(mapped) == set(getattr(torchvision.models, name)(weights=None).state_dict())
        for old, new in renamed.items():
            assert mapped[new] is release[old]
        assert not any(key.endswith(".filt") for key in mapped)


def test_release_mapping_refuses_other_filters():
    antialiased_cnns = pytest.importorskip("antialiased_cnns")
    state = antialiased_cnns.resnet18(pretrained=False, filter_size=3).state_dict()
    with pytest.raises(ValueError, match="3x3 filter; the recipe's filter_size is 4"):
        from_antialiased_cnns(state, filter_size=4)
    state["maxpool.1.filt"] = torch.full_like(state["maxpool.1.filt"], 1 / 9)  # a box filter, not the binomial one
    with pytest.raises(ValueError, match="not the normalised binomial filter"):
        from_antialiased_cnns(state)


# -- the placement, written out ------------------------------------------------------------------------
def blur_by_hand(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Zhang's BlurPool with the default 4-tap filter, from its definition: [1, 3, 3, 1] / 8 in each
    direction, reflect padding 1 before and 2 after, then every stride-th sample."""
    row = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    kernel = (row[:, None] * row[None, :]).expand(x.shape[1], 1, 4, 4)
    return F.conv2d(F.pad(x, (1, 2, 1, 2), mode="reflect"), kernel, stride=stride, groups=x.shape[1])


class ConvBnRelu(nn.Module):
    """A strided conv unit with an activation, then a 1x1 conv (a ResNet block's first half)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu, self.head = nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x))))

    def by_hand(self, x):
        dense = F.conv2d(x, self.conv.weight, self.conv.bias, 1, 1)
        return self.head(blur_by_hand(self.relu(self.bn(dense))))


class ConvBnThenConv(nn.Module):
    """ShuffleNet's downsampling: a strided depthwise conv and BN feeding a 1x1 conv, no activation between."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.bn = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return torch.relu(self.head(self.bn(self.conv(torch.relu(self.stem(x))))))

    def by_hand(self, x):
        dense = F.conv2d(torch.relu(self.stem(x)), self.conv.weight, None, 1, 1, groups=8)
        return torch.relu(self.head(blur_by_hand(self.bn(dense))))


class ConvOut(nn.Module):
    """A strided conv whose output is the model's (nothing after it)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 2, 2)

    def forward(self, x):
        return self.conv(torch.relu(self.stem(x)))

    def by_hand(self, x):
        return blur_by_hand(F.conv2d(torch.relu(self.stem(x)), self.conv.weight, self.conv.bias, 1))


BLUR = ps.Recipe(name="blur", steps=[{"plugin": "blur", "at": "downsample.unit"}])


@pytest.mark.parametrize("net", [ConvBnRelu, ConvBnThenConv, ConvOut])
def test_the_blur_follows_the_units_norm_and_activation(net):
    model = randomize_batchnorm(net()).eval()
    result = ps.apply(model, BLUR, input_shape=(1, 3, 16, 16))
    edited = result.model.eval()
    assert [(e.mode, e.module) for e in result.report.edits] == [("after", "blur"), ("replace", "conv")]
    assert type(edited.conv) is nn.Conv2d and edited.conv.stride == (1, 1) and torch.equal(edited.conv.weight, model.conv.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(edited(x), model.by_hand(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(edited(x), model(x), atol=1e-3)


def test_a_plain_checkpoint_loads_and_the_filters_are_not_saved():
    model = ps.load_model("resnet18").eval()
    result = ps.apply(model, "antialias", input_shape=(1, 3, SIZE, SIZE))
    edited = result.model
    assert result.report.new_keys == [] and result.report.renamed_keys == []
    assert edited.load_state_dict(model.state_dict(), strict=True)
    blurs = sorted(name for name, m in edited.named_modules() if isinstance(m, BlurPool2d))
    assert blurs == ["layer2.0.blur", "layer2.0.downsample.0.blur", "layer3.0.blur", "layer3.0.downsample.0.blur",
                     "layer4.0.blur", "layer4.0.downsample.0.blur", "maxpool.blur"]
    assert edited.conv1.stride == (2, 2)  # the stem's conv keeps its stride (stage 1 is not selected)
    assert [edited.get_submodule(f"layer{i}.0.conv1").stride for i in (2, 3, 4)] == [(1, 1)] * 3
    assert type(edited).__name__ == "ResNet"


def test_the_manifest_records_every_blur_argument():
    result = ps.apply(ConvBnRelu(), ps.Recipe(name="t", steps=[
        {"plugin": "blur", "at": "downsample.unit", "args": {"pad_mode": "zeros"}}]), input_shape=(1, 3, 16, 16))
    edits = recipe_step(result.plan)["edits"]
    assert [e["args"] for e in edits] == [{"filter_size": 4, "pad_mode": "zeros"}] * 2
    assert edits[1]["mode"] == "replace" and edits[1]["path"] == "conv"
    assert result.model.blur.pad_mode == "zeros"


def test_a_saved_model_loads_with_both_edits_of_each_unit(tmp_path):
    """Loading replays the recorded recipe and checks it makes the recorded edits: the blur and the stride-1 conv."""
    from tests.nets import TinyResNet

    recipe = ps.Recipe(name="t", steps=[{"plugin": "blur", "at": "downsample.unit", "args": {"filter_size": 3}},
                                        {"plugin": "blurpool", "at": "downsample.pool", "args": {"max_window": 2}}])
    model = randomize_batchnorm(ps.load_model("tests.nets:TinyResNet")).eval()
    edited = ps.apply(model, recipe, input_shape=(1, 3, 32, 32)).model.eval()
    ps.save(edited, tmp_path, source="tests.nets:TinyResNet")
    loaded = ps.load(tmp_path, trust_source=True)
    assert isinstance(loaded, TinyResNet) and loaded.layer2[0].conv1.stride == (1, 1) and loaded.layer2[0].blur.filter_size == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), edited(x))


def test_pool_arguments_are_typed_and_bounded():
    with pytest.raises(ps.RecipeError, match="max_window"):
        ps.parse_recipe("name: t\nsteps:\n  - plugin: blurpool\n    at: downsample.pool\n    args: {max_window: 64}\n")
    with pytest.raises(ps.RecipeError, match="pad_mode"):
        ps.parse_recipe("name: t\nsteps:\n  - plugin: blur\n    at: downsample.unit\n    args: {pad_mode: zero}\n")
    described = ps.get_plugin("blurpool").to_dict()["args"]
    assert described["max_window"]["range"] == "0 <= x <= 63"
    assert described["pad_mode"]["type"] == "one of 'reflect', 'replicate', 'zeros'"


class SharedStride(nn.Module):
    """One strided conv module called twice, and a pool."""

    def __init__(self):
        super().__init__()
        self.stem, self.down, self.pool = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, 2, 1), nn.MaxPool2d(2)

    def forward(self, x):
        x = torch.relu(self.down(torch.relu(self.stem(x))))
        return self.pool(torch.relu(self.down(x)))


def test_a_conv_called_twice_is_refused_or_skipped_and_listed():
    with pytest.raises(ps.SiteError, match="'down' runs 2 times"):
        ps.apply(SharedStride(), BLUR, input_shape=(1, 3, 32, 32))
    recipe = ps.Recipe(name="t", steps=[{"plugin": "blur", "at": "downsample.unit", "on_unfit": "skip", "allow_empty": True},
                                        {"plugin": "blurpool", "at": "downsample.pool"}])
    result = ps.apply(SharedStride(), recipe, input_shape=(1, 3, 32, 32))
    assert [e.module for e in result.report.edits] == ["pool"]
    skipped = [n for n in result.report.notes if "skipped" in n]
    assert len(skipped) == 2 and all("'down' runs 2 times" in n for n in skipped)


def test_an_anisotropic_stride_is_skipped_and_listed():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.pool = nn.Conv2d(3, 8, 3, (2, 1), 1), nn.BatchNorm2d(8), nn.MaxPool2d(2)

        def forward(self, x):
            return self.pool(torch.relu(self.bn(self.conv(x))))

    recipe = ps.Recipe(name="t", steps=[{"plugin": "blur", "at": "downsample.unit", "on_unfit": "skip", "allow_empty": True},
                                        {"plugin": "blurpool", "at": "downsample.pool"}])
    result = ps.apply(Wide(), recipe, input_shape=(1, 3, 32, 32))
    assert [e.module for e in result.report.edits] == ["pool"] and type(result.model.conv) is nn.Conv2d
    assert result.model.conv.stride == (2, 1)
    assert any("skipped 'relu'" in n and "stride is not 2 along both axes" in n for n in result.report.notes), result.report.notes


@pytest.mark.slow  # the mechanism is test_the_blur_follows_the_units_norm_and_activation[ConvBnThenConv]
def test_shufflenet_blurs_after_the_bn_of_each_strided_depthwise_conv():
    """ShuffleNetV2's strided depthwise convs have a BN and no activation: the blur follows the BN (the unit's
    end), before the 1x1 conv. At 64 px; the stem (stage 1) keeps its stride."""
    model = randomize_batchnorm(ps.load_model("shufflenet_v2_x0_5")).eval()
    result = ps.apply(model, "antialias", input_shape=(1, 3, SIZE, SIZE))
    blurs = [e.site for e in result.report.edits if e.plugin == "blur" and e.mode == "after"]
    assert blurs == [f"stage{i}.0.{branch}" for i in (2, 3, 4) for branch in ("branch1.1", "branch2.4")]
    assert [e.site for e in result.report.edits if e.plugin == "blurpool"] == ["maxpool"]
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert result.model.eval()(x).shape == model(x).shape


def test_deploy_folds_the_stride_one_convs_exactly():
    model = randomize_batchnorm(ConvBnRelu()).eval()
    edited = ps.apply(model, BLUR, input_shape=(1, 3, 16, 16)).model.eval()
    deployed = ps.deploy(copy.deepcopy(edited), input_shape=(1, 3, 16, 16))
    assert deployed.report.verification.passed
    assert [f.layer for f in deployed.report.folded] == ["conv"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(deployed.model(x), edited(x), rtol=1e-5, atol=1e-5)


def test_binomial_filter_rows_are_pascals_triangle():
    for size in range(1, 8):
        row = BlurPool2d(1, filter_size=size).filter[0, 0].sum(0)
        expected = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float32) / 2 ** (size - 1)
        torch.testing.assert_close(row, expected)
