"""STN: the identity theta reproduces the input exactly, the sampler agrees with
F.affine_grid + F.grid_sample (align_corners=False), hand-computed shifts and flips, the recipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import plugsurgeon as ps
from plugsurgeon.plugins.stn import SpatialTransformer, affine_sample

IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(4, 4), (5, 7), (25, 32), (112, 112)])
def test_identity_theta_reproduces_the_input_exactly(size, dtype):
    x = torch.randn(2, 3, *size, dtype=dtype)
    assert torch.equal(affine_sample(x, IDENTITY.to(dtype).expand(2, 2, 3)), x)


def test_module_is_the_identity_at_init():
    module = SpatialTransformer(16)
    x = torch.randn(2, 16, 20, 24)
    torch.testing.assert_close(module.transform(x), IDENTITY.expand(2, 2, 3), atol=0, rtol=0)
    assert torch.equal(module(x), x)


@pytest.mark.parametrize("size", [(4, 4), (9, 13), (32, 24)])
def test_sampler_matches_affine_grid_and_grid_sample(size):
    x = torch.randn(3, 4, *size, dtype=torch.float64)
    theta = IDENTITY.double() + 0.4 * torch.randn(3, 2, 3, dtype=torch.float64)
    reference = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(affine_sample(x, theta), reference, atol=1e-10, rtol=1e-10)


def test_hand_computed_shift_and_flip():
    x = torch.arange(1.0, 21.0).reshape(1, 1, 4, 5)
    # Source x = output x + one pixel (normalised width 2/W): each row moves left, zeros come in.
    shift = torch.tensor([[[1.0, 0.0, 2 / 5], [0.0, 1.0, 0.0]]])
    expected = torch.cat([x[..., 1:], torch.zeros(1, 1, 4, 1)], dim=-1)
    torch.testing.assert_close(affine_sample(x, shift), expected)
    # Half a pixel down: the average of each row and the next, the last row half of itself.
    half = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1 / 4]]])
    below = torch.cat([x[..., 1:, :], torch.zeros(1, 1, 1, 5)], dim=-2)
    torch.testing.assert_close(affine_sample(x, half), (x + below) / 2)
    flip = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert torch.equal(affine_sample(x, flip), x.flip(-1))
    # A 90 degree rotation of a square map: out[j, i] = x[i, W - 1 - j], a transpose and a flip of the rows.
    square = torch.arange(16.0).reshape(1, 1, 4, 4)
    rotate = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    torch.testing.assert_close(affine_sample(square, rotate), square.transpose(-1, -2).flip(-2))


def test_gradient_reaches_theta_and_the_input():
    module = SpatialTransformer(16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    module(x).square().sum().backward()
    assert module.theta.weight.grad.abs().sum() > 0 and module.theta.bias.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_recipe_puts_it_on_the_stem_and_changes_nothing_at_init():
    model = ps.load_model("resnet50").eval()
    result = ps.apply(model, "stn", input_shape=(1, 3, 224, 224))
    (edit,) = result.report.edits
    assert (edit.site, edit.module, edit.stage, edit.channels) == ("relu", "stn", 1, 64)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(result.model.eval()(x), model(x))
