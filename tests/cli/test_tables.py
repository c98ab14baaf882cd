"""Tables fit 80 columns, on a terminal and piped, without splitting a word; FLOPs are labelled as
FLOPs with the MACs papers quote; a model that resizes its input says so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from plugsurgeon.cli import listings, render
from plugsurgeon.cli.app import run
from plugsurgeon.surgery.report import EditReport, SurgeryReport
from tests.nets import TinyResNet

ROOT = Path(__file__).resolve().parents[2]
BORDERS = re.compile(r"[│┃┏┓┗┛┡┩┣┫╇╈┳┻╋┼└┘┌┐├┤┬┴─━╭╮╰╯]")


def tokens(text: str) -> set[str]:
    return set(BORDERS.sub(" ", text).split())


def draw(paint, width: int, *, terminal: bool) -> str:
    """What ``paint()`` prints through render.console at ``width``, on a terminal or not."""
    console = Console(
        record=True,
        width=width,
        force_terminal=terminal,
        markup=False,
        emoji=False,
        file=open(os.devnull, "w"),
    )  # noqa: SIM115
    saved, render.console = render.console, console
    try:
        paint()
    finally:
        render.console = saved
        console.file.close()
    return console.export_text()


def check_fits(paint, width: int = 80) -> str:
    """Every line fits ``width``; every word is one a wide rendering has too (a split word is not)."""
    wide = tokens(draw(paint, 1000, terminal=False)) | tokens(draw(paint, 1000, terminal=True))
    for terminal in (False, True):
        text = draw(paint, width, terminal=terminal)
        too_long = [line for line in text.splitlines() if len(line) > width]
        assert not too_long, (terminal, too_long[:3])
        left_out = re.findall(r"\(([^()]*left out to fit[^()]*)\)", " ".join(text.split()))
        split = tokens(text) - wide - tokens(" ".join(f"({n})" for n in left_out))
        assert not split, (terminal, sorted(split)[:10])
    return draw(paint, width, terminal=False)


LONG = "backbone.body.layer4.0.downsample.0"


def report() -> SurgeryReport:
    edits = [
        EditReport(
            s,
            "acnet",
            "replace",
            "downsample.shortcut",
            f"{LONG}.{i}",
            f"{LONG}.{i}",
            2048,
            (25, 34),
            5,
            1_234_567,
            98_765_432,
        )
        for s, i in ((1, 0), (2, 1), (12, 2))
    ]
    return SurgeryReport(
        model="FasterRCNN",
        recipe="acnet with a long name",
        input_shape=(1, 3, 512, 512),
        traced=["backbone", "rpn.head"],
        untraced=[("", "FasterRCNN: data-dependent"), ("roi_heads", "RoIHeads: data-dependent")],
        edits=edits,
        notes=[
            f"step 1 (acnet) skipped '{LONG}.9': a conv subclass with its own forward cannot be reproduced by the replacement"
        ],
        params_before=41_755_286,
        params_after=45_459_000,
        flops_before=267_000_000_000,
        renamed_keys=["a.b"],
    )


def test_surgery_summary_fits_80_columns_and_labels_flops_and_macs():
    text = check_fits(lambda: render.surgery_summary(report(), dry_run=True))
    flat = " ".join(text.split())
    assert f"{LONG}.0" in text and "MACs left out to fit 80 columns" in flat
    assert re.search(r"FLOPs +267\.00G +267\.30G +\+296\.30M +2 x MACs", text)
    assert re.search(r"MACs +133\.50G +133\.65G +\+148\.15M +the \"FLOPs\" most papers quote", text)
    assert "FLOPs and MACs count the traced parts" in flat
    wide = draw(lambda: render.surgery_summary(report(), dry_run=True), 200, terminal=False)
    header = next(line for line in wide.splitlines() if line.lstrip().startswith("step"))
    assert (
        header.split()[-2:] == ["FLOPs", "MACs"] and "+49.38M" in wide
    )  # one edit: 98.77M FLOPs = 49.38M MACs
    assert "left out" not in wide


def test_sites_table_fits_80_columns():
    from plugsurgeon.sites.site import Site

    sites = [
        Site(
            "downsample.shortcut",
            f"{LONG}.{i}",
            "backbone",
            f"n{i}",
            "backbone.body",
            (),
            (1, 2048, 25, 34),
            1024,
            2048,
            32,
            stride=2,
            kernel=(1, 1),
        )
        for i in range(12)
    ]
    text = check_fits(
        lambda: render.sites_table(
            sites, "12 downsample sites in fasterrcnn_resnet50_fpn where {stages: [5]}"
        )
    )
    assert f"{LONG}.11" in text and "downsample.shortcut" in text


@pytest.mark.parametrize("name", [p["name"] for p in listings.plugins()])
def test_plugin_details_fit_80_columns(name):
    entry = listings.plugin(name)
    text = check_fits(lambda: render.plugin_details(entry))
    for argument in entry["args"]:
        assert f"{argument}:" in text


def test_catalog_and_recipe_listings_fit_80_columns():
    text = check_fits(lambda: render.plugins_table(listings.plugins()))
    assert "arXiv:1709.01507" in text and "summary left out to fit 80 columns" in " ".join(text.split())
    check_fits(lambda: render.recipes_table(listings.recipes()))
    wide = draw(lambda: render.plugins_table(listings.plugins()), 400, terminal=True)
    assert "┃" in wide and "left out" not in wide  # a terminal wide enough gets the boxed table, every column


def test_listing_commands_piped_at_80_columns():
    # Whole processes, stdout a pipe, COLUMNS=80: what `plugsurgeon plugins | less` shows.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    for args in (["plugins"], ["recipes"], ["plugins", "show", "splat"], ["--help"], ["sites", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", "from plugsurgeon.cli.app import main; main()", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) > 5 and max(len(line) for line in lines) <= 80, args


class Resizing(nn.Module):
    """Resizes its input in a forward fx cannot trace (it reads a value), as a detector's transform does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyResNet()

    def forward(self, x):
        if float(x.abs().sum()) >= 0:
            x = F.interpolate(x, size=(48, 48))
        return self.body(x)


def test_a_model_that_resizes_its_input_says_so(capsys):
    model = "tests.cli.test_tables:Resizing"
    note = "the model resizes its input: 1x3x32x32 reaches 'body' as 1x3x48x48"
    assert run(["sites", model, "--input-shape", "1,3,32,32", "--kind", "stage"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert note in out and "are at 48x48" in out
    assert run(["apply", model, "-r", "se", "--input-shape", "1,3,32,32", "--dry-run"]) == 0
    assert note in " ".join(capsys.readouterr().out.split())
    assert run(["sites", "tests.nets:TinyResNet", "--input-shape", "1,3,32,32"]) == 0
    assert "resizes" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_detector_says_its_transform_resized_the_input(capsys):
    assert (
        run(
            [
                "sites",
                "fasterrcnn_mobilenet_v3_large_320_fpn",
                "--input-shape",
                "1,3,64,64",
                "--kind",
                "backbone",
            ]
        )
        == 0
    )
    out = " ".join(capsys.readouterr().out.split())
    assert "1x3x64x64 reaches 'backbone' as 1x3x320x320" in out
