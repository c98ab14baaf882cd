"""BatchNorms inside layers that torch.fx cannot trace (a padding computed with ``int()`` of the input size, as in
Hugging Face's MobileNet conv layers): folded where the layer's own run shows conv -> BN and nothing else reading
the conv's output, otherwise left with the reason (issue 17)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import plugsurgeon as ps


class Padded(nn.Module):
    """conv -> BN -> ReLU after a "same" padding computed in Python from the input's size; ``extra_user`` adds the
    conv's raw output to the result, ``pad_between`` pads between the conv and the BN."""

    def __init__(self, c_in: int, c_out: int, *, extra_user: bool = False, pad_between: bool = False) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(c_in, c_out, 3, stride=2, bias=False)
        self.normalization = nn.BatchNorm2d(c_out)
        self.activation = nn.ReLU()
        self.extra_user, self.pad_between = extra_user, pad_between

    def forward(self, x):
        pad = max(3 - int(x.shape[-1]) % 2, 0)  # int() of a size: fx cannot trace this forward
        y = self.convolution(F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)))
        out = self.activation(self.normalization(F.pad(y, (0, 0, 0, 0)) if self.pad_between else y))
        return out + y if self.extra_user else out


def model() -> nn.Module:
    net = nn.Sequential(Padded(3, 8), Padded(8, 8, extra_user=True), Padded(8, 8, pad_between=True), Padded(8, 16))
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
    return net.eval()


def test_a_batchnorm_inside_an_untraceable_layer_folds_only_where_its_run_proves_conv_then_bn():
    net = model()
    result = ps.deploy(net, input_shape=(1, 3, 64, 64))
    folded = {f.norm: f for f in result.report.folded}
    skipped = {s.path: s.reason for s in result.report.skipped}
    assert sorted(folded) == ["0.normalization", "3.normalization"]
    assert folded["0.normalization"].layer == "0.convolution" and folded["0.normalization"].inside == "0"
    assert "conv output has another user" in skipped["1.normalization"]
    assert "its input is computed in its own forward, not a conv" in skipped["2.normalization"]
    assert all(reason.startswith(f"inside '{path[0]}' (Padded; torch.fx cannot trace its forward") for path, reason in skipped.items())
    assert isinstance(result.model[0].normalization, nn.Identity) and isinstance(result.model[1].normalization, nn.BatchNorm2d)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(result.model(x), net(x), atol=1e-5, rtol=1e-4)


class Gated(nn.Module):
    """A forward that reads a value (fx cannot trace the model itself): ``first`` is called by no traced part."""

    def __init__(self) -> None:
        super().__init__()
        self.first = Padded(3, 8)
        self.rest = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))

    def forward(self, x):
        x = self.first(x)
        return self.rest(x) if float(x.mean()) > -1e9 else x


def test_a_fold_in_a_module_no_traced_part_calls_is_checked_on_that_module_alone():
    net = Gated()
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    net.eval()
    result = ps.deploy(net, input_shape=(1, 3, 32, 32))
    assert [p for p in result.report.traced] == ["rest"]
    assert sorted(f.norm for f in result.report.folded) == ["first.normalization", "rest.1"] and not result.report.skipped
    assert any("compared alone with its folded copy" in note and "first.normalization" in note for note in result.report.notes)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(result.model(x), net(x), atol=1e-5, rtol=1e-4)
