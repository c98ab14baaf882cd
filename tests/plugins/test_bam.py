"""BAM: the residual (1 + sigmoid(Mc + Ms)) form, the broadcast of the two branches, the dilated
spatial branch, the placement at the ends of stages 1-3, and BAM-ResNet50's parameter count."""

from __future__ import annotations

import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins.bam import BAM


def _silence(module: BAM) -> BAM:
    """Zero the last layer before each branch's BatchNorm, so each branch outputs its BN's bias."""
    with torch.no_grad():
        module.channel[2].weight.zero_()
        module.channel[2].bias.zero_()
        module.spatial[-2].weight.zero_()
    return module.eval()


def test_one_plus_sigmoid_form():
    module = _silence(BAM(64))
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(module(x), 1.5 * x)  # Mc = Ms = 0: F * (1 + sigmoid(0))


def test_branches_broadcast_and_add_before_the_sigmoid():
    module = _silence(BAM(64))
    channel_bias = torch.linspace(-2, 2, 64)
    with torch.no_grad():
        module.channel[3].bias.copy_(channel_bias)  # Mc = per-channel constant
        module.spatial[-1].bias.fill_(0.7)  # Ms = 0.7 everywhere
    x = torch.randn(2, 64, 6, 5)
    gate = torch.sigmoid(channel_bias + 0.7)[None, :, None, None]
    torch.testing.assert_close(module(x), x * (1 + gate))


def test_matches_hand_computation():
    module = BAM(32, reduction=4)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(m.running_mean, -0.5, 0.5)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    module.eval()
    x = torch.randn(2, 32, 9, 9)
    fc1, _, fc2, bn_c = module.channel
    mc = bn_c(fc2(torch.relu(fc1(x.mean(dim=(2, 3))))))  # N, C
    ms = module.spatial(x)  # N, 1, H, W
    assert ms.shape == (2, 1, 9, 9)
    torch.testing.assert_close(module(x), x + x * torch.sigmoid(mc[:, :, None, None] + ms))


def test_spatial_branch_is_reduce_two_dilated_3x3_then_one_map():
    module = BAM(256)
    convs = [m for m in module.spatial if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (256, 16, (1, 1), (1, 1)),
        (16, 16, (3, 3), (4, 4)),
        (16, 16, (3, 3), (4, 4)),
        (16, 1, (1, 1), (1, 1)),
    ]
    assert isinstance(module.spatial[-1], nn.BatchNorm2d) and isinstance(module.channel[-1], nn.BatchNorm1d)
    # Two dilated 3x3 convs with d = 4 see offsets -8, -4, 0, 4, 8 along each axis (the 1x1s add none).
    probe = BAM(16, reduction=1).eval()
    x = torch.randn(1, 16, 21, 21, requires_grad=True)
    probe.spatial(x)[0, 0, 10, 10].backward()
    touched = x.grad.abs().sum(dim=1)[0] > 0
    assert touched.any(dim=1).nonzero().view(-1).tolist() == [2, 6, 10, 14, 18]
    assert touched.any(dim=0).nonzero().view(-1).tolist() == [2, 6, 10, 14, 18]


def test_recipe_places_three_modules_and_matches_the_paper_count():
    model = ps.load_model("resnet50")
    base = sum(p.numel() for p in model.parameters())
    result = ps.apply(model, ps.load_recipe("bam"), input_shape=(1, 3, 224, 224))
    assert [e.module for e in result.report.edits] == ["layer1.2.bam", "layer2.3.bam", "layer3.5.bam"]
    total = sum(p.numel() for p in result.model.parameters())
    assert total - base == 361_094
    # BAM paper, ImageNet table: ResNet50 + BAM 25.92M (ResNet50 25.56M).
    assert round(total / 1e6, 2) == 25.92
