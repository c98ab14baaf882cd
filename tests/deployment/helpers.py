"""Shared checks for the deploy tests."""

from __future__ import annotations

import torch
from torch import nn

from plugsurgeon.deployment.fold import is_norm


def assert_same_function(original: nn.Module, deployed: nn.Module, x: torch.Tensor, rel: float = 1e-5) -> None:
    """Within fp32 round-off: max |deployed - original| <= rel * max |original| (plus a tiny floor)."""
    original = original.eval()
    with torch.no_grad():
        expected, actual = original(x), deployed(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale + 1e-6)


def no_norms_left(model: nn.Module) -> bool:
    return not any(is_norm(m) for m in model.modules())


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(now[key], value), key


def types_by_path(model: nn.Module) -> dict[str, type]:
    return {path: type(m) for path, m in model.named_modules()}


def small_faster_rcnn() -> nn.Module:
    """A torchvision FasterRCNN (its transform, RPN, RoI heads and box selection) small enough for the default
    suite: a ResNet-18 FPN backbone with BatchNorm (what a backbone trained from scratch has, and deploy folds),
    128-pixel images, 50 proposals and 20 detections per image. Random weights; BatchNorm statistics randomised,
    so folding them is not the identity."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from tests.nets import randomize_batchnorm

    with torch.random.fork_rng():  # the same weights every time, without touching the caller's random state
        torch.manual_seed(0)
        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d)
        model = FasterRCNN(backbone, num_classes=5, min_size=128, max_size=128, rpn_pre_nms_top_n_test=100,
                           rpn_post_nms_top_n_test=50, box_detections_per_img=20)
    return randomize_batchnorm(model).eval()


class TinyDetector(nn.Module):
    """torchvision's detection output (one dict of boxes, scores, labels per image) from a conv and a
    data-dependent selection (the cells scoring over 0.5), small enough to export in a second.

    ``traced_shift`` moves the boxes only while the model is traced, as a mistranslating exporter
    would; ``fixed_count`` selects the top-k with k read as a Python int, which a traced export
    records as a constant (the count of the input it was exported with).
    """

    def __init__(self, traced_shift: float = 0.0, fixed_count: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.head = nn.Conv2d(3, 3, 3, padding=1)  # a score logit and the box's half width and height, per cell
        self.traced_shift = traced_shift
        self.fixed_count = fixed_count

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = self.head(images)
        height, width = images.shape[-2:]
        ys = torch.arange(height, dtype=images.dtype).repeat_interleave(width)
        xs = torch.arange(width, dtype=images.dtype).repeat(height)
        detections = []
        for cell in out:
            scores = cell[0].sigmoid().flatten()
            half_w, half_h = cell[1].exp().flatten(), cell[2].exp().flatten()
            boxes = torch.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], dim=1)
            if self.fixed_count:
                scores, order = scores.topk(int((scores > 0.5).sum()))
            else:
                order = torch.nonzero(scores > 0.5).flatten()
                scores = scores[order]
            boxes = boxes[order]
            if torch.jit.is_tracing():
                boxes = boxes + self.traced_shift
            labels = (order % 3 + 1).to(torch.int64)
            detections.append({"boxes": boxes, "labels": labels, "scores": scores})
        return detections
