"""Golden lists of (role, path) per network: the locators find places by structure and shape alone."""

import pytest

import plugsurgeon as ps
from tests.nets import BranchyNet, SharedConvNet, TinyFPN, TinyResNet

SHAPE = (1, 3, 64, 64)


def _golden(model, kind=None, shape=SHAPE):
    return [(s.role, s.path) for s in ps.find_sites(model, kind, input_shape=shape)]


def test_residual_sites_tiny_resnet():
    assert _golden(TinyResNet(), "residual") == [
        ("residual.branch", "layer1.0.bn2"), ("residual.output", "layer1.0.relu"),
        ("residual.branch", "layer1.1.bn2"), ("residual.output", "layer1.1.relu"),
        ("residual.branch", "layer2.0.bn2"), ("residual.output", "layer2.0.relu"),
        ("residual.branch", "layer2.1.bn2"), ("residual.output", "layer2.1.relu"),
    ]


def test_downsample_stage_backbone_tiny_resnet():
    assert _golden(TinyResNet(), "downsample") == [
        ("downsample.conv", "stem.0"), ("downsample.unit", "stem.2"), ("downsample.pool", "pool"),
        ("downsample.conv", "layer2.0.conv1"), ("downsample.unit", "layer2.0.relu"), ("downsample.shortcut", "layer2.0.shortcut.0"),
    ]
    # A unit ends at its conv's activation (through the BN) and carries the conv, whose map at stride 1 is 2x larger.
    units = ps.find_sites(TinyResNet(), "downsample.unit", input_shape=SHAPE)
    assert [(s.destride, s.destride_shape, s.shape) for s in units] == [
        ("stem_0", (1, 16, 64, 64), (1, 16, 32, 32)), ("layer2_0_conv1", (1, 32, 16, 16), (1, 32, 8, 8))]
    sites = ps.find_sites(TinyResNet(), "stage", input_shape=SHAPE)
    assert [(s.path, s.stage, s.channels) for s in sites] == [("stem.2", 1, 16), ("layer1.1.relu", 2, 16), ("layer2.1.relu", 3, 32)]
    assert _golden(TinyResNet(), "backbone") == [("backbone", "layer2.1.relu")]


def test_conv_filters_and_aliases():
    convs = ps.find_sites(TinyResNet(), "conv", input_shape=SHAPE)
    assert len(convs) == 10
    three = ps.find_sites(TinyResNet(), "conv3x3", input_shape=SHAPE)
    assert [s.path for s in three] == [s.path for s in convs if s.kernel == (3, 3)]
    assert {s.stride for s in convs} == {1, 2}


def test_branchy_net_has_no_residuals_but_has_stages():
    assert _golden(BranchyNet(), "residual") == []
    assert _golden(BranchyNet(), "stage") == [("stage", "cat"), ("stage", "out")]
    assert _golden(BranchyNet(), "downsample") == [("downsample.pool", "down")]


def test_pyramid_sites_tiny_fpn():
    assert _golden(TinyFPN(), "neck") == [
        ("neck.level", "smooth.2"), ("neck.merge", "lateral.1"), ("neck.level", "smooth.1"),
        ("neck.merge", "lateral.0"), ("neck.level", "smooth.0"),
    ]
    levels = ps.find_sites(TinyFPN(), "neck.level", input_shape=SHAPE)
    assert [len(s.extra) for s in levels] == [2, 2, 2]
    assert _golden(TinyFPN(), "upsample") == [("upsample", "interpolate"), ("upsample", "interpolate_1")]
    # The backbone is what the pyramid's top lateral reads, not the pyramid itself.
    assert _golden(TinyFPN(), "backbone") == [("backbone", "c5.relu")]


def test_shared_conv_is_a_site_once_per_call():
    convs = ps.find_sites(SharedConvNet(), "conv", input_shape=SHAPE)
    assert [s.path for s in convs] == ["conv", "conv"]


@pytest.fixture(scope="module")
def resnet50_sites():
    return ps.find_sites(ps.load_model("resnet50"))


def test_resnet50_golden(resnet50_sites):
    by_role = {}
    for site in resnet50_sites:
        by_role.setdefault(site.role, []).append(site)
    assert len(by_role["residual.branch"]) == 16
    assert [s.path for s in by_role["residual.branch"]][:2] == ["layer1.0.bn3", "layer1.1.bn3"]
    assert all(s.path.endswith(".relu") for s in by_role["residual.output"])
    assert [(s.path, s.stage) for s in by_role["stage"]] == [
        ("relu", 1), ("layer1.2.relu", 2), ("layer2.3.relu", 3), ("layer3.5.relu", 4), ("layer4.2.relu", 5)]
    assert [s.path for s in by_role["downsample.pool"]] == ["maxpool"]
    assert [s.path for s in by_role["downsample.conv"]] == ["conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert [s.path for s in by_role["downsample.shortcut"]] == ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    # Each strided conv's unit ends at the ReLU after its BN (a Bottleneck's second ReLU call; the stem's ReLU).
    assert [(s.path, s.owner, s.kernel) for s in by_role["downsample.unit"]] == [
        ("relu", "", (7, 7)), ("layer2.0.relu", "layer2.0", (3, 3)), ("layer3.0.relu", "layer3.0", (3, 3)), ("layer4.0.relu", "layer4.0", (3, 3))]
    assert [s.path for s in by_role["backbone"]] == ["layer4.2.relu"]
    assert len(by_role["conv"]) == 53
    assert sum(1 for s in by_role["conv"] if s.kernel == (3, 3)) == 16
    assert [s.channels for s in by_role["residual.branch"]][::4] == [256, 512, 1024, 1024]


def test_detection_model_sites_are_found_in_its_traced_parts():
    sites = ps.find_sites(ps.load_model("fasterrcnn_resnet50_fpn"), input_shape=(1, 3, 128, 128))
    roles = {}
    for site in sites:
        roles.setdefault(site.role, []).append(site.path)
    assert len(roles["residual.branch"]) == 16 and roles["residual.branch"][0] == "backbone.body.layer1.0.bn3"
    assert roles["backbone"] == ["backbone.body.layer4.2.relu"]
    assert roles["neck.level"] == [f"backbone.fpn.layer_blocks.{i}.0" for i in (3, 2, 1, 0)]
    assert roles["neck.merge"] == [f"backbone.fpn.inner_blocks.{i}.0" for i in (2, 1, 0)]
    assert len(roles["upsample"]) == 3


def test_transformers_have_no_nchw_residual_sites():
    assert ps.find_sites(ps.load_model("vit_b_16"), "residual") == []
    assert ps.find_sites(ps.load_model("swin_t"), "residual") == []


def test_inverted_residuals_and_channels_last_blocks():
    mobilenet = ps.find_sites(ps.load_model("mobilenet_v3_large"), "residual.branch")
    assert len(mobilenet) == 10
    convnext = ps.find_sites(ps.load_model("convnext_tiny"), "residual.branch")
    # One per CNBlock (3 + 3 + 9 + 3): the channels-first LayerNorm2d of the downsampling layers keeps
    # N,C,H,W, so stage 1's blocks count too; downsampling layers are not residual.
    assert len(convnext) == 18
    assert all(len(s.shape) == 4 for s in convnext)


def test_unknown_role_suggests():
    with pytest.raises(ps.UnknownNameError, match="did you mean 'residual"):
        ps.find_sites(TinyResNet(), "residul", input_shape=SHAPE)


def test_detection_heads_and_pyramid_levels_are_not_stages():
    sites = ps.find_sites(ps.load_model("fasterrcnn_resnet50_fpn"), "stage", input_shape=(1, 3, 128, 128))
    assert [(s.path, s.stage) for s in sites] == [
        ("backbone.body.relu", 1), ("backbone.body.layer1.2.relu", 2), ("backbone.body.layer2.3.relu", 3),
        ("backbone.body.layer3.5.relu", 4), ("backbone.body.layer4.2.relu", 5)]
    heads = ps.find_sites(ps.load_model("fasterrcnn_resnet50_fpn"), "conv", input_shape=(1, 3, 128, 128))
    rpn = [s.stage for s in heads if s.path == "rpn.head.bbox_pred"]
    assert rpn == [2, 3, 4, 5, 6]  # strides measured against the image the backbone sees, one call per level
