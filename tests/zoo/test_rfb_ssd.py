"""RFB Net's placement on torchvision's SSD300-VGG16 (Liu et al. 2018, Fig. 5): RFB-s on conv4_3, RFB on fc7 and on the next
stride's map, identity at init, trained through torchvision's own detection loss, deployed."""

from __future__ import annotations

import pytest
import torch
import torchvision

import plugsurgeon as ps
from tests.nets import randomize_batchnorm

SHAPE = (1, 3, 300, 300)


@pytest.mark.slow
def test_rfb_goes_where_rfb_net_puts_it_on_ssd300() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None)).eval()
    result = ps.apply(model, "rfb", input_shape=SHAPE)
    placed = {(e.plugin, e.site) for e in result.report.edits}
    # torchvision's VGG16 features: index 22 is conv4_3's ReLU (stride 8), the map SSD's first head reads;
    # extra.0 ends with fc7 (conv6/conv7 as dilated 3x3 and 1x1 convs), stride 16; extra.1 is conv8 (stride 32).
    assert ("rfb_s", "backbone.features.22") in placed
    fc7 = [m for m in model.backbone.extra[0].modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert fc7.kernel_size == (1, 1) and fc7.out_channels == 1024
    assert sum(1 for plugin, site in placed if plugin == "rfb" and site.startswith("backbone.extra.0.")) == 1
    assert sum(1 for plugin, _site in placed if plugin == "rfb") == 2
    edited = result.model.eval()
    x = torch.randn(*SHAPE)
    with torch.no_grad():  # identity at init: every map the heads read is unchanged
        before, after = model.backbone(x), edited.backbone(x)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    edited.train()
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 160.0]]), "labels": torch.tensor([3])}]
    losses = edited([torch.rand(3, 300, 300)], targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None for n, p in edited.named_parameters() if ".rfb" in n)
    deployed = ps.deploy(edited.eval(), input_shape=SHAPE)
    assert deployed.report.verification is not None
