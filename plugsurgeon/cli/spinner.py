"""The progress spinner on stderr, which steps aside whenever the command writes to stdout.

On a terminal stdout and stderr share one screen, and a spinner is a line that is redrawn in place:
anything printed to stdout while it is drawn lands after its text, on its line ("tracing ResNet at
1x3x224x22454 sites"). So while the spinner runs, ``sys.stdout`` is a thin gate that erases the
spinner's line (stops it) before the first byte of each write goes out; the next step of the core
(``plugsurgeon.progress``) draws it again. Rich's own redirection of stdout is not used: it would send
the command's output to stderr, which breaks ``plugsurgeon sites m > file`` while stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner


class _Gate:
    """``sys.stdout`` while the spinner runs: every write first clears the spinner."""

    def __init__(self, stream: TextIO, clear: Callable[[], None]) -> None:
        self._stream = stream
        self._clear = clear

    def write(self, text: str) -> int:
        if text:
            self._clear()
        return self._stream.write(text)

    def writelines(self, lines) -> None:
        for text in lines:
            self.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def spinner(console: Console, first: str = "starting") -> Iterator[Callable[[str], None]]:
    """Draw a spinner on ``console`` (stderr) for the duration of the block; yields the function that
    names the current step (and draws the spinner again after stdout cleared it)."""
    shown = Spinner("dots", text=first)
    live = Live(shown, console=console, transient=True, refresh_per_second=12.5, redirect_stdout=False)

    def step(message: str) -> None:
        shown.update(text=message)
        live.start()  # draws it again if a write to stdout stopped it; nothing if it runs

    saved = sys.stdout
    sys.stdout = _Gate(saved, live.stop)  # a file-like gate, as rich's FileProxy is
    try:
        live.start()
        yield step
    finally:
        try:
            live.stop()
        finally:
            sys.stdout = saved
