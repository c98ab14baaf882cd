"""The command line in a real pseudo-terminal at 80 columns: the progress spinner (stderr) is erased
before anything is written to stdout, so no table or title is glued to it on the screen. Seen before
the fix: "tracing ResNet at 1x3x224x2241 downsample.pool sites", "building 16 editsstep  site ...",
"starting" over the first line of `plugins`."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("termios", reason="pseudo-terminals are POSIX")

from tests.cli.terminal import SPINNER, run_in_terminal, screen  # noqa: E402 - after the POSIX check
from tests.slow import slow_except

TINY = "tests.nets:TinyResNet"
SMALL = "1,3,32,32"
COMMANDS = {
    "sites": (("sites", TINY, "--input-shape", SMALL), r"\d+ sites in tests.nets:TinyResNet", "#  path"),
    "apply --dry-run": (("apply", TINY, "--recipe", "se", "--input-shape", SMALL, "--dry-run"),
                        "plan: recipe 'se' on TinyResNet", "step  site"),
    "plugins": (("plugins",), "plugin catalog", "name "),
}


@pytest.mark.parametrize("command", slow_except(COMMANDS, default=["apply --dry-run"]))
def test_the_spinner_is_erased_before_stdout_is_written(command):
    args, title, header = COMMANDS[command]
    code, received = run_in_terminal(*args)
    lines = screen(received)
    assert code == 0, "\n".join(lines)
    assert SPINNER.search(received), "the spinner was never drawn: this test would not see it glued"
    assert not any(SPINNER.search(line) for line in lines), "\n".join(lines)
    assert any(re.match(title, line) for line in lines), "\n".join(lines)  # at the start of its line
    assert any(line.lstrip().startswith(header) for line in lines), "\n".join(lines)
    assert not any(line.startswith(("starting", "tracing", "building", "running")) for line in lines), "\n".join(lines)


def test_the_screen_reader_applies_carriage_returns_and_erases():
    assert screen("\x1b[32m⠋\x1b[0m starting\r\x1b[2Ktitle\nab\rc\n\x1b[1Ax\x1b[K") == ["title", "x"]
    assert screen("abcdef", columns=4) == ["abcd", "ef"]
