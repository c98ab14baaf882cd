"""The pre-commit check: edited models run in both modes with the original output structure, and checking changes nothing."""

import torch
from torch import nn

from plugsurgeon.graph.check import compare, run_outcome
from tests.nets import TinyResNet, ToFloat64, TrainOnlyFailure, randomize_batchnorm


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_running_a_train_mode_check_changes_no_buffer_flag_or_attribute():
    model = randomize_batchnorm(TinyResNet()).eval()
    model.layer1[0].bn1.train()  # a mixed-mode model must keep every flag
    flags = [m.training for m in model.modules()]
    before = _state(model)
    outcome = run_outcome(model, (torch.empty(2, 3, 32, 32),), training=True)
    assert outcome.ran
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # num_batches_tracked included


def test_compare_finds_a_mode_that_breaks_and_a_changed_structure():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    x = (torch.empty(1, 3, 8, 8),)
    assert compare(nn.Identity(), nn.Identity(), x) is None
    assert "train mode" in compare(nn.Identity(), TrainOnlyFailure(), x)
    assert "structure" in compare(nn.Identity(), TupleOut(), x)
    # A mode where the original itself fails is not held against the edit.
    assert compare(TrainOnlyFailure(), nn.Identity(), x) is None


def test_carries_metadata_holds_only_for_modules_that_keep_shape_and_dtype_in_train_mode():
    from plugsurgeon.graph.check import carries_metadata

    class Halves(nn.Module):  # keeps the shape in eval mode only
        def forward(self, x):
            return x[:, : x.shape[1] // 2] if self.training else x

    class MixesTheBatch(nn.Module):
        def forward(self, x):
            return x.mean(0, keepdim=True).expand_as(x)

    same = [([(1, 8, 4, 4)], (1, 8, 4, 4))]
    assert carries_metadata(nn.BatchNorm2d(8), same, torch.float32)  # train-mode BatchNorm at the widened batch
    assert carries_metadata(MixesTheBatch(), same, torch.float32)  # still one map of the same shape
    assert not carries_metadata(TrainOnlyFailure(), same, torch.float32)
    assert not carries_metadata(Halves(), same, torch.float32)
    assert not carries_metadata(ToFloat64(), same, torch.float32)
    assert not carries_metadata(nn.Identity(), [([(1, 8)], (8,))], torch.float32)  # the batch does not run through
    assert carries_metadata(nn.Conv2d(8, 4, 3, stride=2, padding=1), [([(1, 8, 8, 8)], (1, 4, 4, 4))], torch.float32)
    assert not carries_metadata(nn.Conv2d(8, 4, 3, padding=1), [([(1, 8, 8, 8)], (1, 4, 4, 4))], torch.float32)
