"""segmentation_models_pytorch (resnet34 encoder, random weights): CBAM in the encoder's residual blocks, ASPP at
the encoder's end, sites of the feature extractor only in ``encoder``, and the FPN decoder's pyramid recipes.

Ground truth: smp's own split into ``encoder`` / ``decoder`` / ``segmentation_head``; the encoder's feature list
(``model.encoder(x)``: one map per stride, the last the deepest); eager counts of same-shape adds and of
``F.interpolate`` calls (tests/zoo/counting.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import count_adds, count_upsamples
from tests.zoo.helpers import capture, new_module_paths, run, structure, within

smp = pytest.importorskip("segmentation_models_pytorch")

SHAPE = (2, 3, 128, 128)  # batch 2: DeepLabV3+'s image pooling has a BatchNorm on a 1x1 map, which trains only on batches > 1
ARCHS = ["Unet", "FPN", "DeepLabV3Plus"]


def build(arch: str):
    return getattr(smp, arch)("resnet34", encoder_weights=None, classes=2).eval()


@pytest.fixture(scope="module")
def traced():
    cache = {}

    def get(arch: str):
        if arch not in cache:
            model = build(arch)
            cache[arch] = (model, ps.trace(model, SHAPE))
        return cache[arch]

    return get


def assert_runs_like(edited, model, x):
    for train in (False, True):
        assert structure(run(edited, x, train=train)) == structure(run(model, x, train=train)), f"train={train}"


@pytest.mark.parametrize("arch", slow_except(ARCHS, default={"FPN"}))
def test_cbam_on_every_encoder_block(arch):
    model = build(arch)
    x = torch.randn(SHAPE)
    blocks = count_adds(model.encoder, x)  # resnet34: 16 BasicBlocks, all with an identity or projection shortcut
    result = ps.apply(model, "cbam", input_shape=SHAPE)
    new = new_module_paths(model, result.model)
    assert len(new) == len(result.report.edits) == blocks
    assert all(within(path, "encoder") for path in new), new
    assert_runs_like(result.model, model, x)


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_is_the_encoders_deepest_map(arch, traced):
    model, trace = traced(arch)
    deepest = model.encoder(torch.randn(SHAPE))[-1]
    sites = ps.find_sites(trace, "backbone")
    assert len(sites) == 1, [s.path for s in sites]
    assert within(sites[0].path, "encoder"), sites[0].path
    assert tuple(sites[0].shape) == tuple(deepest.shape)


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_sites_lie_in_the_encoder_one_per_stride(arch, traced):
    model, trace = traced(arch)
    features = model.encoder(torch.randn(SHAPE))
    last_at: dict[int, tuple] = {}
    for feature in features:
        stride = SHAPE[-1] // feature.shape[-1]
        if stride > 1:
            last_at[stride] = tuple(feature.shape)  # DeepLabV3+ (output stride 16): layer4 stays at 16
    sites = ps.find_sites(trace, "stage")
    assert all(within(s.path, "encoder") for s in sites), [s.path for s in sites if not within(s.path, "encoder")]
    assert sorted(s.stage for s in sites) == sorted(int(math.log2(stride)) for stride in last_at)
    for site in sites:
        assert tuple(site.shape) == last_at[2 ** site.stage], (site.path, site.stage)


@pytest.mark.parametrize("arch", slow_except(ARCHS, default={"DeepLabV3Plus"}))
def test_aspp_at_the_encoders_end(arch):
    model = build(arch)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
    result = ps.apply(model, "aspp", input_shape=SHAPE)
    (edit,) = result.report.edits
    assert within(edit.module, "encoder"), edit.module
    edited = result.model.eval()
    seen, remove = capture({"aspp": edited.get_submodule(edit.module)}, inputs=True)
    run(edited, x, train=False)
    remove()
    torch.testing.assert_close(seen["aspp"][0], deepest)  # reads exactly the encoder's last map
    assert_runs_like(edited, model, x)


def blocks_given_a_skip(model, x) -> int:
    """Decoder blocks called with a second feature map (the encoder skip), seen by forward pre-hooks."""
    given = 0

    def hook(_module, args, kwargs):
        nonlocal given
        tensors = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() == 4]
        given += bool(tensors)

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in model.decoder.blocks]
    try:
        run(model, x, train=False)
    finally:
        for handle in handles:
            handle.remove()
    return given


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_decoder_upsamples_and_merges_are_neck_sites(arch, traced):
    model, trace = traced(arch)
    x = torch.randn(SHAPE)
    upsamples = count_upsamples(model, x)  # every F.interpolate / nn.Upsample call, decoder and head
    ups = ps.find_sites(trace, "upsample")
    assert len(ups) == upsamples
    merges = ps.find_sites(trace, "neck.merge")
    if arch == "Unet":  # one concat merge per decoder block that is given a skip connection
        expected = blocks_given_a_skip(model, x)
    else:  # FPN: one top-down merge per FPNBlock (upsampled coarser level + 1x1 lateral)
        expected = sum(1 for m in model.decoder.modules() if type(m).__name__ == "FPNBlock")
    assert len(merges) == expected, [s.path for s in merges]
    assert all(within(s.path, "decoder") or within(s.path, "encoder") for s in merges)


@pytest.mark.parametrize("recipe", ["asff", "seb"])
def test_fpn_pyramid_recipes_apply_or_refuse_clearly(recipe):
    model = build("FPN")
    x = torch.randn(SHAPE)
    blocks = sum(1 for m in model.decoder.modules() if type(m).__name__ == "FPNBlock")
    try:
        result = ps.apply(model, recipe, input_shape=SHAPE)
    except ps.PlugsurgeonError as error:
        # A clear refusal names the plugin and gives a hint; "no such sites" is not a reason on an FPN.
        role = "neck.level" if recipe == "asff" else "neck.merge"
        assert recipe in error.message and error.hint, error
        assert f"no {role} sites" not in error.message, f"the FPN decoder's {role} sites are not found: {error}"
        return
    new = new_module_paths(model, result.model)
    assert all(within(p, "decoder") for p in new), new
    # asff: one per pyramid level (p5 and each FPNBlock output); seb: one per top-down merge.
    assert len(new) == (blocks + 1 if recipe == "asff" else blocks)
    assert_runs_like(result.model, model, x)


def test_default_input_shape_is_applied_or_refused_cleanly():
    """A user who passes no input shape (1x3x224x224): DeepLabV3+ cannot run in train mode on a batch of one
    (its image-pooling BatchNorm), so the edited-model check must not turn that into a raw error."""
    model = build("DeepLabV3Plus")
    try:
        result = ps.apply(model, "cbam")
    except ps.PlugsurgeonError as error:
        assert "train" in error.message or "batch" in error.message, error
        return
    assert len(result.report.edits) == 16
