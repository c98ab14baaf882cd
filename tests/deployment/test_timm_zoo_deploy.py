"""Deploy across timm families (slow): every model verifies, every BatchNorm folds unless the reason is real.

Before third-party deploy methods and BatchNormAct2d were handled, 5 of these 30 failed to deploy and
16 kept every BatchNorm ("not called in the traced forward").
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.deployment.helpers import assert_same_function
from tests.nets import randomize_batchnorm

timm = pytest.importorskip("timm")

MODELS = """resnet18 resnet26 resnet18d seresnet18 ecaresnet26t skresnet18 efficientnet_b0 efficientnet_lite0 tf_efficientnet_b0
mobilenetv3_small_100 mobilenetv3_large_100 tf_mobilenetv3_small_100 mixnet_s fbnetc_100 mnasnet_small spnasnet_100 semnasnet_050
regnetx_002 regnety_002 ghostnet_100 ghostnetv3_050 repghostnet_050 repvgg_a0 mobileone_s0 lcnetv2_small lcnet_050
ese_vovnet19b_slim_dw dla34 densenet121 rexnet_100""".split()

# A BatchNorm after a concatenation (MixNet's mixed kernels, DenseNet's dense blocks) has no single conv to fold into.
REAL_REASONS = ("its input is cat()",)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_timm_model_deploys_and_folds_every_foldable_norm(name):
    model = randomize_batchnorm(timm.create_model(name, pretrained=False, num_classes=10))
    result = ps.deploy(model, input_shape=(1, 3, 64, 64))
    report = result.report
    assert report.verification.passed and report.left_alone == []
    wrong = [(s.path, s.reason) for s in report.skipped if not s.reason.startswith(REAL_REASONS)]
    assert wrong == []
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
    assert left == len(report.skipped)
    # deploy's own tolerance: with random BN statistics a deep net's outputs reach ~1e3 and fp32 round-off
    # through 50 layers reaches ~1.4e-5 of that (semnasnet_050)
    assert_same_function(copy.deepcopy(model), result.model, torch.randn(2, 3, 64, 64), rel=1e-4)
