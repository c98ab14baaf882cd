"""Built-in pool recipes through the CLI on a model they cannot fully edit (issue 8, item 13).

GoogLeNet's strided max pools use ceil_mode, whose output size MaxBlurPool reproduces only for some
input sizes: the recipe must apply what fits, and the printed summary must say what it skipped.
"""

from __future__ import annotations

from typer.testing import CliRunner

from plugsurgeon.cli.app import app


def test_antialias_on_googlenet_applies_what_fits_and_lists_the_rest():
    result = CliRunner().invoke(app, ["apply", "googlenet", "--recipe", "antialias", "--input-shape", "1,3,64,64"])
    assert result.exit_code == 0, result.output
    assert "(1 edits, 3 sites skipped as unfit)" in result.output
    for path in ("maxpool1", "maxpool2", "maxpool3"):
        assert f"skipped '{path}'" in result.output
    assert "Traceback" not in result.output
