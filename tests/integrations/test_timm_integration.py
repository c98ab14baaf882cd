"""timm, first class: an edited architecture registered under a timm name is built by timm.create_model with
the base's pretrained weights (a local file here: nothing is downloaded), as a feature extractor, with the
base's data config, and trains with timm's optimizer factory and EMA. resnet18 at 64x64 keeps it fast.
"""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps

timm = pytest.importorskip("timm")
from timm.data import resolve_data_config  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

from plugsurgeon.integrations import timm as ps_timm  # noqa: E402

SHAPE = (1, 3, 64, 64)
NAME = "pstest_resnet18_cbam"
BLOCKS = [f"layer{stage}.{block}" for stage in (1, 2, 3, 4) for block in (0, 1)]  # resnet18's BasicBlocks


@pytest.fixture(scope="module")
def name():
    return ps_timm.register(NAME, base="resnet18", recipe="cbam", input_shape=SHAPE, replace=True)


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """resnet18's weights with every tensor moved off its fresh init, so a match can only come from loading them."""
    base = timm.create_model("resnet18")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in base.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def plugin_paths(model):
    return sorted(n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] == "cbam")


def test_pretrained_loads_every_base_key_and_only_plugin_keys_are_new(name, base_file):
    path, base_state = base_file
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert plugin_paths(model) == [f"{b}.cbam" for b in BLOCKS]
    state = model.state_dict()
    for key, value in base_state.items():
        assert key in state, key
        assert torch.equal(state[key], value), key
    new = set(state) - set(base_state)
    assert new and all(key.split(".cbam.")[0] in BLOCKS for key in new), sorted(new)[:5]
    # The data config and every pretrained cfg field are the base's; the architecture names the edit.
    plain = timm.create_model("resnet18")
    assert resolve_data_config({}, model=model) == resolve_data_config({}, model=plain)
    assert model.pretrained_cfg["architecture"] == name and model.default_cfg is model.pretrained_cfg
    assert {k: v for k, v in model.pretrained_cfg.items() if k not in ("architecture", "file")} == \
        {k: v for k, v in plain.pretrained_cfg.items() if k != "architecture"}
    assert torch.isfinite(model.eval()(torch.randn(2, *SHAPE[1:]))).all()


def test_the_name_offers_the_bases_tags_and_kwargs_reach_the_base(name):
    assert timm.list_models(module="timm_models") >= [name] and timm.models.is_model_pretrained(f"{name}.a1_in1k")
    model = timm.create_model(f"{name}.a1_in1k", num_classes=10, in_chans=1, drop_rate=0.25, global_pool="max")
    assert model.pretrained_cfg["tag"] == "a1_in1k"
    assert (model.num_classes, model.conv1.in_channels, model.drop_rate) == (10, 1, 0.25)
    assert len(plugin_paths(model)) == len(BLOCKS)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    # The script-side resolution timm's train.py uses goes through the registered pretrained cfg.
    resolved = timm.create_model(**timm.models.resolve_model_input_args(name, {"img_size": 64}, num_classes=3))
    assert resolved.num_classes == 3 and len(plugin_paths(resolved)) == len(BLOCKS)


def test_features_only_is_timms_feature_network_with_the_edit_inside(name, base_file):
    path, base_state = base_file
    features = timm.create_model(name, features_only=True, out_indices=(1, 2, 3), pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert isinstance(features, timm.models.FeatureListNet)
    assert plugin_paths(features) == [f"{b}.cbam" for b in BLOCKS[:6]]  # layer4 is not built for out_indices up to 3
    state = features.state_dict()
    assert all(torch.equal(state[k], base_state[k]) for k in state if ".cbam." not in k)
    plain = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3))
    plain.load_state_dict({k: v for k, v in state.items() if ".cbam." not in k})
    assert features.feature_info.channels() == plain.feature_info.channels()
    with torch.no_grad():
        for key, value in state.items():
            if ".cbam." in key and value.is_floating_point():
                value.add_(torch.randn_like(value))
        x = torch.randn(2, *SHAPE[1:])
        edited, unedited = features.eval()(x), plain.eval()(x)
    assert [f.shape for f in edited] == [f.shape for f in unedited]
    assert not torch.allclose(edited[-1], unedited[-1])


def test_a_training_step_with_timms_optimizer_and_ema_trains_the_plugins(name):
    model = timm.create_model(name, num_classes=5, drop_rate=0.1)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-2, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.5)
    plugins = {k: v.detach().clone() for k, v in model.named_parameters() if ".cbam." in k}
    x, y = torch.randn(2, *SHAPE[1:]), torch.randint(0, 5, (2,))
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)
    model.train()
    for _ in range(2):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    changed = [k for k, v in model.named_parameters() if k in plugins and not torch.equal(v, plugins[k])]
    assert changed and len(changed) == len(plugins)
    assert plugin_paths(ema.module) == plugin_paths(model)
    ema_state, trained = ema.module.state_dict(), model.state_dict()
    assert any(not torch.equal(ema_state[k], plugins[k]) for k in plugins)  # the EMA follows the plugins too
    assert all(not torch.equal(ema_state[k], trained[k]) for k in plugins)
    assert ema.module.eval()(x).shape == (2, 5)


def test_an_edited_checkpoint_loads_through_checkpoint_path_and_pretrained_says_so(name, tmp_path):
    model = timm.create_model(name, num_classes=4)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.25)
    path = tmp_path / "edited.pth"
    torch.save(model.state_dict(), path)
    resumed = timm.create_model(name, num_classes=4, checkpoint_path=str(path))  # timm's --initial-checkpoint
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())
    # timm loads pretrained weights into the base: strictly when the head matches (num_classes=4 in the cfg),
    # and with a new head it only logs the tensors it left out; either way the plugins' are refused, not dropped.
    for cfg in (dict(file=str(path), num_classes=4), dict(file=str(path))):
        with pytest.raises(ps.PlugsurgeonError, match="timm's resnet18 does not have") as caught:
            timm.create_model(name, num_classes=4, pretrained=True, pretrained_cfg_overlay=cfg)
        assert ".cbam." in caught.value.message and "checkpoint_path=FILE" in caught.value.hint


def test_registering_refuses_what_would_go_wrong_later(name, tmp_path):
    with pytest.raises(ps.PlugsurgeonError, match="already registered") as caught:
        ps_timm.register(name, base="resnet18", recipe="se")
    assert "replace=True" in caught.value.hint
    with pytest.raises(ps.UnknownNameError, match="timm has no model 'resnet81'.*resnet18"):
        ps_timm.register("pstest_unknown_base", base="resnet81", recipe="cbam")
    with pytest.raises(ps.UnknownNameError, match="no pretrained tag 'a9_in1k'"):
        ps_timm.register("pstest_unknown_tag", base="resnet18.a9_in1k", recipe="cbam")
    with pytest.raises(ps.UnknownNameError, match="unknown recipe 'cbma'"):  # refused now, not at the first create_model
        ps_timm.register("pstest_unknown_recipe", base="resnet18", recipe="cbma")
    with pytest.raises(ps.RecipeError, match="does not exist"):
        ps_timm.register("pstest_missing_file", base="resnet18", recipe=tmp_path / "mine.yaml")
    assert not any(timm.models.is_model(n) for n in ("pstest_unknown_base", "pstest_unknown_recipe", "pstest_missing_file"))
    with pytest.raises(ps.PlugsurgeonError, match="one of timm's own"):
        ps_timm.register("resnet34", base="resnet18", recipe="cbam", replace=True)
    with pytest.raises(ps.PlugsurgeonError, match="its own base"):
        ps_timm.register("resnet18", base="resnet18", recipe="cbam")
    chained = ps_timm.register("pstest_resnet18_cbam_se", base=name, recipe="se", input_shape=SHAPE, replace=True)
    with pytest.raises(ps.PlugsurgeonError, match="built from itself"):
        ps_timm.register(name, base=chained, recipe="se", replace=True)
    with pytest.raises(ps.PlugsurgeonError, match="cannot be a timm model name"):
        ps_timm.register("resnet18.cbam", base="resnet18", recipe="cbam")


def test_replace_and_a_default_tag_and_a_recipe_that_renames_keys():
    replaced = ps_timm.register("pstest_resnet18_edit", base="resnet18.tv_in1k", recipe="se", input_shape=SHAPE)
    assert timm.models.get_pretrained_cfg(replaced).tag == "tv_in1k"
    ps_timm.register(replaced, base="resnet18", recipe="dwsep", input_shape=SHAPE, replace=True)
    assert timm.models.get_pretrained_cfg(replaced).tag == "a1_in1k"
    # dwsep replaces each 3x3 conv by a depthwise + pointwise pair: the conv's weights have no place left.
    with pytest.raises(ps.PlugsurgeonError, match="renames .* weights"):
        timm.create_model(replaced)
