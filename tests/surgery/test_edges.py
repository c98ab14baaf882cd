"""Multi-input plugins where their inputs meet: on the edges into the head or merge that reads them all.

A PAN neck builds P4 and P5 from P3, so ASFF cannot go at P3's output; the ASFF paper fuses the levels
where YOLOv3's head reads them, and that is where surgery puts it: the head reads the fused maps, the
neck's own layers keep reading the raw ones. SEB likewise goes on the lateral edge into a merge.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from tests.nets import randomize_batchnorm
from tests.slow import slow_except

os.environ.setdefault("YOLO_OFFLINE", "1")
SHAPE = (1, 3, 64, 64)


def _yolo(cfg: str) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return randomize_batchnorm(DetectionModel(cfg, verbose=False)).eval()


def _head_levels(cfg: str) -> list[int]:
    """The layers the YAML's head (its last layer) reads: its `from` indices (read from the YAML, not the model)."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    del yaml
    return list(yaml_model_load(cfg)["head"][-1][0])


def _off_identity(model: nn.Module) -> None:
    """Every inserted plugin made to change its input (ASFF's mix to the paper's output, SEB's conv random)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            owner = _plugin_of(name)
            if owner.startswith("asff") and name.endswith("gamma"):
                parameter.fill_(1.0)
            elif owner.startswith("seb") and "conv" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _plugin_of(parameter: str) -> str:
    """The inserted module a parameter belongs to ('asff_1'), or '' (plugins are named after themselves)."""
    return next((part for part in parameter.split(".") if part.startswith(("asff", "seb"))), "")


def _inputs_of(model: nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [model.get_submodule(p).register_forward_pre_hook(
        lambda _m, args, p=p: seen.__setitem__(p, [t.clone() for t in torch.utils._pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]))
        for p in paths]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("cfg", slow_except(["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml"], default=["yolov8n.yaml"]))
def test_asff_fuses_the_levels_where_the_head_reads_them(cfg: str) -> None:
    from ultralytics.nn.tasks import DetectionModel

    model = _yolo(cfg)
    x = torch.randn(*SHAPE)
    result = ps.apply(model, "asff", input_shape=SHAPE)
    edited = result.model.eval()
    assert isinstance(edited, DetectionModel)
    levels = _head_levels(cfg)
    # One ASFF per level the head reads, each at that level's output.
    assert sorted(int(e.site.split(".")[1]) for e in result.report.edits) == sorted(levels)
    head = f"model.{len(model.model) - 1}"
    with torch.no_grad():
        torch.testing.assert_close(edited(x)[0], model(x)[0], rtol=0, atol=0)  # identity at init
    _off_identity(edited)
    before, after = _inputs_of(model, [head, *(f"model.{i + 1}" for i in levels[:-1])], x), _inputs_of(
        edited, [head, *(f"model.{i + 1}" for i in levels[:-1])], x)
    # The head reads fused levels; the layers after each level inside the neck still read the raw map.
    assert any(not torch.equal(a, b) for a, b in zip(before[head], after[head], strict=True))
    for i in levels[:-1]:
        assert all(torch.equal(a, b) for a, b in zip(before[f"model.{i + 1}"], after[f"model.{i + 1}"], strict=True))
    # It trains (the fused maps reach the loss, so every ASFF gets a gradient) and deploys.
    _trains_and_deploys(edited, "asff", len(levels), x)


# Edge placement runs by default through asff on YOLOv8n (and SEB's merge through MAnet below).
@pytest.mark.parametrize("cfg", slow_except(["yolov8n.yaml", "yolo11n.yaml", "yolov5nu.yaml"], default=[]))
def test_seb_goes_on_the_lateral_edge_into_each_merge(cfg: str) -> None:
    model = _yolo(cfg)
    x = torch.randn(*SHAPE)
    result = ps.apply(model, "seb", input_shape=SHAPE)
    assert result.report.edits, "no merge took SEB"
    edited = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(edited(x)[0], model(x)[0], rtol=0, atol=0)  # identity at init
        _off_identity(edited)
        assert not torch.equal(edited(x)[0], model(x)[0])
    # The lateral's own next layer (in the backbone) still reads it raw: only the merge's edge changed.
    lateral = result.report.edits[0].site.split(".")
    following = f"model.{int(lateral[1]) + 1}"
    assert torch.equal(_inputs_of(model, [following], x)[following][0], _inputs_of(edited, [following], x)[following][0])
    _trains_and_deploys(edited, "seb", len(result.report.edits), x)


def _trains_and_deploys(edited: nn.Module, plugin: str, count: int, x: torch.Tensor) -> None:
    """A train-mode step reaches every inserted module's parameters; deploy keeps the function."""
    edited.train()
    outputs = edited(torch.randn(2, *x.shape[1:]))
    sum(o.float().mean() for o in torch.utils._pytree.tree_leaves(outputs) if isinstance(o, torch.Tensor)).backward()
    reached = {_plugin_of(n) for n, p in edited.named_parameters() if _plugin_of(n).startswith(plugin) and p.grad is not None
               and p.grad.abs().sum() > 0}
    assert len(reached) == count
    edited.eval()
    deployed = ps.deploy(edited, input_shape=tuple(x.shape))
    assert deployed.report.verification is not None and all(part.passed for part in deployed.report.verification.parts)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.model.modules())  # every BN folded, by us or by fuse()
    with torch.no_grad():
        torch.testing.assert_close(deployed.model(x)[0], edited(x)[0], rtol=1e-3, atol=1e-3)


def test_seb_at_manet_merges_behind_the_attention_gate() -> None:
    import segmentation_models_pytorch as smp

    model = randomize_batchnorm(smp.MAnet(encoder_name="resnet18", encoder_weights=None, encoder_depth=3,
                                          decoder_channels=(32, 16, 8))).eval()
    x = torch.randn(1, 3, 64, 64)
    result = ps.apply(model, "seb", input_shape=(1, 3, 64, 64))
    # One SEB per decoder block that merges a skip (MAnet's MFAB: upsample, gate, concatenate).
    assert sorted(e.module for e in result.report.edits) == [f"decoder.blocks.{i}.seb" for i in range(2)]
    with torch.no_grad():
        torch.testing.assert_close(result.model.eval()(x), model(x), rtol=0, atol=0)


def test_seb_at_linknet_merges_whose_block_checks_the_skips_channels() -> None:
    """smp's Linknet block adds its skip under ``if skip is not None and skip.shape[1] != 0``: the tracer
    takes that branch at the traced shape (with a guard), and SEB goes where the block gets its skip."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = randomize_batchnorm(smp.Linknet(encoder_name="resnet18", encoder_weights=None, encoder_depth=3,
                                            decoder_use_norm="batchnorm")).eval()
    x = torch.randn(1, 3, 32, 32)
    result = ps.apply(model, "seb", input_shape=(1, 3, 32, 32))
    # One SEB per decoder block that adds a skip (the last block gets none).
    assert sorted(e.module for e in result.report.edits) == [f"decoder.blocks.{i}.seb" for i in range(2)]
    edited = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(edited(x), model(x), rtol=0, atol=0)  # identity at init
        _off_identity(edited)
        assert not torch.equal(edited(x), model(x))
    # A training step at another batch size reaches both SEBs (the guards check channels, not the batch).
    edited.train()
    edited(torch.randn(2, 3, 32, 32)).mean().backward()
    reached = {n.split(".seb.")[0] for n, p in edited.named_parameters() if ".seb." in n and p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == {"decoder.blocks.0", "decoder.blocks.1"}
    edited.eval()
    deployed = ps.deploy(edited, input_shape=tuple(x.shape))
    assert deployed.report.verification is not None and all(part.passed for part in deployed.report.verification.parts)
    with torch.no_grad():
        torch.testing.assert_close(deployed.model(x), edited(x), rtol=1e-3, atol=1e-3)
