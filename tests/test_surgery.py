"""Plan, then apply: names stay, nothing changes on failure, plans are deterministic and reported."""

import copy

import pytest
import torch
from torch import nn

import plugsurgeon as ps
from plugsurgeon.plugins import registry
from tests.nets import SharedConvNet, TinyFPN, TinyResNet, ToFloat64, TrainOnlyFailure, randomize_batchnorm

SHAPE = (1, 3, 64, 64)


def recipe(*steps):
    return ps.Recipe(name="test", steps=[ps.Step(**s) for s in steps])


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def assert_same(model, snap):
    state, types = snap
    assert [type(m) for m in model.modules()] == types
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_names_stay_and_vanilla_checkpoints_load():
    model = TinyResNet()
    result = ps.apply(model, recipe({"plugin": "cbam", "at": "residual.branch"}, {"plugin": "acnet", "at": "conv3x3"}), input_shape=SHAPE)
    edited = result.model
    missing, unexpected = edited.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(".cbam." in k or ".ver" in k or ".hor" in k for k in missing)
    assert result.report.renamed_keys == []
    assert [e.module for e in result.report.edits][:2] == ["layer1.0.cbam", "layer1.1.cbam"]
    assert type(edited) is TinyResNet  # untouched modules keep their exact class
    block = edited.layer1[0]
    assert isinstance(block, type(model.layer1[0])) and type(block).__name__ == type(model.layer1[0]).__name__
    assert ps.edited_source(block) is not None and ps.edited_source(edited.layer1) is None


def test_input_model_untouched_and_inplace_edits():
    model = randomize_batchnorm(TinyResNet())
    snap = snapshot(model)
    ps.apply(model, recipe({"plugin": "se", "at": "residual"}), input_shape=SHAPE)
    assert_same(model, snap)
    result = ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE, inplace=True)
    assert result.model is model
    assert isinstance(model.layer1[0].se, nn.Module)


def test_dry_run_changes_nothing_and_reports_costs():
    model = TinyResNet()
    snap = snapshot(model)
    result = ps.apply(model, recipe({"plugin": "cbam", "at": "residual.branch"}), input_shape=SHAPE, dry_run=True)
    assert_same(model, snap)
    report = result.report
    assert not report.applied and len(report.edits) == 4
    assert all(e.params_added > 0 and e.flops_added > 0 for e in report.edits)
    assert report.params_after == report.params_before + report.params_added


@pytest.fixture
def exploding_plugin():
    @registry.register_plugin("explode_on_second", roles=("residual",), mode="after", infer=lambda s, m: {"channels": s.channels},
                              structural=("channels",), identity_at_init=True, paper="test, arXiv:0000.00000", year=2000, summary="test")
    class Explode(nn.Module):
        built = 0

        def __init__(self, channels):
            super().__init__()
            Explode.built += 1
            if Explode.built == 3:
                raise RuntimeError("boom")

        def forward(self, x):
            return x

    yield "explode_on_second"
    registry._REGISTRY.pop("explode_on_second")


@pytest.mark.parametrize("inplace", [False, True])
def test_failure_leaves_the_model_exactly_as_it_was(exploding_plugin, inplace):
    model = randomize_batchnorm(TinyResNet())
    snap = snapshot(model)
    with pytest.raises(ps.RecipeError, match="cannot build the plugin: boom"):
        ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}, {"plugin": exploding_plugin, "at": "residual.branch"}),
                 input_shape=SHAPE, inplace=inplace)
    assert_same(model, snap)


def test_failure_while_building_owners_leaves_model_untouched(monkeypatch):
    from plugsurgeon.surgery import commit as surgery  # where edits are built and proven

    model = TinyResNet()
    snap = snapshot(model)
    calls = {"n": 0}
    original = surgery.build_owner

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ps.PlugsurgeonError("simulated failure in the middle of apply")
        return original(*args, **kwargs)

    monkeypatch.setattr(surgery, "build_owner", flaky)
    with pytest.raises(ps.PlugsurgeonError, match="simulated"):
        ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE, inplace=True)
    assert_same(model, snap)


def test_steps_at_the_same_anchor_are_ordered_and_reported():
    result = ps.apply(TinyResNet(), recipe({"plugin": "se", "at": "residual.branch", "where": {"first": 1}},
                                           {"plugin": "cbam", "at": "residual.branch", "where": {"first": 1}}), input_shape=SHAPE)
    assert any("se (step 1) then cbam (step 2)" in note for note in result.report.notes)
    code = ps.edited_source(result.model.layer1[0])
    assert code.index("self.se(") < code.index("self.cbam(")


def test_two_replacements_of_one_module_conflict():
    with pytest.raises(ps.RecipeError, match="both replace 'layer1.0.conv1'"):
        ps.apply(TinyResNet(), recipe({"plugin": "acnet", "at": "conv3x3"}, {"plugin": "acnet", "at": "conv3x3", "where": {"first": 1, "include": ["layer1.*"]}}), input_shape=SHAPE)


def test_step_matching_nothing_is_an_error_unless_allowed():
    with pytest.raises(ps.SiteError, match="none of the 4 residual.branch sites passes"):
        ps.apply(TinyResNet(), recipe({"plugin": "se", "at": "residual.branch", "where": {"stages": [7]}}), input_shape=SHAPE)
    result = ps.apply(TinyResNet(), recipe({"plugin": "se", "at": "residual.branch", "where": {"stages": [7]}, "allow_empty": True},
                                           {"plugin": "se", "at": "backbone"}), input_shape=SHAPE)
    assert len(result.report.edits) == 1


def test_model_without_residuals_gets_a_clear_error():
    with pytest.raises(ps.SiteError, match="has no residual.branch sites"):
        ps.apply(ps.load_model("vit_b_16"), "cbam")


def test_shared_module_is_replaced_once_for_every_call():
    model = randomize_batchnorm(SharedConvNet()).eval()
    x = torch.randn(2, 3, 64, 64)
    result = ps.apply(model, recipe({"plugin": "acnet", "at": "conv"}), input_shape=SHAPE)
    assert [e.module for e in result.report.edits] == ["conv"]
    torch.testing.assert_close(result.model.eval()(x), model(x))


def test_insertion_into_a_module_that_runs_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TinyResNet().layer1[0]
            self.stem = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x):
            return self.block(self.block(self.stem(x)))

    with pytest.raises(ps.SiteError, match="runs 2 times"):
        ps.apply(Twice(), recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)


def test_replace_keeps_weights_and_function():
    model = randomize_batchnorm(TinyResNet()).eval()
    x = torch.randn(2, 3, 64, 64)
    result = ps.apply(model, "acnet", input_shape=SHAPE)
    assert torch.equal(result.model.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    torch.testing.assert_close(result.model.eval()(x), model(x))


def test_pyramid_model_keeps_dict_outputs():
    model = TinyFPN().eval()
    result = ps.apply(model, recipe({"plugin": "se", "at": "neck.level"}), input_shape=SHAPE)
    out = result.model.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["p3", "p4", "p5"]
    assert [e.module for e in result.report.edits] == ["se", "se_1", "se_2"]  # smooth convs are called from the root


def test_detection_model_keeps_its_class_and_api():
    model = ps.load_model("fasterrcnn_resnet50_fpn").eval()
    result = ps.apply(model, "cbam", input_shape=(1, 3, 128, 128))
    edited = result.model.eval()
    assert type(edited) is type(model)
    assert len(result.report.edits) == 16 and result.report.edits[0].module == "backbone.body.layer1.0.cbam"
    with torch.no_grad():
        out = edited([torch.rand(3, 120, 160)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    assert "backbone" in result.report.traced and result.report.untraced


def test_paper_parameter_counts_on_resnet50():
    model = ps.load_model("resnet50")
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    cbam = ps.apply(model, "cbam", dry_run=True).report
    se = ps.apply(model, "se", dry_run=True).report
    # CBAM paper Table 4: ResNet50 + CBAM 28.09M; SE paper Table 2: SE-ResNet-50 28.1M.
    assert round(cbam.params_after / 1e6, 2) == 28.09
    assert round(se.params_after / 1e6, 1) == 28.1


def test_copy_is_deep():
    model = TinyResNet()
    result = ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)
    assert result.model.stem[0].weight is not model.stem[0].weight
    assert copy.deepcopy(result.model) is not None


def test_owner_whose_forward_depends_on_the_mode_is_refused():
    class ModeDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.body = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            if self.training:  # an edited copy traced in one mode would lose the other
                x = x * 0.5
            return x + self.body(x)

    with pytest.raises(ps.SiteError, match="differs between train and eval mode"):
        ps.apply(ModeDependent(), recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)


def test_foreign_patterns_take_attention_in_the_block_that_holds_the_add():
    from tests.nets import ForeignPatternsNet

    model = randomize_batchnorm(ForeignPatternsNet()).eval()
    result = ps.apply(model, recipe({"plugin": "cbam", "at": "residual.branch"}), input_shape=(1, 3, 32, 32))
    # Into the bottleneck that holds the add (its conv block, with the shared activation, keeps its class).
    assert [e.module for e in result.report.edits] == ["blocks.0.cbam", "blocks.1.cbam"]
    assert type(result.model) is ForeignPatternsNet
    assert type(result.model.blocks[0].cv2).__name__ == "SharedActBlock"
    assert result.model.blocks[0].cv2.act is result.model.stem.act  # still one shared instance
    assert result.model(torch.randn(1, 3, 32, 32)).shape == (1, 8)


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_edit_that_breaks_the_model_is_refused_before_commit(monkeypatch, dry_run):
    from plugsurgeon.surgery import commit as surgery  # where edits are built and proven

    original = surgery.build_owner

    class FailsInTraining(nn.Module):  # an edited owner that runs in eval mode only
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            if self.training:
                raise RuntimeError("simulated broken edit")
            return self.inner(*args)

    monkeypatch.setattr(surgery, "build_owner", lambda *a, **k: FailsInTraining(original(*a, **k)))
    model = randomize_batchnorm(TinyResNet()).eval()
    snap = snapshot(model)
    with pytest.raises(ps.SiteError, match=r"the edit at 'layer1.0' \(site layer1.0.bn2\) breaks the model: .*train mode.*simulated"):
        ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE, inplace=True, dry_run=dry_run)
    assert_same(model, snap)
    assert not any(m.training for m in model.modules())


@pytest.fixture
def picky_plugin():
    @registry.register_plugin("picky", roles=("residual",), mode="after", infer=lambda s, m: {"channels": s.channels},
                              structural=("channels",), identity_at_init=True, paper="test, arXiv:0000.00000", year=2000, summary="test")
    class Picky(nn.Module):  # takes only 16-channel maps: a site it cannot take, as a conv subclass would be
        def __init__(self, channels):
            super().__init__()
            self.channels = channels

        def forward(self, x):
            return x if self.channels == 16 else x[:, :1]

    yield "picky"
    registry._REGISTRY.pop("picky")


def test_unfit_sites_refuse_by_default_and_are_skipped_when_asked(picky_plugin):
    with pytest.raises(ps.SiteError, match="layer2.0.bn2"):
        ps.apply(TinyResNet(), recipe({"plugin": picky_plugin, "at": "residual.branch"}), input_shape=SHAPE)
    result = ps.apply(TinyResNet(), recipe({"plugin": picky_plugin, "at": "residual.branch", "on_unfit": "skip"}), input_shape=SHAPE)
    assert [e.site for e in result.report.edits] == ["layer1.0.bn2", "layer1.1.bn2"]
    assert sum("skipped 'layer2." in note for note in result.report.notes) == 2


def test_modes_are_kept_new_modules_join_the_mode_of_their_place():
    model = TinyResNet().eval()
    model.layer1[0].bn1.train()  # a deliberately mixed model: every flag must survive
    flags = {name: m.training for name, m in model.named_modules()}
    result = ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}, {"plugin": "acnet", "at": "conv3x3"}), input_shape=SHAPE)
    edited = dict(result.model.named_modules())
    assert all(edited[name].training == flag for name, flag in flags.items() if name in edited and not name.endswith(("conv1", "conv2")))
    assert not any(m.training for name, m in edited.items() if ".se" in name or "acnet" in type(m).__name__.lower())


def test_an_instance_held_at_two_paths_is_edited_at_the_called_path_only():
    class TwoPaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.first = TinyResNet().layer1[0]
            self.second = self.first  # one instance under two names, each called once

        def forward(self, x, use_second: bool = False):
            return self.second(x) if use_second else self.first(self.stem(x))

    model = TwoPaths()
    result = ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)
    assert [e.module for e in result.report.edits] == ["first.se"]
    assert any("same module instance as ['second']" in note for note in result.report.notes)
    edited = result.model
    assert not hasattr(edited.second, "se") and edited.first.conv1 is edited.second.conv1  # weights stay shared


def test_unet_merges_take_seb_in_the_decoder_block_and_asff_is_refused_clearly():
    from tests.nets import TinyUNet

    model = randomize_batchnorm(TinyUNet()).eval()
    x = torch.randn(1, 3, 32, 32)
    # The skip arrives as an argument of the block that merges it: SEB goes there, identity at init.
    result = ps.apply(model, recipe({"plugin": "seb", "at": "neck.merge"}), input_shape=(1, 3, 32, 32))
    assert sorted(e.module for e in result.report.edits) == ["up.0.seb", "up.1.seb"]
    torch.testing.assert_close(result.model.eval()(x), model(x), rtol=0, atol=0)
    # ASFF would need later levels at an earlier one: refused at planning, with the reason.
    with pytest.raises(ps.SiteError, match="computes from this site itself"):
        ps.apply(model, recipe({"plugin": "asff", "at": "neck.level"}), input_shape=(1, 3, 32, 32), dry_run=True)


def test_callers_hooks_never_run_during_surgery_and_stay_registered():
    model = TinyResNet().eval()
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda m, i, o: seen.append(float(o.sum())))  # reads values
    model.register_forward_pre_hook(lambda m, i: seen.append("root"))
    ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}, {"plugin": "acnet", "at": "conv3x3"}), input_shape=SHAPE, inplace=True)
    # Only a hook carried onto a replacement runs, once, on zeros: the check calls it there (carried_hooks.py).
    assert seen == [0.0]
    seen.clear()
    model(torch.randn(1, 3, 32, 32))
    assert seen[0] == "root" and isinstance(seen[1], float)


def test_a_model_that_cannot_be_copied_is_refused_with_the_way_out():
    import threading

    model = TinyResNet()
    model.lock = threading.Lock()
    with pytest.raises(ps.PlugsurgeonError, match="inplace=True"):
        ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)
    result = ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE, inplace=True)
    assert result.report.applied


def test_an_input_too_large_to_look_at_is_refused_before_anything_runs():
    with pytest.raises(ps.PlugsurgeonError, match="elements"):
        ps.apply(TinyResNet(), recipe({"plugin": "se", "at": "residual.branch"}), input_shape=(1, 3, 100000, 100000), dry_run=True)


def test_frozen_batchnorm_stays_frozen_through_a_trace_in_parts():
    from tests.nets import UntraceableNet

    model = UntraceableNet().train()
    model.backbone.layer1[0].bn1.eval()  # frozen by the user
    ps.apply(model, recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE, dry_run=True)
    assert not model.backbone.layer1[0].bn1.training and model.backbone.layer1[0].bn2.training


def test_an_edited_module_keeps_the_plain_attributes_its_callers_read():
    class Layer(nn.Module):  # Ultralytics' model loop reads m.f and m.i of every layer it runs
        def __init__(self):
            super().__init__()
            self.block = TinyResNet().layer1[0]
            self.f, self.i, self.type = -1, 1, "Layer"

        def forward(self, x):
            return self.block(x) + x

    class Looping(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.layers = nn.ModuleList([Layer()])

        def forward(self, x):
            x = self.stem(x)
            for layer in self.layers:
                x = layer(x) if layer.f == -1 else x
            return x

    result = ps.apply(Looping(), recipe({"plugin": "se", "at": "residual.output"}), input_shape=SHAPE)
    edited = result.model.layers[0]
    assert isinstance(edited, Layer) and (edited.f, edited.i, edited.type) == (-1, 1, "Layer")
    copied = copy.deepcopy(result.model).layers[0]  # frameworks copy models (EMA, checkpoints): attributes stay
    assert isinstance(copied, Layer) and (copied.f, copied.i, copied.type) == (-1, 1, "Layer")


@pytest.mark.parametrize("plugin, at, where", [("se", "residual.branch", {}), ("acnet", "conv", {"kernel": 3}), ("blur", "downsample.unit", {})])
def test_a_copying_apply_shares_no_tensor_with_the_callers_model(plugin, at, where):
    # Planning reads the caller's model and the copy is made after it: every module the edit builds,
    # a replacement holding a conv's weights included, must come from the copy.
    model = TinyResNet()
    result = ps.apply(model, recipe({"plugin": plugin, "at": at, "where": where}), input_shape=SHAPE)
    assert result.report.edits
    callers = {t.data_ptr() for t in [*model.parameters(), *model.buffers()] if t.numel()}
    edited = [name for name, t in [*result.model.named_parameters(), *result.model.named_buffers()] if t.data_ptr() in callers]
    assert edited == []


def test_one_trace_serves_several_recipes_and_a_stale_one_is_refused(monkeypatch):
    from plugsurgeon.graph import check
    from plugsurgeon.surgery import plan as surgery  # where the model is traced

    model = TinyResNet()
    traced = ps.trace(model, SHAPE)
    fresh = {name: ps.apply(model, name, input_shape=SHAPE) for name in ("se", "acnet")}

    whole_runs = []
    real_run = check.run_outcome
    monkeypatch.setattr(surgery, "trace", lambda *a, **k: pytest.fail("traced again"))
    monkeypatch.setattr(check, "run_outcome",
                        lambda module, *a, **k: (whole_runs.append(module) if isinstance(module, TinyResNet) else None) or real_run(module, *a, **k))
    for name, expected in fresh.items():
        reused = ps.apply(model, name, traced=traced)
        assert [(e.plugin, e.site, e.module) for e in reused.report.edits] == [(e.plugin, e.site, e.module) for e in expected.report.edits]
        assert reused.model.state_dict().keys() == expected.model.state_dict().keys()
    # Both recipes are proven edit by edit (shapes kept in train and eval mode, owners traced alone as
    # inside the model): the model itself never runs again.
    assert whole_runs == []
    monkeypatch.undo()

    ps.apply(model, "se", inplace=True, traced=traced)
    with pytest.raises(ps.PlugsurgeonError, match="not of this TinyResNet as it is now"):
        ps.apply(model, "cbam", traced=traced)
    other = TinyResNet()
    with pytest.raises(ps.PlugsurgeonError, match="not of this"):
        ps.apply(other, "se", traced=ps.trace(model, SHAPE))
    with pytest.raises(ps.PlugsurgeonError, match="differs from the shape"):
        ps.apply(other, "se", traced=ps.trace(other, SHAPE), input_shape=(1, 3, 32, 32))


@pytest.fixture
def mode_breaking_plugins():
    """Plugins that keep the site's shape in eval mode (planning's own run) but not in train mode or
    not its dtype: the edit is not proven alone, and the whole-model check must refuse it."""

    for name, cls in (("train_fails", TrainOnlyFailure), ("doubles", ToFloat64)):
        registry.register_plugin(name, roles=("residual",), mode="after", infer=lambda s, m: {}, structural=(), identity_at_init=True,
                                 paper="test, arXiv:0000.00000", year=2000, summary="test")(cls)
    yield
    for name in ("train_fails", "doubles"):
        registry._REGISTRY.pop(name)


@pytest.mark.parametrize(("plugin", "reason"), [("train_fails", "fails in train mode.*simulated"), ("doubles", "output differs in structure")])
def test_an_edit_not_proven_alone_is_judged_by_running_the_whole_model(mode_breaking_plugins, plugin, reason):
    model = randomize_batchnorm(TinyResNet()).eval()
    snap = snapshot(model)
    with pytest.raises(ps.SiteError, match=f"breaks the model: .*{reason}"):
        ps.apply(model, recipe({"plugin": plugin, "at": "residual.branch"}), input_shape=SHAPE, inplace=True)
    assert_same(model, snap)


def test_an_owner_that_traces_otherwise_alone_sends_its_part_to_the_whole_model_check(monkeypatch):
    from plugsurgeon.graph import check
    from plugsurgeon.surgery import commit as surgery  # where edits are built and proven

    whole_runs = []
    real_run = check.run_outcome
    monkeypatch.setattr(check, "run_outcome",
                        lambda module, *a, **k: (whole_runs.append(module) if isinstance(module, TinyResNet) else None) or real_run(module, *a, **k))
    ps.apply(TinyResNet(), "se", input_shape=SHAPE)
    assert whole_runs == []
    monkeypatch.setattr(surgery, "own_statements", lambda gm: {})  # as if the block's own trace lost its statements
    ps.apply(TinyResNet(), "se", input_shape=SHAPE)
    assert len(whole_runs) == 3  # the original in train mode, the edited model in train and eval mode


def test_a_module_joins_the_dtype_of_the_map_it_reads():
    class HalfBlocks(nn.Module):  # bfloat16 blocks in a float model: a float SE there could not run
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.blocks = TinyResNet().layer1.to(torch.bfloat16)

        def forward(self, x):
            return self.blocks(self.stem(x).to(torch.bfloat16)).float()

    result = ps.apply(HalfBlocks(), recipe({"plugin": "se", "at": "residual.branch"}), input_shape=SHAPE)
    assert [e.module for e in result.report.edits] == ["blocks.0.se", "blocks.1.se"]
    assert {p.dtype for p in result.model.blocks[0].se.parameters()} == {torch.bfloat16}
    assert result.model(torch.randn(2, 3, 64, 64)).dtype == torch.float32
