"""Hand-edited and hostile manifests: each is refused with one ModelLoadError naming the problem,
before anything is built where the manifest itself is at fault, and the directory is left as it was."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import plugsurgeon as ps
from tests.security.conftest import read_manifest, snapshot, write_manifest

DEPLOY = {"kind": "deploy", "input_shape": [1, 3, 32, 32]}
RECIPE = {"kind": "recipe", "recipe": {"name": "x", "steps": [{"plugin": "se", "at": "residual.branch"}]}, "input_shape": [1, 3, 32, 32],
          "edits": [{"step": 1, "plugin": "se", "mode": "after", "role": "residual.branch", "site": "a", "path": "a.se"}]}


def _set(key, value):
    def change(data):
        data[key] = value
    return change


def _drop(key):
    def change(data):
        del data[key]
    return change


def _step(**fields):
    def change(data):
        data["steps"] = [{**DEPLOY, **fields}] if "kind" not in fields or fields["kind"] == "deploy" else [{**RECIPE, **fields}]
    return change


TEXTS = {
    "not json": ("{not json", "not a valid plugsurgeon manifest: Expecting property name"),
    "a list": ("[]", "a JSON object was expected, not list"),
    "deep arrays": ("[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),
    "deep objects": ('{"a":' * 100_000 + "1" + "}" * 100_000, "nests deeper than 32 levels"),
    "huge": (" " * (3 << 20) + "{}", "larger than the 2097152 bytes a manifest may take"),
    "not utf-8": (b"\xff\xfe{}", "it is not UTF-8 text"),
    "NaN": ('{"format": "plugsurgeon/2", "source": "squeezenet1_1", "weights": NaN}', "NaN is not a number a manifest may hold"),
    "Infinity": ('{"format": "plugsurgeon/2", "source": "squeezenet1_1", "steps": [{"kind": "deploy", "input_shape": [1, 3, Infinity, 1]}]}',
                 "Infinity is not a number"),
    "duplicate key": ('{"format": "plugsurgeon/2", "source": "squeezenet1_1", "source": "sys:exit"}', "key 'source' appears twice"),
    "huge integer": ('{"format": "plugsurgeon/2", "source": "squeezenet1_1", "steps": [{"kind": "deploy", "input_shape": [' + "9" * 5000 + "]}]}",
                     "digits"),
}


@pytest.mark.parametrize("case", list(TEXTS))
def test_manifest_texts(plain_dir, case):
    text, problem = TEXTS[case]
    (plain_dir / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(plain_dir)
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(plain_dir)
    assert problem in refused.value.message
    assert snapshot(plain_dir) == before


CHANGES = {
    "no source": (_drop("source"), "field 'source': Field required"),
    "no format": (_drop("format"), "has no format, this plugsurgeon reads 'plugsurgeon/2'"),
    "format 1": (_set("format", "plugsurgeon/1"), "records recipes but not the edits they made"),
    "future format": (_set("format", "plugsurgeon/99"), "has format 'plugsurgeon/99', this plugsurgeon reads"),
    "source of wrong type": (_set("source", 5), "field 'source': Input should be a valid string"),
    "steps of wrong type": (_set("steps", "x"), "field 'steps': Input should be a valid list"),
    "unknown field": (_set("code", "import os"), "field 'code': unknown field"),
    "too many steps": (_set("steps", [DEPLOY] * 65), "field 'steps': List should have at most 64 items"),
    "unknown step kind": (_step(kind="exec"), "tag 'exec'"),
    "string sizes": (_step(input_shape=["1", "3", "32", "32"]), "field 'steps.0.deploy.input_shape.0': Input should be a valid integer"),
    "boolean sizes": (_step(input_shape=[True, 3, 32, 32]), "field 'steps.0.deploy.input_shape.0': Input should be a valid integer"),
    "huge size": (_step(input_shape=[1, 3, 10**8, 1]), "less than or equal to 65536"),
    "zero size": (_step(input_shape=[1, 3, 0, 32]), "greater than or equal to 1"),
    "short shape": (_step(input_shape=[1]), "at least 3 items"),
    "step without edits": (_step(kind="recipe", edits=[]), "field 'steps.0.recipe.edits': List should have at least 1 item"),
    "step missing its recipe": (lambda d: d.update(steps=[{k: v for k, v in RECIPE.items() if k != "recipe"}]), "field 'steps.0.recipe.recipe': Field required"),
    "edit of unknown mode": (_step(kind="recipe", edits=[{**RECIPE["edits"][0], "mode": "exec"}]), "field 'steps.0.recipe.edits.0.mode'"),
    "edit with extra field": (_step(kind="recipe", edits=[{**RECIPE["edits"][0], "code": "x"}]), "field 'steps.0.recipe.edits.0.code': unknown field"),
    "long weights name": (_set("weights", "w" * 300), "field 'weights': String should have at most 255 characters"),
    "many versions": (_set("versions", {f"v{i}": "1" for i in range(20)}), "field 'versions': Dictionary should have at most 16 items"),
    "newer plugsurgeon": (_set("versions", {"plugsurgeon": "99.0.0"}), "was written by plugsurgeon 99.0.0, newer than this"),
    "invalid recipe": (_step(kind="recipe", recipe={"name": "x", "steps": [{"plugin": "no_such_plugin", "at": "conv"}]}),
                       "records a recipe that is not valid here"),
    "recipe of wrong shape": (_step(kind="recipe", recipe={"name": "x", "steps": "all"}), "records a recipe that is not valid here"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_manifest_fields(plain_dir, case):
    change, problem = CHANGES[case]
    data = read_manifest(plain_dir)
    change(data)
    write_manifest(plain_dir, data)
    before = snapshot(plain_dir)
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(plain_dir)
    assert problem in refused.value.message
    assert snapshot(plain_dir) == before


def _rewrite_weights(directory, change):
    state = load_file(directory / "weights.safetensors")
    change(state)
    save_file(state, directory / "weights.safetensors")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.update({"features.0.weight": torch.zeros(3, 3)}), "'features.0.weight' has shape (3, 3) where the model has (64, 3, 3, 3)"),
        (lambda s: s.pop("classifier.1.bias"), "missing 1 key(s) ['classifier.1.bias']"),
        (lambda s: s.update({"payload": torch.zeros(4)}), "1 unexpected key(s) ['payload']"),
        (lambda s: s.update({"features.0.weight": s["features.0.weight"].long()}), "'features.0.weight' is int64 where the model has float32"),
        (lambda s: s.update({"features.0.weight": s["features.0.weight"].to(torch.complex64)}), "is complex64 where the model has float32"),
    ],
    ids=["shape", "missing", "unexpected", "int64", "complex"],
)
def test_saved_weights_that_do_not_fit(plain_dir, change, problem):
    _rewrite_weights(plain_dir, change)
    with pytest.raises(ps.ModelLoadError) as refused:
        ps.load(plain_dir)
    assert "do not fit the model rebuilt from the manifest" in refused.value.message and problem in refused.value.message


@pytest.mark.parametrize(
    "content",
    [b"garbage that is not safetensors", b"\xff" * 8 + b"{}", b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"w": {"dtype": "F32", "shape": [1000000000], "data_offsets": [0, 4000000000]}}'[:16]],
    ids=["garbage", "header too large", "truncated header"],
)
def test_saved_weights_that_are_not_safetensors(plain_dir, content):
    (plain_dir / "weights.safetensors").write_bytes(content)
    with pytest.raises(ps.ModelLoadError, match="is not a valid safetensors file"):
        ps.load(plain_dir)


def test_safetensors_header_that_claims_more_than_the_file_holds(plain_dir):
    header = json.dumps({"features.0.weight": {"dtype": "F32", "shape": [64, 3, 3, 3], "data_offsets": [0, 64 * 27 * 4 * 1000]}}).encode()
    (plain_dir / "weights.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    with pytest.raises(ps.ModelLoadError, match="is not a valid safetensors file"):
        ps.load(plain_dir)
