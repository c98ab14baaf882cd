"""SSH detection module with its context module.

Najibi, Samangouei, Chellappa, Davis. "SSH: Single Stage Headless Face Detector", ICCV 2017.
https://arxiv.org/abs/1708.03979

SSH enlarges the receptive field of each detection feature map with a context module: a shared 3x3
conv, then one more 3x3 conv (an effective 5x5 filter) in one branch and two more (an effective 7x7)
in the other, the two concatenated. The detection module concatenates a plain 3x3 conv of the map
with the context module's output and feeds the classification/regression heads (the paper's
detection- and context-module figures). Stacked 3x3 convs replace the larger filters. The ReLU
after the concatenation is ours, as in common re-implementations (RetinaFace).

As an "after" plugin this is the detection module's trunk with C channels out:
  3x3 conv C -> C/2                                   (effective 3x3, the detection conv)
  3x3 stem C -> C/2 + ReLU, then 3x3 -> C/4           (effective 5x5)
  the same stem, then 3x3 -> C/4 + ReLU, 3x3 -> C/4   (effective 7x7)
  concat [C/2, C/4, C/4] = C, ReLU.
For C not divisible by 4 the 7x7 branch takes the remainder, so the output always has C channels.

Defaults and differences from the paper: the paper's detection module outputs 2X channels (a 3x3
conv with X, a context module with X/2 + X/2); here every width is scaled so the output has the
input's C channels. Convs have biases and no normalisation, as in the paper (VGG-16 in Caffe);
``batch_norm=True`` puts a BatchNorm after every conv, as later re-implementations (RetinaFace) do.
Not identity at init: the output is a new C-channel map, not a residual, as in the paper.

Reference: the authors' Caffe release (mahyarnajibi/SSH on GitHub; not on pip, and no pip package has
an SSH module). Checked instead: channel layout and each part's receptive field measured with an impulse
(tests/plugins/test_ssh.py).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plugsurgeon.plugins._layers import ConvNormAct
from plugsurgeon.plugins.args import PluginArgs
from plugsurgeon.plugins.registry import register_plugin, site_channels


def split_channels(channels: int) -> tuple[int, int, int]:
    """Widths of the 3x3, 5x5 and 7x7 outputs: C/2, C/4 and the rest."""
    detect = channels // 2
    five = (channels - detect) // 2
    return detect, five, channels - detect - five


class SSHArgs(PluginArgs):
    batch_norm: bool = Field(False, description="BatchNorm after every conv (RetinaFace); the paper has none")


@register_plugin(
    "ssh",
    roles=("neck.level", "stage", "backbone"),
    mode="after",
    infer=site_channels,
    structural=("channels",),
    identity_at_init=False,
    paper="Najibi et al., SSH: Single Stage Headless Face Detector, ICCV 2017, arXiv:1708.03979",
    year=2017,
    summary="detection module: 3x3 conv (C/2) concatenated with a context module of effective 5x5 and 7x7 convs (C/4 each)",
    args=SSHArgs,
)
class SSHContext(nn.Module):
    def __init__(self, channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"SSH splits the channels four ways and needs at least 4, got {channels}")
        detect, five, seven = split_channels(channels)
        stem = channels // 2
        norm = nn.BatchNorm2d if batch_norm else None  # the paper's convs have biases and no norm
        self.detect = ConvNormAct(channels, detect, 3, norm_layer=norm, act_layer=None)
        self.stem = ConvNormAct(channels, stem, 3, norm_layer=norm, act_layer=None)
        self.context5 = ConvNormAct(stem, five, 3, norm_layer=norm, act_layer=None)
        self.context7_1 = ConvNormAct(stem, seven, 3, norm_layer=norm, act_layer=None)
        self.context7_2 = ConvNormAct(seven, seven, 3, norm_layer=norm, act_layer=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.relu(self.stem(x))
        five = self.context5(stem)
        seven = self.context7_2(self.relu(self.context7_1(stem)))
        return self.relu(torch.cat([self.detect(x), five, seven], dim=1))
