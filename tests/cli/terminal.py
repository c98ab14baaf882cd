"""Run the real command line in a pseudo-terminal and read back the screen a user would see.

Piped output is clean by construction; what goes wrong on a terminal is how stdout and stderr meet on
one screen (a spinner redrawn in place over a line that a table then continues). The screen is
rebuilt from the bytes with the few controls rich and a shell use: carriage return, line feed, erase
line, cursor up/down/column, wrap at the last column; colours are ignored.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "from plugsurgeon.cli.app import main; main()"  # what the console script runs
_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
SPINNER = re.compile("[\u2800-\u28ff]")  # rich's "dots" spinner frames are braille cells


def run_in_terminal(*args: str, columns: int = 80, timeout: float = 120) -> tuple[int, str]:
    """The exit code and the raw text the terminal received, stdout and stderr both on it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "PLUGSURGEON_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-c", ENTRY, *args], stdin=follower, stdout=follower,
                               stderr=follower, env=env, cwd=ROOT, close_fds=True)
    os.close(follower)
    received = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the other end closed: the command is done
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=timeout)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    return code, received.decode("utf-8", "replace")


def screen(text: str, columns: int = 80) -> list[str]:
    """The lines left on the screen after ``text`` was written to it, trailing blanks dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0

    def at(r: int) -> list[str]:
        while len(lines) <= r:
            lines.append([])
        return lines[r]

    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            m = _CSI.match(text, i)
            if m:
                arg, command = m.groups()
                n = int(arg) if arg.isdigit() else None
                if command == "K":
                    line = at(row)
                    if n == 2:
                        line.clear()
                    elif not n:
                        del line[col:]
                    else:
                        line[:col + 1] = [" "] * min(col + 1, len(line))
                elif command == "A":
                    row = max(0, row - (n or 1))
                elif command == "B":
                    row += n or 1
                elif command == "G":
                    col = (n or 1) - 1
                elif command == "C":
                    col += n or 1
                elif command == "D":
                    col = max(0, col - (n or 1))
                i = m.end()
                continue
        elif ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " ":
            if col >= columns:
                row, col = row + 1, 0
            line = at(row)
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in lines]
