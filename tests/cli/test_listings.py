"""Listings are data: the catalog file matches the registry, recipes are read as YAML, and the listing
commands (and --help, --version) never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plugsurgeon.cli.app import app
from plugsurgeon.plugins import catalog

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_catalog_file_is_what_the_registry_generates_now():
    problem = catalog.stale()
    assert problem is None, (
        f"{problem}: run `{catalog.REGENERATE}` and commit plugsurgeon/plugins/catalog.json"
    )


def test_catalog_entries_are_the_registry_declarations():
    import plugsurgeon as ps

    listed = {entry["name"]: entry for entry in catalog.load()}
    for name, spec in ps.catalog().items():
        if spec.factory.__module__.startswith("plugsurgeon.plugins."):
            assert listed[name] == json.loads(json.dumps(catalog.entry(spec))), name
    assert set(listed) <= set(ps.catalog())


def test_catalog_check_names_the_command_when_stale(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "catalog.json"
    entries = catalog.generate()
    stale.write_text(catalog.render([e for e in entries if e["name"] != "se"]))
    monkeypatch.setattr(catalog, "CATALOG_FILE", stale)
    assert catalog.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "not in the file: ['se']" in err and catalog.REGENERATE in err
    assert catalog.main(["--write"]) == 0 and catalog.main(["--check"]) == 0
    assert stale.read_text() == catalog.render(catalog.generate())


def test_plugins_listing_and_show_come_from_the_catalog_file():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == catalog.load()
    shown = invoke("plugins", "show", "eca", "--json")
    assert shown.exit_code == 0
    entry = json.loads(shown.stdout)
    assert entry["schema"]["properties"]["kernel_size"]["anyOf"][0]["maximum"] == 1023
    assert entry["args"]["kernel_size"]["range"] == "1 <= x <= 1023, odd"


def test_plugins_show_prints_types_defaults_ranges_roles_mode_identity_and_paper():
    result = invoke("plugins", "show", "se")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "mode: after",
        "roles: residual, stage, backbone, conv, neck.level",
        "identity at init: no",
        "paper: Hu et al., Squeeze-and-Excitation Networks",
        "reduction: int; default 16; range 1 <= x <= 65536",
        "min_hidden:",
        "at a site: at most the site's channels",
    ):
        assert text in out, text
    gated = invoke("plugins", "show", "acnet").stdout
    assert (
        "identity at init: yes" in gated and "typical where: kernel: 3" in gated and "mode: replace" in gated
    )


def test_recipes_listing_is_what_the_validated_recipes_say():
    import plugsurgeon as ps
    from plugsurgeon.cli import listings

    validated = ps.builtin_recipes()
    listed = listings.recipes()
    assert [r["name"] for r in listed] == sorted(validated)
    for recipe in listed:
        full = validated[recipe["name"]]
        assert (recipe["description"], recipe["paper"]) == (full.description, full.paper)
        assert [ps.Step(**step) for step in recipe["steps"]] == list(full.steps), recipe["name"]
    result = invoke("recipes", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == listed


def test_recipes_show_prints_only_the_yaml_ready_to_apply(tmp_path):
    import plugsurgeon as ps

    result = invoke("recipes", "show", "antialias")
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "recipes" / "antialias.yaml").read_text(encoding="utf-8")
    assert result.stderr == ""
    copied = tmp_path / "mine.yaml"
    copied.write_text(result.stdout.replace("name: antialias", "name: mine"))
    assert ps.load_recipe(copied).steps == ps.load_recipe("antialias").steps
    applied = invoke(
        "apply", "tests.nets:TinyResNet", "-r", copied, "--input-shape", "1,3,32,32", "--dry-run"
    )
    assert applied.exit_code == 0 and "recipe 'mine'" in applied.stdout


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (
            ("recipes", "show", "cbm"),
            "unknown recipe 'cbm'; did you mean 'cbam'",
            "`plugsurgeon recipes` lists",
        ),
        (("plugins", "show", "sse"), "unknown plugin 'sse'; did you mean", "`plugsurgeon plugins` lists"),
    ],
)
def test_unknown_names_are_one_message_and_exit_1(args, message, hint):
    result = invoke(*args)
    assert result.exit_code == 1 and message in result.stderr and hint in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_malformed_recipe_hint_names_the_show_command(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just a list\n")
    result = invoke("apply", "tests.nets:TinyResNet", "-r", path)
    assert (
        result.exit_code == 1
        and "plugsurgeon recipes show cbam" in result.stderr
        and "recipes/cbam.yaml" not in result.output
    )


def test_version_comes_from_the_package_metadata():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"plugsurgeon {metadata.version('plugsurgeon')}\n"


# Each command runs in one fresh interpreter, in turn, through the console script's own run(); after
# each, the probe records whether torch (or the plugin registry, which imports every plugin) was loaded.
LIGHT_COMMANDS = [
    ["--version"],
    ["--help"],
    [],
    ["plugins"],
    ["plugins", "--json"],
    ["plugins", "show", "cbam"],
    ["plugins", "show", "eca", "--json"],
    ["plugins", "show", "nope"],
    ["recipes"],
    ["recipes", "--json"],
    ["recipes", "show", "cbam"],
    ["recipes", "show", "nope"],
    ["sites", "--help"],
    ["show", "--help"],
    ["apply", "--help"],
    ["deploy", "--help"],
    ["plugins", "--help"],
    ["recipes", "show", "--help"],
]
PROBE = """
import contextlib, io, json, sys
from plugsurgeon.cli.app import run
heavy = ("torch", "torchvision", "plugsurgeon.plugins.registry", "plugsurgeon.surgery")
seen = {}
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run(args)
    seen[" ".join(args) or "(no arguments)"] = [code, [m for m in heavy if m in sys.modules]]
print(json.dumps(seen))
"""


def test_listing_commands_do_not_import_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(LIGHT_COMMANDS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    imported = {command: modules for command, (_code, modules) in seen.items() if modules}
    assert imported == {}, f"these commands imported heavy modules (the first one is the culprit): {imported}"
    codes = {command: code for command, (code, _modules) in seen.items()}
    assert codes.pop("plugins show nope") == 1 and codes.pop("recipes show nope") == 1
    assert set(codes.values()) == {0}, codes
    # The probe itself can fail: a command that does touch torch is seen.
    touched = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            json.dumps([["sites", "tests.nets:TinyResNet", "--input-shape", "1,3,32,32"]]),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert "torch" in json.loads(touched.stdout)["sites tests.nets:TinyResNet --input-shape 1,3,32,32"][1]
