"""The saved format records what was done; a rebuild that would put modules elsewhere, or build them
with other arguments, is refused, naming the difference and the versions that differ."""

from __future__ import annotations

import pytest
import torch

import plugsurgeon as ps
from tests.security.conftest import read_manifest, snapshot, write_manifest


def _edit(directory, change):
    data = read_manifest(directory)
    change(data["steps"][0]["edits"], data)
    write_manifest(directory, data)


def test_a_moved_module_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[0].update(path="layer1.0.se_x"))
    before = snapshot(edited_dir)
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(edited_dir, trust_source=True)
    message = refused.value.message
    assert "replaying it would not rebuild the saved model" in message
    assert "recorded but not planned now: se at 'layer1.0.bn2' as 'layer1.0.se_x' (step 1)" in message
    assert "planned now but not recorded: se at 'layer1.0.bn2' as 'layer1.0.se' (step 1)" in message
    assert "versions" in refused.value.hint
    assert snapshot(edited_dir) == before


def test_a_moved_site_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[0].update(site="layer1.0.conv2"))
    with pytest.raises(ps.ModelLoadError, match="recorded but not planned now: se at 'layer1.0.conv2'"):
        ps.load(edited_dir, trust_source=True)


def test_a_missing_edit_is_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits.pop())
    with pytest.raises(ps.ModelLoadError, match="planned now but not recorded: se at 'layer2.1.bn2'"):
        ps.load(edited_dir, trust_source=True)


def test_edits_record_every_argument_they_were_built_with(edited_dir):
    from plugsurgeon.store.saved import read_manifest as manifest_of

    args = {edit.args["reduction"] for edit in manifest_of(edited_dir).steps[0].edits}
    assert args == {16} and "min_hidden" in manifest_of(edited_dir).steps[0].edits[0].args  # defaults too


def test_replay_builds_with_the_recorded_arguments(edited_dir):
    """Not the recipe's (nor this version's defaults): other arguments build other modules, and the weights say so."""
    _edit(edited_dir, lambda edits, _: [edit["args"].update(reduction=2) for edit in edits])
    with pytest.raises(ps.ModelLoadError, match=r"do not fit the model rebuilt from the manifest: 'layer1\.0\.se\.fc1\.bias' has shape \(1,\) where the model has \(8,\)"):
        ps.load(edited_dir, trust_source=True)


def test_edits_of_one_step_with_different_arguments_are_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: edits[1]["args"].update(reduction=2))
    with pytest.raises(ps.ModelLoadError, match="the edits of recipe step 1 record different arguments"):
        ps.load(edited_dir, trust_source=True)


def test_arguments_the_plugin_does_not_take_are_refused(edited_dir):
    _edit(edited_dir, lambda edits, _: [edit["args"].update(payload="x") for edit in edits])
    with pytest.raises(ps.ModelLoadError, match="records a recipe that is not valid here: .*payload"):
        ps.load(edited_dir, trust_source=True)


def test_a_mismatch_names_the_versions_that_differ(edited_dir):
    def change(edits, data):
        edits[0]["path"] = "layer1.0.moved"
        data["versions"]["torchvision"] = "0.1.0"

    _edit(edited_dir, change)
    with pytest.raises(ps.ModelLoadError, match=r"it was written with torchvision 0\.1\.0 \(here \d"):
        ps.load(edited_dir, trust_source=True)


def test_other_library_versions_load_when_the_rebuild_matches(edited_dir):
    """The compatibility rule: torch/torchvision differences are fine when the structure is the same."""
    data = read_manifest(edited_dir)
    data["versions"].update(torch="2.3.0", torchvision="0.18.0")
    write_manifest(edited_dir, data)
    model = ps.load(edited_dir, trust_source=True)
    assert hasattr(model.layer2[1], "se")


def test_an_older_plugsurgeon_release_loads(edited_dir):
    data = read_manifest(edited_dir)
    data["versions"]["plugsurgeon"] = "0.0.1"
    write_manifest(edited_dir, data)
    ps.load(edited_dir, trust_source=True)


def test_deployed_models_round_trip(tmp_path):
    from tests.nets import TinyResNet, randomize_batchnorm

    model = randomize_batchnorm(TinyResNet()).eval()
    deployed = ps.deploy(model, input_shape=(1, 3, 32, 32)).model
    ps.save(deployed, tmp_path / "deployed", source="tests.nets:TinyResNet")
    loaded = ps.load(tmp_path / "deployed", trust_source=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=0)


def test_edits_from_a_step_the_recipe_does_not_have(edited_dir):
    _edit(edited_dir, lambda edits, _: [edit.update(step=2) for edit in edits])
    with pytest.raises(ps.ModelLoadError, match="edits come from recipe step 2, which the recorded recipe does not have"):
        ps.load(edited_dir, trust_source=True)
