"""The error boundary's last resort: plain text on stderr, with no rich to import and nothing that can raise."""

from __future__ import annotations

import sys


def plain(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr closed or unencodable: nothing left to tell
        pass
