"""Split-attention convolution (ResNeSt).

Zhang, Wu, Zhang, Zhu, Lin, Zhang, Sun, He, Mueller, Manmatha, Li, Smola. "ResNeSt: Split-Attention
Networks", arXiv 2020. https://arxiv.org/abs/2004.08955

The conv produces R "radix" splits of C channels for each of K cardinal groups (one grouped conv with
K * R groups), then BatchNorm and ReLU. Per cardinal group the splits are summed, globally average
pooled, passed through FC -> BN -> ReLU -> FC (to R * C channels, grouped by cardinal group), and an
r-softmax across the R splits of every channel gives the weights (sigmoid when R = 1, Eq. 3-4 and
Sec. 3.1-3.2); the output is the weighted sum of the splits.

Defaults: radix 2, reduction 4, min_hidden 32: hidden = max(C * R / 4, 32), rounded up to a multiple
of K. The cardinality K is the replaced conv's groups (1 on ResNet-50, the paper's ResNeSt-50 2s1x64d).

Deliberate differences:
- The split conv's kernel is stored in the replaced conv's ``weight`` (same name and shape, so
  pretrained checkpoints load): split r of cardinal group k reads the r-th slice of that group's input
  channels with kernel ``weight[k-th output block, r-th input slice]``. The splits of a group thus sum
  to exactly the replaced conv's output before BN, and a pretrained conv is a sensible start. The
  reference code orders groups radix-major; this one orders them cardinal-major, which only permutes
  which input slice feeds which split (immaterial: the input comes from a learned conv). A bias of the
  replaced conv is shared out equally among the splits.
- The model's own BN and ReLU after the replaced conv stay, after the block (ResNeSt drops them).
- fc1 has no bias (BN follows). The BN on the pooled vector needs a batch of 2 or more in training.
- ResNeSt-50 also changes the network (deep stem, average-pool downsampling); this plugin is the
  split-attention conv only. The recipe on ResNet-50 gives 27.5M parameters, ResNeSt-50's count.
Not identity at init: the splits go through new BN/ReLU and are reweighted.

Reference: timm's ``SplitAttn`` (timm.layers, after the authors' zhanghang1989/ResNeSt) with BN, the same
function up to the documented group order (tests/plugins/test_reference_equivalence.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._conv import KeepsConvWeights, replaced_conv
from plugsurgeon.plugins.args import MAX_BRANCHES, BnEps, BnMomentum, HiddenWidth, PluginArgs, Reduction
from plugsurgeon.plugins.registry import register_plugin
from plugsurgeon.sites.site import Site


class SplatArgs(PluginArgs):
    radix: int = Field(2, ge=1, le=MAX_BRANCHES, description="R: splits per cardinal group (must divide each group's input channels)")
    reduction: Reduction = Field(4, description="the attention's hidden layer has C * R / reduction units")
    min_hidden: HiddenWidth = Field(32, description="at least this many hidden units (the authors' 32)")
    bn_eps: BnEps = 1e-5
    bn_momentum: BnMomentum = 0.1

    site_bounds = {"radix": "a divisor of the replaced conv's input channels per group"}

    def check_site(self, site: Site, replaced: nn.Module | None) -> None:
        super().check_site(site, replaced)
        per_group = getattr(replaced, "in_channels", site.in_channels) // max(1, getattr(replaced, "groups", 1))
        if per_group % self.radix:
            self.refuse("radix", self.radix, f"not a divisor of the {per_group} input channels of each group", site,
                        "every split reads an equal slice of its group's input (a 3-channel stem has none for radix 2)")


@register_plugin(
    "splat",
    roles=("conv",),
    mode="replace",
    infer=replaced_conv,
    structural=("source",),
    identity_at_init=False,
    paper="Zhang et al., ResNeSt: Split-Attention Networks, arXiv:2004.08955 (2020)",
    year=2020,
    summary="the conv yields radix splits; pooled sum -> FC-BN-ReLU-FC -> softmax across splits reweights them",
    args=SplatArgs,
    suggested_where={"kernel": 3, "stages": [2, 3, 4, 5]},
)
class SplitAttentionConv(KeepsConvWeights):
    def __init__(self, source: nn.Conv2d, radix: int = 2, reduction: int = 4, min_hidden: int = 32,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__(source)
        if radix < 1 or reduction < 1 or min_hidden < 1:
            raise ValueError(f"radix, reduction and min_hidden must be positive, got {radix}, {reduction}, {min_hidden}")
        card, c = self.groups, self.out_channels
        per_group = self.in_channels // card
        if per_group % radix:
            raise ValueError(
                f"splat splits each group's {per_group} input channels into radix={radix} parts, which does not divide; "
                "exclude this conv (e.g. a 3-channel stem) with `where`"
            )
        self.radix, self.cardinality = radix, card
        device, dtype = self.weight.device, self.weight.dtype
        bn: dict[str, Any] = dict(eps=bn_eps, momentum=bn_momentum, device=device, dtype=dtype)
        self.bn0 = nn.BatchNorm2d(c * radix, **bn)
        hidden = max(c * radix // reduction, min_hidden)
        hidden = -(-hidden // card) * card
        self.fc1 = nn.Conv2d(c, hidden, 1, groups=card, bias=False, device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(hidden, **bn)
        self.fc2 = nn.Conv2d(hidden, c * radix, 1, groups=card, device=device, dtype=dtype)

    def split_kernel(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernel and bias of the grouped conv making the splits; group k * radix + r is split r of cardinal group k."""
        w, card, r = self.weight, self.cardinality, self.radix
        c, per_group, kh, kw = w.shape
        kernel = w.view(card, c // card, r, per_group // r, kh, kw).transpose(1, 2).reshape(card * r * (c // card), per_group // r, kh, kw)
        bias = None
        if self.bias is not None:
            bias = (self.bias.view(card, 1, c // card) / r).expand(card, r, c // card).reshape(-1)
        return kernel, bias

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The splits after BN and ReLU: (N, cardinality, radix, C / cardinality, H, W)."""
        kernel, bias = self.split_kernel()
        u = F.conv2d(self.pad(x), kernel, bias, self.stride, 0, self.dilation, self.cardinality * self.radix)
        u = F.relu(self.bn0(u))
        return u.view(u.shape[0], self.cardinality, self.radix, self.out_channels // self.cardinality, *u.shape[-2:])

    def attention(self, u: torch.Tensor) -> torch.Tensor:
        """Weights of the splits: (N, cardinality, radix, C / cardinality), summing to 1 over the radix (dim 2)."""
        n = u.shape[0]
        gap = u.sum(dim=2).mean(dim=(-2, -1)).reshape(n, self.out_channels, 1, 1)
        logits = self.fc2(F.relu(self.bn1(self.fc1(gap))))
        logits = logits.view(n, self.cardinality, self.radix, self.out_channels // self.cardinality)
        return logits.softmax(dim=2) if self.radix > 1 else torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.split(x)
        a = self.attention(u)
        out = (u * a[..., None, None]).sum(dim=2)
        return out.reshape(out.shape[0], self.out_channels, *out.shape[-2:])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, radix={self.radix}, cardinality={self.cardinality}"
