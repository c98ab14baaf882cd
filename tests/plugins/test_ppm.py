"""Pyramid pooling: hand-computed bin averages (including uneven, overlapping bins), align-corners
bilinear upsampling, the input kept in the concatenation, channel sizes and the ResNet-50 count."""

from __future__ import annotations

import torch

import plugsurgeon as ps

PyramidPooling = ps.get_plugin("ppm").factory


def _selecting(level, channels, reduced):
    """Make a level's 1x1 conv copy its first ``reduced`` input channels (BN is ~identity in eval at init)."""
    with torch.no_grad():
        weight = torch.zeros(reduced, channels, 1, 1, dtype=level.conv[0].weight.dtype)
        weight[torch.arange(reduced), torch.arange(reduced)] = 1.0
        level.conv[0].weight.copy_(weight)
        level.conv[1].eps = 0.0
    return level


def _bin_edges(size, bins):
    # adaptive pooling: bin i covers [floor(i * size / bins), ceil((i + 1) * size / bins))
    return [((i * size) // bins, -((-(i + 1) * size) // bins)) for i in range(bins)]


def _hand_pool(x, bins):
    h, w = x.shape[-2:]
    return torch.stack([
        torch.stack([x[..., r0:r1, c0:c1].mean(dim=(-2, -1)) for c0, c1 in _bin_edges(w, bins)], dim=-1)
        for r0, r1 in _bin_edges(h, bins)
    ], dim=-2)


def _hand_upsample(p, h, w):
    """Bilinear with align_corners=True: output row i samples input row i * (b - 1) / (h - 1)."""
    b = p.shape[-1]
    out = torch.empty(*p.shape[:-2], h, w, dtype=p.dtype)
    for i in range(h):
        for j in range(w):
            y = i * (b - 1) / (h - 1) if b > 1 else 0.0
            x = j * (b - 1) / (w - 1) if b > 1 else 0.0
            y0, x0 = min(int(y), b - 1), min(int(x), b - 1)
            y1, x1 = min(y0 + 1, b - 1), min(x0 + 1, b - 1)
            dy, dx = y - y0, x - x0
            out[..., i, j] = ((1 - dy) * (1 - dx) * p[..., y0, x0] + (1 - dy) * dx * p[..., y0, x1]
                              + dy * (1 - dx) * p[..., y1, x0] + dy * dx * p[..., y1, x1])
    return out


def test_levels_average_into_their_bins_and_upsample_with_aligned_corners():
    ppm = PyramidPooling(16).double().eval()
    x = torch.rand(2, 16, 7, 6, dtype=torch.float64) + 0.1  # 7 rows: the 2-bin and 3-bin windows overlap
    assert [level.pool.output_size for level in ppm.levels] == [1, 2, 3, 6]
    for level, bins in zip(ppm.levels, (1, 2, 3, 6), strict=True):
        _selecting(level, 16, 4)
        pooled = _hand_pool(x[:, :4], bins)
        torch.testing.assert_close(level(x), _hand_upsample(pooled, 7, 6))
    # the 1-bin level is the global mean everywhere
    torch.testing.assert_close(ppm.levels[0](x), x[:, :4].mean(dim=(2, 3), keepdim=True).expand(-1, -1, 7, 6))


def test_input_comes_first_in_the_concatenation_and_the_output_is_back_to_c():
    ppm = PyramidPooling(16, kernel_size=1).double().eval()
    assert [level.conv[0].out_channels for level in ppm.levels] == [4, 4, 4, 4]  # C / N levels
    assert ppm.bottleneck[0].in_channels == 32 and ppm.bottleneck[0].out_channels == 16
    x = torch.rand(2, 16, 6, 6, dtype=torch.float64) + 0.1
    with torch.no_grad():
        weight = torch.zeros(16, 32, 1, 1, dtype=torch.float64)
        weight[torch.arange(16), torch.arange(16)] = 1.0
        ppm.bottleneck[0].weight.copy_(weight)
        ppm.bottleneck[1].eps = 0.0
        torch.testing.assert_close(ppm(x), x)


def test_default_bottleneck_is_3x3_and_keeps_the_shape():
    ppm = PyramidPooling(32).train()
    assert ppm.bottleneck[0].kernel_size == (3, 3)
    x = torch.randn(2, 32, 5, 5)
    y = ppm(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert all(p.grad is not None for p in ppm.parameters())


def test_parameter_count_on_a_resnet50_backbone_map():
    with torch.device("meta"):
        ppm = PyramidPooling(2048)
    c, r = 2048, 512
    expected = 4 * (c * r + 2 * r) + (9 * 2 * c * c + 2 * c)
    assert sum(p.numel() for p in ppm.parameters()) == expected == 79_699_968
