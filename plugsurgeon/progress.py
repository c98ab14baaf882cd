"""What a long call is doing now, for whoever asked to be told.

The core never prints: it names its steps here, and a caller that wants them (the CLI draws them
on stderr) installs a callback for the duration of its call with ``reporting``. Without one, a
step costs a context-variable lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Reporter = Callable[[str], None]

_reporter: ContextVar[Reporter | None] = ContextVar("plugsurgeon_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Reporter | None) -> Iterator[None]:
    """Send the steps of every plugsurgeon call made inside the block to ``callback``."""
    token = _reporter.set(callback)
    try:
        yield
    finally:
        _reporter.reset(token)


def step(message: str) -> None:
    """Announce the step that starts now (it lasts until the next one)."""
    callback = _reporter.get()
    if callback is not None:
        callback(message)
