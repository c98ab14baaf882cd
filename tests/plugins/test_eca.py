"""ECA: the adaptive kernel size of Eq. 12, a 1-D conv that runs across channels, and ECA-Net50's parameter count."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.plugins.eca import ECA, eca_kernel_size


@pytest.mark.parametrize(("channels", "kernel"), [(64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_kernel_size_follows_eq_12(channels: int, kernel: int):
    # log2(C)/2 + 1/2 -> nearest odd (ties up): 3.5 -> 3, 4 -> 5, 4.5 -> 5, 5 -> 5, 5.5 -> 5, 6 -> 7
    assert eca_kernel_size(channels) == kernel
    assert ECA(channels).conv.kernel_size == (kernel,)


def test_conv_runs_across_channels_not_space():
    module = ECA(16, kernel_size=3).eval()
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor([[[0.0, 0.0, 1.0]]]))  # out[c] = pooled[c + 1]
    x = torch.randn(2, 16, 5, 7)
    pooled = x.mean(dim=(2, 3))
    shifted = torch.cat([pooled[:, 1:], torch.zeros(2, 1)], dim=1)  # zero padding past the last channel
    expected = x * torch.sigmoid(shifted)[:, :, None, None]
    torch.testing.assert_close(module(x), expected)
    # One gate per channel: the ratio out / x is the same at every position.
    ratio = module(x) / x
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))


def test_no_bias_and_k_parameters():
    module = ECA(512)
    assert module.conv.bias is None
    assert sum(p.numel() for p in module.parameters()) == 5


def test_rejects_even_kernel():
    with pytest.raises(ValueError):
        ECA(64, kernel_size=4)


@pytest.fixture(scope="module")
def resnet50():
    return ps.load_model("resnet50")


def test_recipe_parameter_count_on_resnet50(resnet50):
    base = sum(p.numel() for p in resnet50.parameters())
    assert base == 25_557_032
    result = ps.apply(resnet50, ps.load_recipe("eca"), input_shape=(1, 3, 224, 224))
    assert len(result.report.edits) == 16
    # Eq. 12 on the bottleneck outputs: k = 5 (3 blocks), 5 (4), 5 (6), 7 (3) -> 86 parameters.
    assert sum(p.numel() for p in result.model.parameters()) - base == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7 == 86


def test_paper_kernel_sizes_give_the_papers_80_parameters(resnet50):
    # The released ECA-Net50 was trained with --ksize 3557 (k = 3, 5, 5, 7 per stage): 80 parameters,
    # the number the paper quotes.
    steps = [
        ps.Step(plugin="eca", at="residual.branch", where={"stages": [stage]}, args={"kernel_size": k})
        for stage, k in zip((2, 3, 4, 5), (3, 5, 5, 7), strict=True)
    ]
    result = ps.apply(resnet50, ps.Recipe(name="eca3557", steps=steps), input_shape=(1, 3, 224, 224))
    base = sum(p.numel() for p in resnet50.parameters())
    assert sum(p.numel() for p in result.model.parameters()) - base == 80
