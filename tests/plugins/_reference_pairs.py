"""Our catalog modules next to well-known implementations of the same thing, with the same weights.

Each builder returns a :class:`Pair`: our module with scrambled parameters (fresh random init everywhere,
including the tensors our init sets to zero, and random BatchNorm statistics), and the reference module
configured so that its definition coincides with ours and loaded, with ``strict=True``, from an explicit
name-by-name map of our state. Used by tests/plugins/test_reference_equivalence.py (same function) and
benchmarks/reference_latency.py (latency ratios). Which pairs exist, and why the others do not, is
explained in the test module's docstring.

The timm and torchvision imports are local to the builders, so this module imports without timm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.blurpool import BlurPool2d
from plugsurgeon.plugins.cbam import CBAM
from plugsurgeon.plugins.coord_attention import CoordAttention
from plugsurgeon.plugins.eca import ECA
from plugsurgeon.plugins.gc import GlobalContext
from plugsurgeon.plugins.se import SqueezeExcitation
from plugsurgeon.plugins.sk import SKConv
from plugsurgeon.plugins.splat import SplitAttentionConv

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
    needs_timm: bool = True

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

    return Pair("se | torchvision.ops.SqueezeExcitation", ours, TvSE(channels, hidden), to_reference, needs_timm=False).sync()


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


def blurpool_timm(channels: int, filter_size: int = 3, stride: int = 2, seed: int = 0) -> Pair:
    """Odd filter sizes: the same padding. Even ones: timm pads (stride - 1 + size - 1) // 2 on every side,
    ours (and antialiased-cnns) (size - 1) // 2 before and the rest after; the reference gets ours, set by hand."""
    from timm.layers import BlurPool2d as TimmBlurPool2d

    ours = BlurPool2d(channels, stride=stride, filter_size=filter_size)
    reference = TimmBlurPool2d(channels, filt_size=filter_size, stride=stride)
    name = f"blurpool | timm BlurPool2d, filter {filter_size}"
    if filter_size % 2 == 0:
        reference.padding = list(ours.padding)  # F.pad order (left, right, top, bottom), as ours
        name += " (padding set to ours)"
    return Pair(name, ours, reference, lambda m: {}).sync()


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
