"""The CLI through typer's CliRunner and, for the entry point itself, a subprocess."""

import json
import pickle
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_plugins_and_recipes_listings():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"se", "cbam", "blurpool", "maxblurpool", "acnet"} <= names
    result = invoke("recipes", "--json")
    assert result.exit_code == 0 and "cbam" in {r["name"] for r in json.loads(result.stdout)}
    assert invoke("plugins").exit_code == 0 and invoke("recipes").exit_code == 0


def test_plugins_show_prints_each_arguments_schema():
    result = invoke("plugins", "show", "eca", "--json")
    assert result.exit_code == 0
    kernel = json.loads(result.stdout)["args"]["kernel_size"]
    assert (
        kernel["type"] == "int or null"
        and kernel["range"] == "1 <= x <= 1023, odd"
        and kernel["default"] is None
    )
    table = invoke("plugins", "show", "se")
    assert table.exit_code == 0 and "min_hidden" in table.stdout and "65536" in table.stdout
    unknown = invoke("plugins", "show", "sse")
    assert unknown.exit_code == 1 and "unknown plugin 'sse'; did you mean" in unknown.output


def test_sites_table_and_json():
    result = invoke("sites", "resnet18", "--kind", "residual.branch", "--json")
    assert result.exit_code == 0
    sites = json.loads(result.stdout)
    assert [s["path"] for s in sites][:2] == ["layer1.0.bn2", "layer1.1.bn2"]
    assert {"role", "channels", "spatial", "stage", "stride"} <= set(sites[0])
    table = invoke("sites", "resnet18", "--kind", "downsample")
    assert table.exit_code == 0 and "maxpool" in table.stdout


def test_apply_dry_run_then_save_and_load(tmp_path):
    import torch

    import plugsurgeon as ps

    dry = invoke("apply", "resnet18", "--recipe", "cbam", "--dry-run", "-o", str(tmp_path / "x"))
    assert dry.exit_code == 0 and "dry run" in dry.stdout and not (tmp_path / "x").exists()
    out = tmp_path / "out"
    result = invoke("apply", "resnet18", "--recipe", "cbam", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "(8 edits)" in result.stdout and (out / "manifest.json").exists()
    loaded = ps.load(out)
    assert loaded(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("apply", "resnet18", "--recipe", "cbamm"), "unknown recipe 'cbamm'"),
        (("apply", "resnet5", "--recipe", "cbam"), "unknown model 'resnet5'"),
        (("apply", "vit_b_16", "--recipe", "cbam"), "has no residual.branch sites"),
        (("apply", "resnet18", "--recipe", "cbam", "--input-shape", "1,3,x,4"), "--input-shape '1,3,x,4'"),
        (
            ("apply", "resnet18", "--recipe", "cbam", "--input-shape", "1,5,64,64"),
            "does not run on inputs of shape",
        ),
        (("sites", "resnet18", "--kind", "residul"), "unknown site role"),
        (("apply", "resnet18", "--recipe", "missing/recipe.yaml"), "does not exist"),
    ],
)
def test_user_errors_exit_1_with_one_message(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_malformed_recipe_file_names_field_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - plugin: se\n    at: residual\n    argz: {}\n")
    result = invoke("apply", "resnet18", "--recipe", str(path))
    assert result.exit_code == 1 and "argz" in result.output and "bad.yaml" in result.output


def test_hostile_weights_are_not_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    result = invoke("apply", "resnet18", "--recipe", "cbam", "--weights", str(path))
    assert result.exit_code == 1 and "was not unpickled" in result.output
    assert not marker.exists()


def test_entry_point_usage_errors_and_help_without_torch():
    usage = subprocess.run(
        [sys.executable, "-c", "from plugsurgeon.cli.app import main; main()", "apply"],
        capture_output=True,
        text=True,
    )
    assert usage.returncode == 1 and "Missing argument" in usage.stderr and "Traceback" not in usage.stderr
    probe = "import sys; sys.argv = ['plugsurgeon', '--help']\nfrom plugsurgeon.cli.app import main\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    helped = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.strip().endswith("False"), helped.stdout + helped.stderr
