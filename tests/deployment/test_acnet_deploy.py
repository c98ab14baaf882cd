"""ACNet models deploy to exactly the plain network with conv-BN folded, computing the same function.

The plain network is deployed (and verified against its unfused eval model) as the reference
structure, which is also the conv-BN folding check for resnet18 and resnet50.
"""

from __future__ import annotations

import copy

import pytest
import torch

import plugsurgeon as ps
from plugsurgeon.deployment.reparameterize import is_reparameterizable
from plugsurgeon.plugins.acnet import ACBlock
from plugsurgeon.surgery.record import get_provenance
from tests.deployment.helpers import (
    assert_same_function,
    assert_state_equal,
    no_norms_left,
    state_of,
    types_by_path,
)
from tests.nets import randomize_batchnorm

SHAPE = (1, 3, 64, 64)


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_acnet_resnet_deploys_to_the_plain_fused_network(arch):
    plain = randomize_batchnorm(ps.load_model(arch), seed=1)
    acnet = ps.apply(plain, "acnet", input_shape=SHAPE).model
    randomize_batchnorm(acnet, seed=2)  # the model's BNs and the ACBlocks' branch BNs (zero-init gamma otherwise)
    blocks = [m for m in acnet.modules() if isinstance(m, ACBlock)]
    assert blocks and all(float(b.ver_bn.weight.detach().abs().min()) > 0 for b in blocks)
    before, was_training = state_of(acnet), acnet.training

    result = ps.deploy(acnet, input_shape=SHAPE)
    deployed, report = result.model, result.report

    assert not any(isinstance(m, ACBlock) or is_reparameterizable(m) for m in deployed.modules())
    assert no_norms_left(deployed)
    fused_plain = ps.deploy(plain, input_shape=SHAPE).model
    assert no_norms_left(fused_plain)
    assert_same_function(copy.deepcopy(plain), fused_plain, torch.randn(2, *SHAPE[1:]))
    assert types_by_path(deployed) == types_by_path(fused_plain)
    assert {k: v.shape for k, v in deployed.state_dict().items()} == {k: v.shape for k, v in fused_plain.state_dict().items()}
    assert_same_function(copy.deepcopy(acnet), deployed, torch.randn(2, *SHAPE[1:]))

    assert len(report.reparameterized) == len(blocks) and {r.before for r in report.reparameterized} == {"ACBlock"}
    assert len(report.folded) == sum(1 for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert report.skipped == []
    assert report.eval_mode and not deployed.training and any("eval mode" in n for n in report.notes)
    assert report.verification.passed and report.verification.scope == "whole model"
    assert report.verification.max_rel_diff < 1e-5
    assert report.params_after < report.params_before and report.flops_after < report.flops_before
    assert get_provenance(deployed)["steps"][-1] == {"kind": "deploy", "input_shape": list(SHAPE)}

    # the caller's model is untouched: same blocks, same weights, same mode
    assert_state_equal(acnet, before)
    assert acnet.training == was_training and sum(isinstance(m, ACBlock) for m in acnet.modules()) == len(blocks)


def _reparameterizable_plugins():
    for name, spec in ps.catalog().items():
        if any(callable(getattr(cls, "reparameterize", None)) for cls in spec.classes):
            yield name


@pytest.mark.parametrize("name", list(_reparameterizable_plugins()))
def test_every_reparameterizable_plugin_deploys_to_the_plain_fused_network(name):
    """Registry-driven: ACNet, RepVGG and any later block with reparameterize(), through the one protocol."""
    from tests.nets import TinyResNet

    spec = ps.get_plugin(name)
    recipe = {"name": name, "steps": [{"plugin": name, "at": spec.roles[0], "where": dict(spec.suggested_where)}]}
    plain = randomize_batchnorm(TinyResNet(), seed=1)
    edited = randomize_batchnorm(ps.apply(plain, ps.Recipe(**recipe), input_shape=(1, 3, 32, 32)).model, seed=2)
    result = ps.deploy(edited, input_shape=(1, 3, 32, 32))
    assert result.report.reparameterized and not any(is_reparameterizable(m) for m in result.model.modules())
    assert no_norms_left(result.model)
    assert types_by_path(result.model) == types_by_path(ps.deploy(plain, input_shape=(1, 3, 32, 32), verify=False).model)
    assert_same_function(copy.deepcopy(edited), result.model, torch.randn(2, 3, 32, 32))
