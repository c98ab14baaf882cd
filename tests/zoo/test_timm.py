"""timm, a representative of each family that issue 7 found wrong (the full sample runs in
tests/zoo/test_sweep_slow.py and benchmarks/zoo_sweep.py): `se` on every residual block, the number of residual
sites checked against an independent count (tests/zoo/counting.py), and the edited model runs in train and eval
mode with the original output structure; a model without residual merges is refused, saying so.
"""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import expected_residuals
from tests.zoo.helpers import new_module_paths, run, structure

timm = pytest.importorskip("timm")

SHAPE = (1, 3, 128, 128)  # what ps.apply plans with: a user's batch of one
BATCH = (2, 3, 128, 128)  # what the edited and original models are run on: train-mode BatchNorm on a pooled (N,C,1,1) map (SK attention) needs N > 1
MODELS = [
    "resnet18d",           # plain residual: the baseline
    "ecaresnet26t",        # ECA gate: a (N,C,1,1) broadcast operand on the branch
    "cspresnet50",         # CSP: split + getitem around the blocks
    "cs3darknet_s",        # CSP3 darknet
    "convnext_atto_rms",   # channels-first RMSNorm2d, layer scale
    "convnextv2_atto",     # GRN adds inside the block (hand rule: one merge per block)
    "res2net50_26w_4s",    # hierarchical adds inside the block (hand rule: one merge per Bottle2neck)
    "ghostnetv2_100",      # DFC attention upsamples inside the block
    "dla46x_c",            # shortcut=None default argument in the block's forward
    "skresnet18",          # BatchNormAct2d reads self.training
    "repvgg_a0",           # multi-branch sum + identity BN (range rule)
    "ese_vovnet19b_dw",    # no residual merges at all: must be refused, saying so
    "hrnet_w18_small",     # multi-resolution fuse adds are not residual (hand rule)
    "tf_efficientnet_b0",  # Conv2dSame (dynamic same padding)
    "inception_next_atto", # split + cat token mixer
]


@pytest.mark.parametrize("name", slow_except(MODELS, default={
    "ecaresnet26t", "cs3darknet_s", "convnext_atto_rms", "dla46x_c", "repvgg_a0", "ese_vovnet19b_dw"}))
def test_se_applies_to_every_residual_block_or_is_refused_rightly(name):
    if name not in timm.list_models():
        pytest.skip(f"timm {timm.__version__} has no {name}")
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(SHAPE)
    expected = expected_residuals(name, model, x)
    try:
        result = ps.apply(model, "se", input_shape=SHAPE)
    except ps.PlugsurgeonError as error:
        assert expected.low == 0, f"refused, but {name} has {expected} residual merges ({expected.rule}): {error}"
        assert "has no residual.branch sites" in error.message, error
        return
    found = len(result.report.edits)
    assert found in expected, f"{found} residual sites, expected {expected} ({expected.rule})"
    assert len(new_module_paths(model, result.model)) == found
    batch = torch.randn(BATCH)
    for train in (False, True):
        assert structure(run(result.model, batch, train=train)) == structure(run(model, batch, train=train)), f"train={train}"
