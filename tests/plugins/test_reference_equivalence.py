"""Our catalog modules compute the same function as well-known implementations, given the same weights.

Each case builds ours and the reference at the same size, copies our (scrambled) parameters and BN
statistics into the reference through an explicit name map (Linear <-> 1x1 conv reshapes included; see
tests/plugins/_reference_pairs.py), loads them with ``strict=True`` (every reference tensor is mapped),
and checks, in eval and in train mode: the outputs, the gradients with respect to the input, and, in
train mode, that the BatchNorm running statistics are updated alike. A case is skipped when its
reference's package is not installed (timm is the optional ``timm`` extra; segmentation_models_pytorch and
ultralytics come with the ``zoo`` and ``dev`` extras). Pairs marked "eval mode only" below are equal as
eval-mode functions and differ in train mode by design; a test shows that they do.

Equivalent, with the reference configured as stated (its defaults differ, ours follow the papers or the
authors' code; we do not bend ours):
- se vs torchvision.ops.SqueezeExcitation(C, C // 16): the same with its defaults (ReLU, sigmoid, biases).
- se vs timm SEModule: its default hidden size is C/16 rounded to a multiple of 8 (at least 8: 8 instead
  of 4 at C = 64); given ``rd_channels = C // 16`` it is ours (biases, ReLU, no BN, sigmoid by default).
- eca vs timm EcaModule: the same kernel size from the channels for every C >= 8 (timm computes
  int((log2 C + b) / gamma) and rounds even values up, as ours; it also clamps k >= 3, which only matters
  below C = 8), zero padding, no bias.
- cbam vs timm CbamModule: timm's shared MLP has no biases by default (``mlp_bias=True`` gives ours and
  the authors' nn.Linear layers) and rounds the hidden size (we pass C // 16). Its spatial branch
  concatenates [mean, max] (the paper's Eq. 3 order), ours [max, mean] (the authors' ChannelPool): the map
  swaps the 7x7 conv's two input channels. Both have the spatial BN, without bias on the conv.
- gc vs timm GlobalContext: timm's default fusion is a sigmoid scale (``fuse_scale=True, fuse_add=False``)
  with C/8 hidden; the paper's GCNet block, ours, is ``fuse_add=True, fuse_scale=False`` with C/16. timm's
  LayerNorm2d uses eps 1e-6 where ours (and the authors' nn.LayerNorm) use 1e-5: the reference's eps is set
  to ours. timm's W_k has a bias that ours lacks; a constant logit cancels in the softmax over positions
  (the test gives it a non-zero value). timm zero-initialises only the last conv's weight, ours its bias too.
- sk vs timm SelectiveKernel: by default timm splits the input channels between the paths
  (``split_input=True``, a documented departure from the paper); with ``split_input=False``,
  ``kernel_size=[3, 5]`` and ``keep_3x3=True`` both paths see the whole input, a 3x3 and a 3x3 with
  dilation 2, each with BN and ReLU, fused by sum, pooled, FC (no bias) -> BN -> ReLU -> FC (no bias), and a
  softmax across the paths: ours, when the replaced conv's groups equal the dilated path's groups (tested at
  1 and 32, stride 1 and 2). Our recipe on ResNet-50 keeps the dense 3x3 and adds a 32-group dilated path;
  timm has one ``groups`` for both paths, so that mixed configuration has no timm counterpart (on
  ResNeXt-50, the paper's base, both have 32 groups and the pair applies).
- splat vs timm SplitAttn: timm's default has no BN (``norm_layer=None``), ResNeSt uses it; with
  ``norm_layer=BatchNorm2d``, ``rd_channels = hidden // radix`` (timm multiplies it by the radix) and a zero
  fc1 bias (ours has none: BN follows) it is ours. With cardinality 1 (ResNeSt-50 2s1x64d, our recipe on
  ResNet-50) the weights map one to one. With cardinality K > 1 the two order the K * radix groups of the
  split conv differently (ours cardinal-major, timm radix-major, see the splat docstring), so split r of
  cardinal group k reads a different input slice: they are the same function up to that fixed permutation of
  the input channels, which the test applies to the reference's input.
- blurpool's BlurPool2d vs the authors' BlurPool (antialiased_cnns): the same for every filter size 1..7
  and each of its pad types (``reflect``, ``zero``, ``repl`` are our ``pad_mode`` reflect, zeros, replicate):
  the same binomial filter (the builder checks the release's own) and the same padding split, (size - 1) // 2
  before and the rest after. MaxBlurPool2d with ``max_window=2`` is the release's ResNet stem
  ``Sequential(MaxPool2d(2, stride=1), BlurPool)``. Whole anti-aliased networks: tests/plugins/test_blurpool.py.
- blurpool vs kornia BlurPool2D / MaxBlurPool2D: kornia zero-pads (the same split as ours), the release and
  our default reflect. With ``pad_mode="zeros"`` ours is kornia's, for odd and even sizes; MaxBlurPool2D is a
  ``max_pool_size`` window at stride 1 without padding, ours with ``max_window`` set. With the default
  reflect padding the two differ exactly where a filter window reaches past the border, and nowhere
  else (tested): a documented option, not an accident.
- blurpool's BlurPool2d vs timm BlurPool2d: the same binomial filter and padding for odd filter sizes (3,
  5, 7; timm's ``pad_mode`` is ours, ``constant`` being our zeros). For even sizes (ours defaults to 4, as
  antialiased-cnns) timm pads (stride - 1 + size - 1) // 2 on every side (2 for size 4), antialiased-cnns
  and ours 1 before and 2 after: timm's output is one pixel larger (29 x 29 instead of 28 x 28 from
  56 x 56) and its sampling grid one input pixel off, so no output pixel of it equals ours, border or not
  (tested). With its padding set to ours by hand, the rest is the same (tested).
- coord_attention vs timm CoordAttn: timm's defaults have no conv biases and C * 2/3 / 16 hidden channels
  (rounded to 8); with ``bias=True`` and ``rd_channels = max(8, C // 32)`` (the authors' code, ours) it is ours:
  H- and W-pooling, concatenation, shared 1x1 conv, BN, h-swish, split, per-direction 1x1 convs, sigmoids.
- nonlocal vs timm NonLocalAttn: timm never subsamples phi and g and scales the energies by 1/sqrt(C) with
  C the *input* channels (``use_scale=True`` by default), C/8 inner channels; the paper (ours by default)
  max-pools phi and g by 2, does not scale, and uses C/2. Ours with ``sub_sample=False, scale=False`` is timm's
  ``use_scale=False`` with ``rd_channels = C // 2`` (biases on all four convs, zero-init BN after W_z, residual).
  Our ``scale=True`` divides by sqrt(C/2), not sqrt(C), so it has no timm counterpart; neither has our
  default subsampling.

- scse vs smp SCSEModule: smp's default reduction is 16; the paper's (and ours) hidden layer is C/2, smp's
  ``reduction=2``. Its FCs are 1x1 convs with biases, the sSE a 1x1 conv with bias, outputs added: ours
  with ``fusion="add"`` (the default; ``max`` and ``mul`` have no smp counterpart).
- dcnv1/dcnv2 vs torchvision.ops.DeformConv2d fed by an offset conv: mmcv's DeformConv2dPack, the authors'
  layer, is not pip-installable without compiling its ops, so the pack (offset conv with the deformable
  conv's kernel, stride, padding and dilation; output [offsets, modulation logits]) is written in
  _reference_pairs.py after mmcv's layout, around torchvision's layer. Ours pads the input once and runs
  both unpadded; the pack pads inside both (zeros): the same function, also with stride 2, 2 groups and 2
  deformable groups. Modulation: ours is ``mask_scale * sigmoid`` (2 by default, so that zero logits are
  the identity); mmcv's ``sigmoid`` is ``mask_scale=1`` (tested too).
- ghost vs timm GhostModule: the same (primary conv + BN + ReLU to ceil(C/2) maps, depthwise 3x3 + BN + ReLU,
  concatenated and trimmed), for a 1x1 primary and for a strided 3x3 to an odd channel count. timm pads the
  primary conv by k // 2; ours keeps the replaced conv's padding, the same for these odd kernels.
- mixconv vs timm MixedConv2d: the same equal split with the remainder in the first group and "same"
  padding per kernel, depthwise (stride 1 and 2) and dense (each kernel group from its input split to its
  output split, no mixing across groups: timm's ``depthwise=False``). Ours takes the replaced conv's bias
  (none here; timm has none) and, for a grouped conv, its groups; timm has one dense conv per group.
- dwsep vs timm DepthwiseSeparableConv: timm's block includes the BN after the pointwise conv and, by
  default, a residual; ours replaces the conv only and the host's BN after it stays. Ours followed by that
  BN is timm's block with ``noskip=True, pw_act=False`` (depthwise 3x3, BN, ReLU, pointwise 1x1, BN).
- repvgg vs timm RepVggBlock, eval mode only: ours keeps the replaced 3x3 and the host's BN after it, which
  normalises the sum of the three branches (as in ACNet); timm (and the paper) has a BN per branch and the
  ReLU inside the block. Ours + host BN + ReLU is timm's block in eval mode, where a BN is a per-channel
  affine map: timm's 3x3 BN is the host's and its 1x1 and identity BNs are ours scaled by the host's
  gamma / sqrt(var + eps). In train mode the host BN normalises the sum with its batch statistics and
  the two differ (tested), as do their initialisations (ours zero-scaled branches: identity at init).
- aspp vs torchvision's DeepLabV3 ASPP: torchvision projects the concatenation to its branch width and
  ends with Dropout(0.5); ours projects back to the site's C and has no dropout by default (the paper names
  none). With branch width C and the reference's dropout set to p = 0 they are the same: 1x1 and atrous
  3x3 branches (conv, BN, ReLU), image pooling (pool, 1x1 conv, BN, ReLU, upsampled from 1x1, which is a
  broadcast), 1x1 projection with BN and ReLU.
- ppm vs smp PSPModule + PSPDecoder's 1x1 Conv2dReLU, eval mode only: smp concatenates [levels, x], ours
  [x, levels] (the map permutes the fusing conv's input channels), and smp fuses with a 1x1 conv; ours
  defaults to the paper's 3x3, and ``kernel_size=1`` is compared. smp's 1x1 bin has a biased conv and no BN
  (its comment: BatchNorm does not support a 1x1 shape); ours keeps BN there, as the authors' PSPNet: in
  eval mode our conv + BN folds into smp's conv; in train mode ours normalises over the batch (tested to
  differ). Both upsample bilinearly with ``align_corners=True``.
- spp/sppf vs ultralytics SPP/SPPF: ultralytics always halves the channels with a 1x1 conv first, ours with
  ``reduction=2`` (the default 1 pools the input itself, as YOLOv3-SPP; that has no ultralytics
  counterpart). Ultralytics' Conv blocks use SiLU and ours ReLU: the reference's activations are set to
  ReLU. Ultralytics 8.4's SPPF has no activation after its first conv (``act=False``; YOLOv5's SPPF had
  one, as ours): it is set to ReLU too, and the builder fails if ultralytics changes that layer again.

Not compared: timm has no SK/splat/blurpool variant keeping the replaced conv as a path
(ours keep its weights; the comparison is of the function, where that does not matter). No other catalog
module has a pip-installable implementation of the same definition (checked: timm, torchvision, smp,
kornia, ultralytics): a2, acnet, asff, bam, blaze, ccnet (mmcv's CrissCrossAttention needs mmcv's compiled
ops), coordconv, rfb, rfb_s, scconv, seb, sge, ssh, stn, strip_pooling. Each plugin's docstring says which
reference it follows and what its own tests check instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch

import plugsurgeon as ps
from tests.plugins import _reference_pairs as rp

CASES: dict[str, tuple[Callable[[], rp.Pair], tuple[int, ...]]] = {
    "se-torchvision": (lambda: rp.se_torchvision(64), (4, 64, 12, 10)),
    "se-timm": (lambda: rp.se_timm(64), (4, 64, 12, 10)),
    "eca-timm-k3": (lambda: rp.eca_timm(64), (4, 64, 6, 5)),
    "eca-timm-k5": (lambda: rp.eca_timm(256), (4, 256, 6, 5)),
    "eca-timm-k7": (lambda: rp.eca_timm(2048), (2, 2048, 4, 4)),
    "cbam-timm": (lambda: rp.cbam_timm(64), (4, 64, 12, 10)),
    "gc-timm": (lambda: rp.gc_timm(64), (4, 64, 12, 10)),
    "gc-timm-256": (lambda: rp.gc_timm(256), (2, 256, 7, 7)),
    "sk-timm-dense": (lambda: rp.sk_timm(64, groups=1), (4, 64, 10, 9)),
    "sk-timm-grouped-stride2": (lambda: rp.sk_timm(64, groups=32, stride=2), (4, 64, 11, 10)),
    "splat-timm": (lambda: rp.splat_timm(64), (4, 64, 10, 9)),
    "splat-timm-stride2-widen": (lambda: rp.splat_timm(32, 64, stride=2), (4, 32, 11, 10)),
    "splat-timm-cardinality2": (lambda: rp.splat_timm(64, cardinality=2), (4, 64, 10, 9)),
    "splat-timm-cardinality4-radix4": (lambda: rp.splat_timm(128, cardinality=4, radix=4), (4, 128, 6, 5)),
    "blurpool-timm-3": (lambda: rp.blurpool_timm(32, 3), (2, 32, 13, 10)),
    "blurpool-timm-5": (lambda: rp.blurpool_timm(32, 5), (2, 32, 13, 10)),
    "blurpool-timm-7": (lambda: rp.blurpool_timm(32, 7), (2, 32, 13, 10)),
    "blurpool-timm-4-padded-as-ours": (lambda: rp.blurpool_timm(32, 4), (2, 32, 13, 10)),
    "blurpool-timm-3-zeros": (lambda: rp.blurpool_timm(32, 3, pad_mode="zeros"), (2, 32, 13, 10)),
    "blurpool-timm-5-replicate": (lambda: rp.blurpool_timm(32, 5, pad_mode="replicate"), (2, 32, 13, 10)),
    **{f"blurpool-kornia-{k}": ((lambda k=k: rp.blurpool_kornia(32, k)), (2, 32, 13, 10)) for k in (2, 3, 4, 5)},
    **{f"maxblurpool-kornia-{k}-max{m}": ((lambda k=k, m=m: rp.maxblurpool_kornia(32, k, m)), (2, 32, 14, 11))
       for k, m in ((3, 2), (4, 2), (4, 3))},
    **{f"blurpool-release-{k}-{pad}": ((lambda k=k, pad=pad: rp.blurpool_release(32, k, pad)), (2, 32, 13, 10))
       for k in range(1, 8) for pad in ("reflect", "zeros", "replicate")},
    "maxblurpool-release-stem-4": (lambda: rp.maxblurpool_release(32, 4), (2, 32, 14, 11)),
    "maxblurpool-release-stem-3": (lambda: rp.maxblurpool_release(32, 3), (2, 32, 14, 11)),
    "coord_attention-timm": (lambda: rp.coord_attention_timm(64), (4, 64, 12, 10)),
    "nonlocal-timm": (lambda: rp.nonlocal_timm(64), (4, 64, 7, 6)),
    "scse-smp": (lambda: rp.scse_smp(64), (4, 64, 12, 10)),
    "dcnv1-torchvision": (lambda: rp.dcn_torchvision(False), (2, 16, 11, 10)),
    "dcnv2-torchvision": (lambda: rp.dcn_torchvision(True), (2, 16, 11, 10)),
    "dcnv2-torchvision-paper-mask": (lambda: rp.dcn_torchvision(True, mask_scale=1.0), (2, 16, 11, 10)),
    "dcnv2-torchvision-stride2-groups2-dg2": (
        lambda: rp.dcn_torchvision(True, stride=2, groups=2, deformable_groups=2), (2, 16, 11, 10)),
    "ghost-timm-1x1": (lambda: rp.ghost_timm(32, 64), (4, 32, 10, 9)),
    "ghost-timm-3x3-stride2-odd": (lambda: rp.ghost_timm(32, 63, kernel_size=3, stride=2), (4, 32, 11, 10)),
    "mixconv-timm-depthwise": (lambda: rp.mixconv_timm(32, 32, depthwise=True), (4, 32, 11, 10)),
    "mixconv-timm-depthwise-stride2": (lambda: rp.mixconv_timm(32, 32, depthwise=True, stride=2), (4, 32, 11, 10)),
    "mixconv-timm-dense": (lambda: rp.mixconv_timm(30, 45, depthwise=False), (4, 30, 11, 10)),
    "dwsep-timm": (lambda: rp.dwsep_timm(32, 48), (4, 32, 11, 10)),
    "dwsep-timm-stride2": (lambda: rp.dwsep_timm(32, 48, stride=2), (4, 32, 11, 10)),
    "repvgg-timm": (lambda: rp.repvgg_timm(32), (4, 32, 11, 10)),
    "repvgg-timm-stride2": (lambda: rp.repvgg_timm(32, stride=2), (4, 32, 11, 10)),
    "aspp-torchvision": (lambda: rp.aspp_torchvision(32), (4, 32, 10, 9)),
    "ppm-smp": (lambda: rp.ppm_smp(32), (4, 32, 12, 10)),
    "spp-ultralytics": (lambda: rp.spp_ultralytics(32), (4, 32, 12, 10)),
    "sppf-ultralytics": (lambda: rp.sppf_ultralytics(32), (4, 32, 12, 10)),
}

# The package each case's reference comes from (timm unless named here); a case whose package is not
# installed is skipped. The pair states it too, and the two must agree.
PACKAGE = {
    "se-torchvision": "torchvision",
    "scse-smp": "segmentation_models_pytorch",
    "aspp-torchvision": "torchvision",
    "ppm-smp": "segmentation_models_pytorch",
    "spp-ultralytics": "ultralytics",
    "sppf-ultralytics": "ultralytics",
    **{case: "torchvision" for case in CASES if case.startswith("dcnv")},
    **{case: "kornia" for case in CASES if "-kornia-" in case},
    **{case: "antialiased_cnns" for case in CASES if "-release-" in case},
}


# Pairs equal in eval mode only (see the docstring): not run in train mode, where
# test_eval_only_pairs_differ_in_train_mode shows that they differ, so the restriction hides nothing.
EVAL_ONLY = {"repvgg-timm", "repvgg-timm-stride2", "ppm-smp"}


def _build(case: str) -> tuple[rp.Pair, tuple[int, ...]]:
    builder, shape = CASES[case]
    package = PACKAGE.get(case, "timm")
    pytest.importorskip(package)
    pair = builder()
    assert pair.package == package
    assert pair.train_mode == (case not in EVAL_ONLY)
    return pair, shape


def _cases_and_modes():
    for case in CASES:
        for mode in ("eval",) if case in EVAL_ONLY else ("eval", "train"):
            yield pytest.param(case, mode, id=f"{case}-{mode}")


@pytest.mark.parametrize(("case", "mode"), list(_cases_and_modes()))
def test_same_function_as_reference(case: str, mode: str):
    pair, shape = _build(case)
    pair.ours.train(mode == "train")
    pair.reference.train(mode == "train")
    x = torch.randn(shape) * 2 + 0.5
    x_ours = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)

    out_ours = pair.ours(x_ours)
    out_ref = pair.reference(pair.reference_input(x_ref))
    assert out_ours.shape == out_ref.shape
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-5, atol=1e-5)
    # The output must depend on the mapped weights: a constant gate near 1 would pass the check above alone.
    assert not torch.allclose(out_ours, x if out_ours.shape == x.shape else out_ours.new_zeros(()), atol=1e-3)

    grad_out = torch.randn_like(out_ours)
    out_ours.backward(grad_out)
    out_ref.backward(grad_out)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)

    # Train mode updates the BN running statistics; they must be updated alike (ours mapped again vs timm's).
    ref_state = pair.reference.state_dict()
    for name, value in pair.to_reference(pair.ours).items():
        torch.testing.assert_close(value, ref_state[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_eca_kernel_size_matches_timm_for_every_channel_count():
    timm_layers = pytest.importorskip("timm.layers")
    from plugsurgeon.plugins.eca import eca_kernel_size

    mismatched = [c for c in range(8, 4097) if timm_layers.EcaModule(c).conv.kernel_size[0] != eca_kernel_size(c)]
    assert mismatched == []


def test_timm_blurpool_pads_even_filters_differently():
    """Why the even-size case sets the reference's padding: with its own, timm's output is larger, and its
    samples sit one input pixel off ours, so it is another function inside the map too, not a border effect."""
    timm_layers = pytest.importorskip("timm.layers")
    from plugsurgeon.plugins.blurpool import BlurPool2d

    x = torch.randn(1, 8, 56, 56)
    ours, theirs = BlurPool2d(8, filter_size=4)(x), timm_layers.BlurPool2d(8, filt_size=4)(x)
    assert ours.shape[-2:] == (28, 28) and theirs.shape[-2:] == (29, 29)
    for shift in (0, 1):  # no alignment of the two grids makes the interiors agree
        assert not torch.allclose(ours[..., 2:-2, 2:-2], theirs[..., 2 + shift:-3 + shift, 2 + shift:-3 + shift], atol=1e-3)


def _border_outputs(size: int, filter_size: int, stride: int) -> torch.Tensor:
    """Which output positions of a BlurPool along one axis read padding: their filter window starts
    before the input or ends after it (padding (size - 1) // 2 before, as ours and kornia)."""
    before = (filter_size - 1) // 2
    out = (size + filter_size - 1 - filter_size) // stride + 1
    starts = torch.arange(out) * stride - before
    return (starts < 0) | (starts + filter_size > size)


@pytest.mark.parametrize("filter_size", [3, 4, 5])
def test_reflect_and_kornia_zero_padding_differ_only_where_the_filter_reads_the_border(filter_size: int):
    kornia_filters = pytest.importorskip("kornia.filters")
    from plugsurgeon.plugins.blurpool import BlurPool2d

    x = torch.rand(2, 8, 15, 12) + 1.0  # positive: zero padding darkens every border output
    ours, theirs = BlurPool2d(8, filter_size=filter_size)(x), kornia_filters.BlurPool2D(filter_size)(x)
    border = _border_outputs(15, filter_size, 2)[:, None] | _border_outputs(12, filter_size, 2)[None, :]
    assert border.any() and (~border).any()
    differs = (ours - theirs).abs().amax(dim=(0, 1)) > 1e-6
    assert torch.equal(differs, border)


def test_splat_cardinality_needs_the_input_permutation():
    """Without the permutation, ours and timm differ when cardinality > 1: the docstring's claim is real."""
    pytest.importorskip("timm")
    pair = rp.splat_timm(64, cardinality=2)
    pair.ours.eval(), pair.reference.eval()
    x = torch.randn(2, 64, 6, 5)
    torch.testing.assert_close(pair.ours(x), pair.reference(pair.reference_input(x)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pair.ours(x), pair.reference(x), atol=1e-3)


@pytest.mark.parametrize("case", sorted(EVAL_ONLY))
def test_eval_only_pairs_differ_in_train_mode(case: str):
    """The documented difference is real: in train mode the BN statistics that the reference keeps per branch
    (RepVGG) or drops (PSP's 1x1 bin) make the outputs differ, so these pairs are compared in eval mode only."""
    pair, shape = _build(case)
    pair.ours.train()
    pair.reference.train()
    x = torch.randn(shape) * 2 + 0.5
    with torch.no_grad():
        assert not torch.allclose(pair.ours(x), pair.reference(x), rtol=1e-3, atol=1e-3)


REFERENCE_LINE_PENDING: set[str] = set()


@pytest.mark.parametrize("module", sorted({spec.factory.__module__ for spec in ps.catalog().values()} - REFERENCE_LINE_PENDING))
def test_every_plugin_file_names_the_reference_it_follows(module: str):
    """Each plugin file says which reference release or implementation it follows, or that none is
    installable and what its tests check instead, in a paragraph opening with "Reference:"."""
    doc = importlib.import_module(module).__doc__ or ""
    assert any(line.startswith("Reference: ") for line in doc.splitlines()), f"{module} has no 'Reference:' paragraph"
