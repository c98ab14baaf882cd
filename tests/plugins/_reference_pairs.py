"""Our catalog modules next to well-known implementations of the same thing, with the same weights.

Each builder returns a :class:`Pair`: our module with scrambled parameters (fresh random init everywhere,
including the tensors our init sets to zero, and random BatchNorm statistics), and the reference module
configured so that its definition coincides with ours and loaded, with ``strict=True``, from an explicit
name-by-name map of our state. Used by tests/plugins/test_reference_equivalence.py (same function) and
benchmarks/reference_latency.py (latency ratios). Which pairs exist, and why the others do not, is
explained in the test module's docstring.

The reference packages (timm, torchvision, segmentation_models_pytorch, ultralytics, kornia, antialiased_cnns) are imported inside
the builders, so this module imports without the optional ones; ``Pair.package`` names the one a pair needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.aspp import ASPP
from plugsurgeon.plugins.blurpool import BlurPool2d, MaxBlurPool2d
from plugsurgeon.plugins.cbam import CBAM
from plugsurgeon.plugins.coord_attention import CoordAttention
from plugsurgeon.plugins.dcn import DeformConv
from plugsurgeon.plugins.dwsep import DepthwiseSeparableConv
from plugsurgeon.plugins.eca import ECA
from plugsurgeon.plugins.gc import GlobalContext
from plugsurgeon.plugins.ghost import GhostModule
from plugsurgeon.plugins.mixconv import MixConv
from plugsurgeon.plugins.ppm import PyramidPooling
from plugsurgeon.plugins.repvgg import RepVGGBlock
from plugsurgeon.plugins.scse import SCSE
from plugsurgeon.plugins.se import SqueezeExcitation
from plugsurgeon.plugins.sk import SKConv
from plugsurgeon.plugins.splat import SplitAttentionConv
from plugsurgeon.plugins.spp import SPP, SPPF

State = dict[str, torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class Pair:
    """``ours(x)`` and ``reference(reference_input(x))`` compute the same function once ``sync()`` ran."""

    name: str
    ours: nn.Module
    reference: nn.Module
    to_reference: Callable[[nn.Module], State]  # our module's state under the reference's names and shapes
    reference_input: Callable[[torch.Tensor], torch.Tensor] = field(default=_identity)
    package: str = "timm"  # the importable package the reference comes from
    # False: the reference computes our function in eval mode only (train-mode BN statistics differ by design).
    train_mode: bool = True

    @property
    def needs_timm(self) -> bool:
        return self.package == "timm"

    def sync(self) -> Pair:
        self.reference.load_state_dict(self.to_reference(self.ours), strict=True)
        return self


def scramble(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters everywhere: a zero-initialised last conv or BN gamma would hide a wrong mapping."""
    generator = torch.Generator().manual_seed(seed)

    def fill(t: torch.Tensor, scale: float, shift: float = 0.0, uniform: bool = False) -> None:
        values = torch.rand(t.shape, generator=generator) if uniform else torch.randn(t.shape, generator=generator)
        t.copy_(values * scale + shift)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                fill(m.running_mean, 0.5)
                fill(m.running_var, 1.0, 0.5, uniform=True)
                if m.affine:
                    fill(m.weight, 1.0, 0.5, uniform=True)
                    fill(m.bias, 0.5)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                fill(m.weight, 1.0, 0.5, uniform=True)
                fill(m.bias, 0.5)
        for name, p in module.named_parameters():
            if name.rsplit(".", 1)[-1] in ("weight", "bias") and not _is_norm_param(module, name):
                fan_in = p[0].numel() if p.dim() > 1 else max(1, p.numel())
                fill(p, fan_in**-0.5)
    return module


def _is_norm_param(module: nn.Module, name: str) -> bool:
    owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    return isinstance(owner, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))


def _conv1x1(w: torch.Tensor) -> torch.Tensor:
    """A Linear weight (out, in) as a 1x1 conv weight (out, in, 1, 1)."""
    return w[:, :, None, None]


def _bn(ref_prefix: str, state: State, our_prefix: str, permute: Callable[[torch.Tensor], torch.Tensor] = _identity) -> State:
    names = ("weight", "bias", "running_mean", "running_var")
    out = {f"{ref_prefix}.{n}": permute(state[f"{our_prefix}.{n}"]) for n in names}
    out[f"{ref_prefix}.num_batches_tracked"] = state[f"{our_prefix}.num_batches_tracked"]
    return out


def _detached(module: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- SE


def se_torchvision(channels: int, seed: int = 0) -> Pair:
    from torchvision.ops import SqueezeExcitation as TvSE

    ours = scramble(SqueezeExcitation(channels), seed)
    hidden = ours.fc1.out_features

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {"fc1.weight": _conv1x1(s["fc1.weight"]), "fc1.bias": s["fc1.bias"],
                "fc2.weight": _conv1x1(s["fc2.weight"]), "fc2.bias": s["fc2.bias"]}

    return Pair("se | torchvision.ops.SqueezeExcitation", ours, TvSE(channels, hidden), to_reference, package="torchvision").sync()


def se_timm(channels: int, seed: int = 0) -> Pair:
    from timm.layers import SEModule

    ours = scramble(SqueezeExcitation(channels), seed)
    hidden = ours.fc1.out_features  # timm's default rounds C/16 to a multiple of 8 (at least 8): pass ours

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {"fc1.weight": _conv1x1(s["fc1.weight"]), "fc1.bias": s["fc1.bias"],
                "fc2.weight": _conv1x1(s["fc2.weight"]), "fc2.bias": s["fc2.bias"]}

    return Pair("se | timm SEModule", ours, SEModule(channels, rd_channels=hidden), to_reference).sync()


# --------------------------------------------------------------------------------------------- ECA


def eca_timm(channels: int, seed: int = 0) -> Pair:
    from timm.layers import EcaModule

    ours = scramble(ECA(channels), seed)
    reference = EcaModule(channels)  # kernel size from the channels, gamma 2, beta 1: the same k for C >= 8
    if reference.conv.kernel_size != ours.conv.kernel_size:
        raise AssertionError(f"ECA kernel sizes differ at C={channels}: {reference.conv.kernel_size} vs {ours.conv.kernel_size}")
    return Pair("eca | timm EcaModule", ours, reference, lambda m: {"conv.weight": _detached(m)["conv.weight"]}).sync()


# -------------------------------------------------------------------------------------------- CBAM


def cbam_timm(channels: int, seed: int = 0) -> Pair:
    from timm.layers.cbam import CbamModule

    ours = scramble(CBAM(channels), seed)
    hidden = ours.channel.mlp[0].out_features

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {"channel.fc1.weight": _conv1x1(s["channel.mlp.0.weight"]), "channel.fc1.bias": s["channel.mlp.0.bias"],
               "channel.fc2.weight": _conv1x1(s["channel.mlp.2.weight"]), "channel.fc2.bias": s["channel.mlp.2.bias"],
               # ours pools [max, mean] (authors' code), timm [mean, max] (the paper's Eq. 3): swap the conv's inputs
               "spatial.conv.conv.weight": s["spatial.conv.weight"].flip(1)}
        out.update(_bn("spatial.conv.bn", s, "spatial.bn"))
        return out

    reference = CbamModule(channels, rd_channels=hidden, mlp_bias=True)
    return Pair("cbam | timm CbamModule", ours, reference, to_reference).sync()


# ---------------------------------------------------------------------------------------------- GC


def gc_timm(channels: int, seed: int = 0) -> Pair:
    from timm.layers import GlobalContext as TimmGC

    ours = scramble(GlobalContext(channels), seed)
    hidden = ours.transform[0].out_channels
    reference = TimmGC(channels, fuse_add=True, fuse_scale=False, rd_channels=hidden)
    reference.mlp_add.norm.eps = ours.transform[1].eps  # timm's LayerNorm2d uses 1e-6; ours (and the authors') 1e-5

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {
            "conv_attn.weight": s["key.weight"],
            # ours has no bias on W_k: a constant logit cancels in the softmax, so any value gives the same output
            "conv_attn.bias": torch.full((1,), 0.75),
            "mlp_add.fc1.weight": s["transform.0.weight"], "mlp_add.fc1.bias": s["transform.0.bias"],
            "mlp_add.norm.weight": s["transform.1.weight"].reshape(hidden),
            "mlp_add.norm.bias": s["transform.1.bias"].reshape(hidden),
            "mlp_add.fc2.weight": s["transform.3.weight"], "mlp_add.fc2.bias": s["transform.3.bias"],
        }

    return Pair("gc | timm GlobalContext(fuse_add)", ours, reference, to_reference).sync()


# ----------------------------------------------------------------------------------------------- SK


def sk_timm(channels: int, groups: int = 1, stride: int = 1, seed: int = 0) -> Pair:
    """Our SK unit replacing a 3x3 conv with ``groups`` groups, its dilated path with the same groups."""
    from timm.layers import SelectiveKernel

    source = nn.Conv2d(channels, channels, 3, stride, padding=1, groups=groups, bias=False)
    ours = scramble(SKConv(source, paths=2, groups=groups), seed)
    if ours.path_groups != groups:
        raise AssertionError(f"dilated path has {ours.path_groups} groups, expected {groups}")
    hidden = ours.fc.out_features
    reference = SelectiveKernel(channels, channels, kernel_size=[3, 5], stride=stride, groups=groups,
                                rd_channels=hidden, keep_3x3=True, split_input=False)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {"paths.0.conv.weight": s["weight"], "paths.1.conv.weight": s["dilated.0.weight"],
               "attn.fc_reduce.weight": _conv1x1(s["fc.weight"]), "attn.fc_select.weight": _conv1x1(s["select.weight"])}
        out.update(_bn("paths.0.bn", s, "bn.0"))
        out.update(_bn("paths.1.bn", s, "bn.1"))
        out.update(_bn("attn.bn", s, "fc_bn"))
        return out

    return Pair(f"sk | timm SelectiveKernel(split_input=False), groups {groups}", ours, reference, to_reference).sync()


# ---------------------------------------------------------------------------------------- Splat


def splat_timm(in_channels: int, out_channels: int | None = None, cardinality: int = 1, radix: int = 2, stride: int = 1,
               seed: int = 0) -> Pair:
    """Our split-attention conv replacing a 3x3 conv with ``cardinality`` groups.

    Both make the splits with one conv of cardinality * radix groups; group g reads input slice g. Ours
    orders the groups cardinal-major (g = k * radix + r), timm radix-major (g = r * cardinality + k). So
    timm's group blocks are ours transposed, and timm is fed the input with its slices transposed the same
    way; with cardinality 1 (ResNeSt-50 2s1x64d, our recipe on ResNet-50) both permutations are the identity.
    """
    from timm.layers import SplitAttn

    c = out_channels or in_channels
    card = cardinality
    source = nn.Conv2d(in_channels, c, 3, stride, padding=1, groups=card, bias=False)
    ours = scramble(SplitAttentionConv(source, radix=radix), seed)
    hidden = ours.fc1.out_channels
    if hidden % radix:
        raise AssertionError("timm takes rd_channels per split; the hidden size must divide by the radix")
    reference = SplitAttn(in_channels, c, kernel_size=3, stride=stride, padding=1, groups=card, bias=False, radix=radix,
                          rd_channels=hidden // radix, norm_layer=nn.BatchNorm2d)

    def blocks_to_radix_major(t: torch.Tensor) -> torch.Tensor:  # (card * radix * c/card, ...) -> radix-major
        return t.reshape(card, radix, c // card, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        kernel, _ = m.split_kernel()
        out = {"conv.weight": blocks_to_radix_major(kernel.detach().clone()),
               "fc1.weight": s["fc1.weight"], "fc1.bias": torch.zeros(hidden),  # ours has none (BN follows)
               "fc2.weight": s["fc2.weight"], "fc2.bias": s["fc2.bias"]}
        out.update(_bn("bn0", s, "bn0", permute=blocks_to_radix_major))
        out.update(_bn("bn1", s, "bn1"))
        return out

    def reference_input(x: torch.Tensor) -> torch.Tensor:
        n, cin, h, w = x.shape
        return x.reshape(n, card, radix, cin // (card * radix), h, w).transpose(1, 2).reshape(n, cin, h, w)

    name = f"splat | timm SplitAttn(norm_layer=BatchNorm2d), radix {radix}, cardinality {card}"
    return Pair(name, ours, reference, to_reference, reference_input if card > 1 else _identity).sync()


# ------------------------------------------------------------------------------------------ BlurPool


def blurpool_timm(channels: int, filter_size: int = 3, stride: int = 2, pad_mode: str = "reflect", seed: int = 0) -> Pair:
    """Odd filter sizes: the same padding. Even ones: timm pads (stride - 1 + size - 1) // 2 on every side,
    ours (and antialiased-cnns) (size - 1) // 2 before and the rest after; the reference gets ours, set by hand.
    Our ``pad_mode="zeros"`` is timm's ``pad_mode="constant"`` (its 'blurpc' layer)."""
    from timm.layers import BlurPool2d as TimmBlurPool2d

    ours = BlurPool2d(channels, stride=stride, filter_size=filter_size, pad_mode=pad_mode)
    timm_mode = {"reflect": "reflect", "replicate": "replicate", "zeros": "constant"}[pad_mode]
    reference = TimmBlurPool2d(channels, filt_size=filter_size, stride=stride, pad_mode=timm_mode)
    name = f"blurpool | timm BlurPool2d, filter {filter_size}, pad_mode {timm_mode}"
    if filter_size % 2 == 0:
        reference.padding = list(ours.padding)  # F.pad order (left, right, top, bottom), as ours
        name += " (padding set to ours)"
    return Pair(name, ours, reference, lambda m: {}).sync()


def blurpool_kornia(channels: int, filter_size: int, stride: int = 2) -> Pair:
    """kornia zero-pads, (size - 1) // 2 before and size // 2 after, as ours: ours with ``pad_mode="zeros"``."""
    from kornia.filters import BlurPool2D

    ours = BlurPool2d(channels, stride=stride, filter_size=filter_size, pad_mode="zeros")
    reference = BlurPool2D(filter_size, stride=stride)
    return Pair(f"blurpool(pad_mode=zeros) | kornia BlurPool2D, filter {filter_size}", ours, reference, lambda m: {},
                package="kornia").sync()


def maxblurpool_kornia(channels: int, filter_size: int, max_window: int = 2) -> Pair:
    """kornia's MaxBlurPool2D is a max_pool_size window at stride 1 without padding, then its BlurPool2D:
    ours replacing a strided max pool with ``max_window`` set and ``pad_mode="zeros"``."""
    from kornia.filters import MaxBlurPool2D

    ours = MaxBlurPool2d(nn.MaxPool2d(3, 2, 1), channels, filter_size, pad_mode="zeros", max_window=max_window)
    reference = MaxBlurPool2D(filter_size, stride=2, max_pool_size=max_window)
    name = f"maxblurpool(pad_mode=zeros, max_window={max_window}) | kornia MaxBlurPool2D, filter {filter_size}"
    return Pair(name, ours, reference, lambda m: {}, package="kornia").sync()


_RELEASE_PAD = {"reflect": "reflect", "replicate": "repl", "zeros": "zero"}


def _release_blur(channels: int, filter_size: int, pad_mode: str, ours: BlurPool2d):
    from antialiased_cnns import BlurPool

    reference = BlurPool(channels, pad_type=_RELEASE_PAD[pad_mode], filt_size=filter_size, stride=ours.stride)
    # The release builds its filter itself (a persistent buffer); it must be ours before ours is loaded into it.
    if not torch.allclose(reference.filt, ours.filter, atol=1e-7):
        raise AssertionError(f"antialiased-cnns' filter of size {filter_size} is not ours")
    return reference


def blurpool_release(channels: int, filter_size: int, pad_mode: str = "reflect", stride: int = 2) -> Pair:
    """The authors' BlurPool (antialiased_cnns): the same padding split, and each of its pad types."""
    ours = BlurPool2d(channels, stride=stride, filter_size=filter_size, pad_mode=pad_mode)
    reference = _release_blur(channels, filter_size, pad_mode, ours)
    return Pair(f"blurpool(pad_mode={pad_mode}) | antialiased_cnns BlurPool, filter {filter_size}", ours, reference,
                lambda m: {"filt": m.filter.detach().clone()}, package="antialiased_cnns").sync()


def maxblurpool_release(channels: int, filter_size: int) -> Pair:
    """The release's ResNet stem, ``Sequential(MaxPool2d(2, stride=1), BlurPool)``, against ours replacing
    torchvision's MaxPool2d(3, 2, padding=1) with ``max_window=2``."""
    ours = MaxBlurPool2d(nn.MaxPool2d(3, 2, 1), channels, filter_size, max_window=2)
    reference = nn.Sequential(nn.MaxPool2d(2, stride=1), _release_blur(channels, filter_size, "reflect", ours.blur))
    return Pair(f"maxblurpool(max_window=2) | antialiased_cnns ResNet stem, filter {filter_size}", ours, reference,
                lambda m: {"1.filt": m.blur.filter.detach().clone()}, package="antialiased_cnns").sync()


# ------------------------------------------------------------------------------------ Coordinate attention


def coord_attention_timm(channels: int, seed: int = 0) -> Pair:
    from timm.layers.coord_attn import CoordAttn

    ours = scramble(CoordAttention(channels), seed)
    hidden = ours.conv.out_channels
    reference = CoordAttn(channels, rd_channels=hidden, bias=True)  # timm's defaults: no bias, C * 2/3 / 16 hidden

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {"conv1.weight": s["conv.weight"], "conv1.bias": s["conv.bias"],
               "conv_h.weight": s["conv_h.weight"], "conv_h.bias": s["conv_h.bias"],
               "conv_w.weight": s["conv_w.weight"], "conv_w.bias": s["conv_w.bias"]}
        out.update(_bn("bn1", s, "bn"))
        return out

    return Pair("coord_attention | timm CoordAttn(bias=True)", ours, reference, to_reference).sync()


# -------------------------------------------------------------------------------------------- Non-local


def nonlocal_timm(channels: int, seed: int = 0) -> Pair:
    """Ours without subsampling and without scaling, the configuration timm's NonLocalAttn(use_scale=False) has."""
    from timm.layers import NonLocalAttn

    ours = scramble(ps.get_plugin("nonlocal").factory(channels, sub_sample=False, scale=False), seed)
    reference = NonLocalAttn(channels, use_scale=False, rd_channels=ours.inner)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {}
        for ref_name, our_name in (("t", "theta"), ("p", "phi"), ("g", "g"), ("z", "out")):
            out[f"{ref_name}.weight"], out[f"{ref_name}.bias"] = s[f"{our_name}.weight"], s[f"{our_name}.bias"]
        out.update(_bn("norm", s, "bn"))
        return out

    return Pair("nonlocal(sub_sample=False) | timm NonLocalAttn(use_scale=False)", ours, reference, to_reference).sync()


# ---------------------------------------------------------------------------------------------- scSE


def scse_smp(channels: int, seed: int = 0) -> Pair:
    from segmentation_models_pytorch.base.modules import SCSEModule

    ours = scramble(SCSE(channels), seed)  # the paper's C/2 hidden units: smp's reduction=2 (its default is 16)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {"cSE.1.weight": _conv1x1(s["fc1.weight"]), "cSE.1.bias": s["fc1.bias"],
                "cSE.3.weight": _conv1x1(s["fc2.weight"]), "cSE.3.bias": s["fc2.bias"],
                "sSE.0.weight": s["spatial.weight"], "sSE.0.bias": s["spatial.bias"]}

    reference = SCSEModule(channels, reduction=2)
    return Pair("scse | smp SCSEModule(reduction=2)", ours, reference, to_reference, package="segmentation_models_pytorch").sync()


# ---------------------------------------------------------------------------------------------- DCN


class DeformConvPack(nn.Module):
    """torchvision.ops.DeformConv2d fed by a conv that predicts its offsets (and modulation), laid out as mmcv's
    (Modulated)DeformConv2dPack: the offset conv has the deformable conv's kernel, stride, padding and dilation,
    and its output is [2 offsets per tap and deformable group, then 1 modulation logit per tap and group]."""

    def __init__(self, source: nn.Conv2d, modulated: bool, deformable_groups: int, mask_scale: float) -> None:
        from torchvision.ops import DeformConv2d

        super().__init__()
        k = source.kernel_size
        self.taps = deformable_groups * k[0] * k[1]
        self.modulated, self.mask_scale = modulated, mask_scale
        self.offset = nn.Conv2d(source.in_channels, (3 if modulated else 2) * self.taps, k, source.stride, source.padding,
                                source.dilation, bias=True)
        self.conv = DeformConv2d(source.in_channels, source.out_channels, k, source.stride, source.padding, source.dilation,
                                 source.groups, bias=source.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)
        if not self.modulated:
            return self.conv(x, out)
        offset, logits = out[:, : 2 * self.taps], out[:, 2 * self.taps :]
        return self.conv(x, offset, self.mask_scale * torch.sigmoid(logits))


def dcn_torchvision(modulated: bool, cin: int = 16, cout: int = 24, stride: int = 1, groups: int = 1, deformable_groups: int = 1,
                    mask_scale: float = 2.0, seed: int = 0) -> Pair:
    """Ours pads the input once and runs the offset conv and the sampling unpadded; the pack pads inside both (zeros)."""
    source = nn.Conv2d(cin, cout, 3, stride, padding=1, groups=groups, bias=True)
    ours = scramble(DeformConv(source, modulated=modulated, deformable_groups=deformable_groups, mask_scale=mask_scale), seed)
    reference = DeformConvPack(source, modulated, deformable_groups, mask_scale)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {"offset.weight": s["offset.weight"], "offset.bias": s["offset.bias"], "conv.weight": s["weight"], "conv.bias": s["bias"]}

    name = f"dcn{'v2' if modulated else 'v1'} | torchvision.ops.DeformConv2d + offset conv (mmcv's pack layout)"
    return Pair(name, ours, reference, to_reference, package="torchvision").sync()


# --------------------------------------------------------------------------------------------- Ghost


def ghost_timm(cin: int, cout: int, kernel_size: int = 1, stride: int = 1, seed: int = 0) -> Pair:
    from timm.models.ghostnet import GhostModule as TimmGhostModule

    source = nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False)
    ours = scramble(GhostModule(source), seed)  # ratio 2, cheap 3x3 depthwise, BN + ReLU after each: timm's defaults

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {"primary_conv.0.weight": s["primary.weight"], "cheap_operation.0.weight": s["cheap.weight"]}
        out.update(_bn("primary_conv.1", s, "primary_bn"))
        out.update(_bn("cheap_operation.1", s, "cheap_bn"))
        return out

    reference = TimmGhostModule(cin, cout, kernel_size=kernel_size, stride=stride)
    return Pair(f"ghost | timm GhostModule, {kernel_size}x{kernel_size} primary", ours, reference, to_reference).sync()


# ------------------------------------------------------------------------------------------- MixConv


def mixconv_timm(cin: int, cout: int, depthwise: bool, stride: int = 1, seed: int = 0) -> Pair:
    from timm.layers import MixedConv2d

    source = nn.Conv2d(cin, cout, 3, stride, padding=1, groups=cin if depthwise else 1, bias=False)
    ours = scramble(MixConv(source, kernels=(3, 5, 7)), seed)
    reference = MixedConv2d(cin, cout, kernel_size=[3, 5, 7], stride=stride, depthwise=depthwise)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        return {f"{i}.weight": s[f"convs.{i}.weight"] for i in range(3)}

    kind = "depthwise" if depthwise else "dense (grouped per kernel)"
    return Pair(f"mixconv | timm MixedConv2d, {kind}", ours, reference, to_reference).sync()


# --------------------------------------------------------------------------------- Depthwise-separable


def dwsep_timm(cin: int, cout: int, stride: int = 1, seed: int = 0) -> Pair:
    """Ours replaces the conv only; the host's BN after it is timm's bn2 (ours is followed by it here)."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv as TimmDSConv

    source = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
    ours = scramble(nn.Sequential(DepthwiseSeparableConv(source), nn.BatchNorm2d(cout)), seed)
    reference = TimmDSConv(cin, cout, dw_kernel_size=3, stride=stride, noskip=True, pw_act=False, act_layer=nn.ReLU)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {"conv_dw.weight": s["0.depthwise.weight"], "conv_pw.weight": s["0.pointwise.weight"]}
        out.update(_bn("bn1", s, "0.bn"))
        out.update(_bn("bn2", s, "1"))
        return out

    return Pair("dwsep + host BN | timm DepthwiseSeparableConv(noskip, no pw act)", ours, reference, to_reference).sync()


# -------------------------------------------------------------------------------------------- RepVGG


def repvgg_timm(channels: int, stride: int = 1, seed: int = 0) -> Pair:
    """Eval mode only. Ours replaces the 3x3 conv and the host's BN after it normalises the branches' sum; timm's
    block has a BN per branch and its own ReLU. In eval mode a BN is a per-channel affine map a * y + b, so
    hostBN(W3 x + BN1(W1 x) + BNid(x)) = hostBN(W3 x) + a * BN1(W1 x) + a * BNid(x): timm's kxk BN is the host's,
    and its 1x1 and identity BNs are ours scaled by a. In train mode the host BN sees the sum's batch statistics."""
    from timm.models.byobnet import RepVggBlock

    source = nn.Conv2d(channels, channels, 3, stride, padding=1, bias=False)
    ours = scramble(nn.Sequential(RepVGGBlock(source), nn.BatchNorm2d(channels), nn.ReLU()), seed)
    reference = RepVggBlock(channels, channels, kernel_size=3, stride=stride)

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        host = m[1]
        a = (host.weight / torch.sqrt(host.running_var + host.eps)).detach()
        out = {"conv_kxk.conv.weight": s["0.weight"], "conv_1x1.conv.weight": s["0.pointwise.weight"]}
        out.update(_bn("conv_kxk.bn", s, "1"))
        branches = [("conv_1x1.bn", "0.pointwise_bn")] + ([("identity", "0.identity_bn")] if stride == 1 else [])
        for ref_prefix, our_prefix in branches:
            out.update(_bn(ref_prefix, s, our_prefix))
            out[f"{ref_prefix}.weight"] = a * s[f"{our_prefix}.weight"]
            out[f"{ref_prefix}.bias"] = a * s[f"{our_prefix}.bias"]
        return out

    name = f"repvgg + host BN, ReLU | timm RepVggBlock, stride {stride} (eval mode)"
    return Pair(name, ours, reference, to_reference, train_mode=False).sync()


# ---------------------------------------------------------------------------------------------- ASPP


def aspp_torchvision(channels: int, rates: tuple[int, ...] = (6, 12, 18), seed: int = 0) -> Pair:
    """torchvision projects to its branch width and ends with Dropout(0.5); ours projects back to C with no dropout
    (the paper names none): branch width = C, and the reference's dropout is set to p = 0."""
    from torchvision.models.segmentation.deeplabv3 import ASPP as TvASPP

    ours = scramble(ASPP(channels, rates=rates, branch_channels=channels), seed)
    reference = TvASPP(channels, list(rates), out_channels=channels)
    if not isinstance(reference.project[3], nn.Dropout):
        raise AssertionError(f"torchvision's ASPP projection changed: {reference.project}")
    reference.project[3].p = 0.0

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {}
        for i in range(len(rates) + 1):  # the 1x1 branch, then the atrous ones: conv, BN, ReLU in both
            out[f"convs.{i}.0.weight"] = s[f"branches.{i}.0.weight"]
            out.update(_bn(f"convs.{i}.1", s, f"branches.{i}.1"))
        pooling = len(rates) + 1  # torchvision's ASPPPooling: pool, conv, BN, ReLU
        out[f"convs.{pooling}.1.weight"] = s[f"branches.{pooling}.conv.0.weight"]
        out.update(_bn(f"convs.{pooling}.2", s, f"branches.{pooling}.conv.1"))
        out["project.0.weight"] = s["project.0.weight"]
        out.update(_bn("project.1", s, "project.1"))
        return out

    return Pair("aspp | torchvision DeepLabV3 ASPP (dropout p=0)", ours, reference, to_reference, package="torchvision").sync()


# ----------------------------------------------------------------------------------------------- PPM


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv followed by an eval-mode BN, as one conv with bias."""
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return conv.weight.detach() * scale[:, None, None, None], (bn.bias - bn.running_mean * scale).detach()


def ppm_smp(channels: int, seed: int = 0) -> Pair:
    """Eval mode only. smp's PSPModule concatenates [levels..., x] and PSPDecoder fuses with a 1x1 Conv2dReLU; ours
    concatenates [x, levels...] (the map permutes the fusing conv's inputs) and fuses with ``kernel_size`` (1 here).
    smp's 1x1 bin has a conv with bias and no BN ("PyTorch does not support BatchNorm for 1x1 shape"); ours has
    BN there too: in eval mode our conv + BN folds into smp's conv, in train mode our BN normalises over the batch."""
    from segmentation_models_pytorch.base.modules import Conv2dReLU
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule

    bins = (1, 2, 3, 6)
    ours = scramble(PyramidPooling(channels, bins=bins, kernel_size=1), seed)
    reduced = ours.levels[0].conv[0].out_channels
    reference = nn.Sequential(PSPModule(channels, sizes=bins), Conv2dReLU(channels + len(bins) * reduced, channels, kernel_size=1))

    def to_reference(m: nn.Module) -> State:
        s = _detached(m)
        out = {}
        for i, b in enumerate(bins):
            prefix = f"0.blocks.{i}.pool.1"
            if b == 1:
                out[f"{prefix}.0.weight"], out[f"{prefix}.0.bias"] = _folded(m.levels[i].conv[0], m.levels[i].conv[1])
            else:
                out[f"{prefix}.0.weight"] = s[f"levels.{i}.conv.0.weight"]
                out.update(_bn(f"{prefix}.1", s, f"levels.{i}.conv.1"))
        w = s["bottleneck.0.weight"]
        out["1.0.weight"] = torch.cat([w[:, channels:], w[:, :channels]], dim=1)  # [levels, x] from our [x, levels]
        out.update(_bn("1.1", s, "bottleneck.1"))
        return out

    name = "ppm(kernel_size=1) | smp PSPModule + PSPDecoder's 1x1 Conv2dReLU (eval mode)"
    return Pair(name, ours, reference, to_reference, package="segmentation_models_pytorch", train_mode=False).sync()


# ------------------------------------------------------------------------------------------ SPP, SPPF


def _relu_activations(reference: nn.Module) -> nn.Module:
    """Ultralytics' Conv blocks use SiLU; ours ReLU (the ResNet hosts of this catalog): set theirs to ReLU."""
    for name in ("cv1", "cv2"):
        getattr(reference, name).act = nn.ReLU()
    return reference


def _spp_to_reference(m: nn.Module) -> State:
    s = _detached(m)
    out = {"cv1.conv.weight": s["reduce.0.weight"], "cv2.conv.weight": s["fuse.0.weight"]}
    out.update(_bn("cv1.bn", s, "reduce.1"))
    out.update(_bn("cv2.bn", s, "fuse.1"))
    return out


def spp_ultralytics(channels: int, seed: int = 0) -> Pair:
    """Ultralytics' SPP halves the channels first (cv1), as ours with reduction=2; both concatenate [x, pools]."""
    from ultralytics.nn.modules.block import SPP as UltralyticsSPP

    ours = scramble(SPP(channels, kernels=(5, 9, 13), reduction=2), seed)
    reference = _relu_activations(UltralyticsSPP(channels, channels, k=(5, 9, 13)))
    return Pair("spp(reduction=2) | ultralytics SPP (ReLU)", ours, reference, _spp_to_reference, package="ultralytics").sync()


def sppf_ultralytics(channels: int, seed: int = 0) -> Pair:
    """Ultralytics 8.4's SPPF has no activation after cv1 (YOLOv5's SPPF had one, as ours): it is set to ReLU too."""
    from ultralytics.nn.modules.block import SPPF as UltralyticsSPPF

    ours = scramble(SPPF(channels, kernel=5, repeats=3, reduction=2), seed)
    reference = UltralyticsSPPF(channels, channels, k=5)
    if not isinstance(reference.cv1.act, nn.Identity) or getattr(reference, "add", False):
        raise AssertionError("ultralytics' SPPF changed (cv1 activation or shortcut): revisit this pair and its docstring")
    reference = _relu_activations(reference)
    return Pair("sppf(reduction=2) | ultralytics SPPF (ReLU, also after cv1)", ours, reference, _spp_to_reference,
                package="ultralytics").sync()
