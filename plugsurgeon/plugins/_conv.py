"""Shared pieces for plugins that replace a convolution and keep its parameters under their names."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from plugsurgeon.errors import SiteError
from plugsurgeon.plugins._kernels import pair
from plugsurgeon.sites.site import Site


class KeepsConvWeights(nn.Module):
    """Holds the replaced conv's ``weight`` and ``bias`` as its own, so ``layer1.0.conv2.weight``
    stays ``layer1.0.conv2.weight`` and pretrained checkpoints load into the edited model."""

    def __init__(self, source: nn.Conv2d) -> None:
        super().__init__()
        if not isinstance(source, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d to replace, got {type(source).__name__}")
        check_plain_conv(source)
        self.in_channels = source.in_channels
        self.out_channels = source.out_channels
        self.kernel_size = pair(source.kernel_size)
        self.stride = pair(source.stride)
        self.dilation = pair(source.dilation)
        self.groups = source.groups
        self.padding = conv_padding(source)
        self.padding_mode = source.padding_mode
        self.weight = source.weight
        self.bias = source.bias

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph == pw == 0:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, (pw, pw, ph, ph), mode=mode)

    def conv(self, x_padded: torch.Tensor, stride: int | tuple[int, int] | None = None) -> torch.Tensor:
        return F.conv2d(x_padded, self.weight, self.bias, stride if stride is not None else self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv's ``weight`` followed by ``bn`` in eval mode, as one conv's weight and bias
    (torch's own folding formula: ``torch.nn.utils.fusion.fuse_conv_bn_weights``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    return fuse_conv_bn_weights(weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        # "same" (stride 1 only in torch): total padding d*(k-1), split evenly for odd kernels
        if any(conv.dilation[i] * (conv.kernel_size[i] - 1) % 2 for i in range(2)):
            raise ValueError("padding='same' with an even kernel pads asymmetrically; replace that conv by hand")
        return pair([conv.dilation[i] * (conv.kernel_size[i] - 1) // 2 for i in range(2)])
    return pair(padding)


def check_plain_conv(conv: nn.Module | None, where: str = "") -> None:
    """Refuse a conv whose forward is not nn.Conv2d's.

    Replace-mode plugins rebuild the computation from the conv's weight and geometry with F.conv2d, so
    a subclass that does more in forward (timm's StdConv2d/ScaledStdConv2d standardise the weight,
    Conv2dSame pads from the input size) would silently compute something else: ACNet on an NFNet is
    1.15 off at init, and on a tf_* stem the output shape changes.
    """
    if not isinstance(conv, nn.Conv2d):
        return
    cls = type(conv)
    where = f"'{where}' is" if where else "the conv is"
    if parametrize.is_parametrized(conv):
        raise SiteError(f"{where} a {cls.__name__} with parametrized weights (weight or spectral norm), which this plugin would freeze",
                        hint="remove the parametrization first (torch.nn.utils.parametrize.remove_parametrizations), or exclude the site")
    derived = [name for name in ("weight", "bias") if getattr(conv, name, None) is not None and name not in conv._parameters]
    if derived:
        # torch.nn.utils.weight_norm/spectral_norm (the hook-based ones) keep weight_g/weight_v or
        # weight_orig as Parameters and recompute a plain `weight` tensor in a forward pre-hook; a
        # replacement holding that tensor would be frozen at its last value and lose the hook.
        hooks = sorted({type(h).__name__ for h in conv._forward_pre_hooks.values()} - {"function", "method"})
        by = f" by its forward pre-hook {', '.join(hooks)}" if hooks else ""
        raise SiteError(
            f"{where} a {cls.__name__} whose {' and '.join(derived)} is not a Parameter but computed{by} "
            "(hook-based weight or spectral norm), which this plugin cannot carry over",
            hint="remove it first (torch.nn.utils.remove_weight_norm / remove_spectral_norm), or exclude the site",
        )
    if cls.forward is nn.Conv2d.forward and cls._conv_forward is nn.Conv2d._conv_forward:
        return
    raise SiteError(
        f"{where} a {cls.__name__} ({cls.__module__}{_purpose(cls)}), whose forward is not nn.Conv2d's; the plugin "
        "rebuilds the convolution from its weight as a plain conv and would change what it computes",
        hint=f"leave the {cls.__name__} layers out with `where: {{exclude: [...]}}` or let the step skip them with "
             "`on_unfit: skip`; ps.find_sites(model, 'conv') lists the convs",
        cli_hint=f"leave the {cls.__name__} layers out with `where: {{exclude: [...]}}` or let the step skip them with "
                 "`on_unfit: skip`; `plugsurgeon sites MODEL --kind conv` lists the convs",
    )


def _purpose(cls: type) -> str:
    """The first line of the class docstring says what it does differently, when the class has its own."""
    doc = inspect.getdoc(cls) if "__doc__" in vars(cls) else None
    line = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
    return f': "{line}"' if line else ""


def stride_one(conv: nn.Module, where: str = "") -> nn.Conv2d:
    """``conv`` evaluated densely: a plain nn.Conv2d at stride 1 holding the same weight and bias
    Parameters, so ``layer2.0.conv2.weight`` keeps its name, a checkpoint loads, and BN folding still
    sees a conv. Used where a plugin takes over a conv's stride (``Site.destride``)."""
    if not isinstance(conv, nn.Conv2d):
        raise SiteError(f"'{where}' is a {type(conv).__name__}, not a convolution to run at stride 1",
                        hint="exclude the site with `where: {exclude: [...]}`")
    check_plain_conv(conv, where)
    # Built on the meta device: the tensors are the conv's own, nothing is allocated for the twin.
    padding = conv.padding if isinstance(conv.padding, str) else pair(conv.padding)
    twin = nn.Conv2d(conv.in_channels, conv.out_channels, pair(conv.kernel_size), 1, padding, pair(conv.dilation), conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
    twin.weight = conv.weight
    twin.bias = conv.bias
    return twin.train(conv.training)


def replaced_conv(site: Site, module: nn.Module | None) -> dict[str, Any]:
    """The ``infer`` of the plugins that replace a conv: the conv itself, once it is checked to be a plain one."""
    check_plain_conv(module, site.path)
    return {"source": module}
