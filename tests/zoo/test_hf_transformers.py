"""Hugging Face transformers' vision CNNs, built from small configs (random weights, nothing downloaded), after a
training step with ``labels=`` as a user's model has had: ``se``/``cbam`` and ``deploy``.

Ground truth is independent of plugsurgeon: residual merges counted in an eager forward (tests/zoo/counting.py),
BatchNorms counted in the module tree, HF's own output classes and loss. Issue 17: once a forward with labels had
set ``config.problem_type``, ``labels`` became a required input of the trace and every apply/deploy refused; the
BatchNorms of HF's MobileNet conv layers (which pad from the input size with ``int()``, so fx cannot trace them)
were reported "not called in the traced forward" and left unfolded.

PPLCNet is left out: its classifier takes no ``labels`` (it returns ``BaseModelOutputWithNoAttention``).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.slow import slow_except
from tests.zoo.counting import count_adds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

SHAPE = (1, 3, 64, 64)
CONFIGS = {
    "ResNet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
    "ConvNext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "ConvNextV2": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2),
    "RegNet": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8),
    "MobileNetV1": dict(depth_multiplier=0.25, image_size=64),
    "MobileNetV2": dict(depth_multiplier=0.25, image_size=64),
    "Bit": dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_groups=4),
    "EfficientNet": dict(image_size=64, width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320),
    "HGNetV2": dict(embedding_size=16, depths=[1, 1], hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
                    stage_in_channels=[16, 32], stage_mid_channels=[8, 16], stage_out_channels=[32, 64],
                    stage_num_blocks=[1, 1], stage_downsample=[False, True], stage_downsample_strides=[2, 2],
                    stage_light_block=[False, True], stage_kernel_size=[3, 5], stage_numb_of_layers=[2, 2]),
    "TextNet": dict(stem_out_channels=16, hidden_sizes=[16, 16, 32, 32, 64], image_size=(64, 64),
                    conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]], [[3, 3]], [[3, 3]]], conv_layer_strides=[[1], [2], [2], [2]]),
    "PoolFormer": dict(hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1]),
    "SwiftFormer": dict(depths=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32]),
    "MobileViT": dict(hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], image_size=64, num_attention_heads=2),
}
# Convs whose BatchNorm legitimately stays, by what the model computes (read in transformers' modeling code):
# TextNet's identity branch normalises the block's input (a ReLU's output); SwiftFormer's linear blocks
# normalise the sum of the block's input and its local representation.
NOT_AFTER_A_CONV = {"TextNet": "its input is 'textnet.stem.activation' (ReLU), not a conv or linear layer",
                    "SwiftFormer": "its input is add(), not a conv or linear layer"}


def randomize_batchnorms(model: nn.Module) -> None:
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            if bn.weight is not None:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)


def trained(name: str) -> nn.Module:
    """The model after one SGD step on a batch with labels, as a user's model is: ``config.problem_type`` is set."""
    torch.manual_seed(0)
    config = getattr(transformers, f"{name}Config")(num_labels=3, **CONFIGS[name])
    model = getattr(transformers, f"{name}ForImageClassification")(config)
    randomize_batchnorms(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model(pixel_values=torch.randn(2, *SHAPE[1:]), labels=torch.tensor([0, 2])).loss.backward()
    optimizer.step()
    assert config.problem_type == "single_label_classification"
    return model


def batchnorms(model: nn.Module) -> list[str]:
    return [path for path, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize(("name", "recipe"), slow_except([(n, r) for n in CONFIGS for r in ("se", "cbam")], default={("ConvNext", "se")}))
def test_recipes_apply_after_a_training_step(name, recipe):
    model = trained(name)
    x, labels = torch.randn(2, *SHAPE[1:]), torch.tensor([1, 0])
    merges = count_adds(model, x[:1])
    if merges == 0:
        with pytest.raises(ps.PlugsurgeonError, match="has no residual.branch sites"):
            ps.apply(model, recipe, input_shape=SHAPE)
        return
    result = ps.apply(model, recipe, input_shape=SHAPE)
    # an upper bound: ConvNeXt V2's GRN and TextNet's re-parameterisable branches add same-shape maps too
    assert 1 <= len(result.report.edits) <= merges
    edited = result.model
    assert type(edited) is type(model) and edited.config.to_dict() == model.config.to_dict()
    out = edited(pixel_values=x, labels=labels)
    expected = model(pixel_values=x, labels=labels)
    assert type(out) is type(expected) and out.logits.shape == expected.logits.shape
    assert out.loss.ndim == 0 and out.loss.requires_grad
    out.loss.backward()
    plugin_grads = [p.grad for path, m in edited.named_modules() if path not in dict(model.named_modules())
                    for p in m.parameters()]
    assert plugin_grads and all(g is not None for g in plugin_grads)
    edited.eval()
    assert type(edited(x)) is type(expected) and edited(x, return_dict=False)[0].shape == expected.logits.shape


@pytest.mark.parametrize("name", slow_except(CONFIGS, default={"MobileNetV1"}))
def test_deploy_folds_every_batchnorm_or_names_why(name):
    model = trained(name)
    norms = batchnorms(model)
    # These tiny random-weight models carry fp32 round-off near deploy's default tolerance on their own
    # (MobileNetV1: its fp32 logits differ from its fp64 ones by 6.7e-5 at max |logit| 0.76, and by 2e-4 after
    # folding on one thread): verified at the tolerance this test asserts below.
    result = ps.deploy(model, input_shape=SHAPE, atol=1e-3, rtol=1e-3)
    report = result.report
    assert report.verification is not None and report.verification.passed
    folded = {f.norm for f in report.folded}
    skipped = {s.path: s.reason for s in report.skipped}
    assert sorted(folded | set(skipped)) == sorted(norms) and not folded & set(skipped)
    for path, reason in skipped.items():
        assert reason == NOT_AFTER_A_CONV.get(name), (path, reason)
    assert not batchnorms(result.model) or name in NOT_AFTER_A_CONV
    # the deployed model keeps HF's calling convention and computes what the eval-mode original does
    model.eval()
    x, labels = torch.randn(2, *SHAPE[1:]), torch.tensor([2, 1])
    with torch.no_grad():
        expected, actual = model(pixel_values=x, labels=labels), result.model(pixel_values=x, labels=labels)
    assert type(actual) is type(expected)
    # fp32 round-off through folded weights, a few 1e-4 relative over 20-50 layers
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-3, rtol=1e-3)
