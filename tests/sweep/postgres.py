"""A throwaway PostgreSQL server for the distributed sweep test: initdb in a temporary directory, trust auth, a free port.

`python -m tests.sweep.postgres start` prints `export PLUGSURGEON_TEST_POSTGRES=URL PLUGSURGEON_TEST_PGDATA=DIR` for a
shell to eval (.ci/run), `... stop` stops the server named by $PLUGSURGEON_TEST_PGDATA and removes its directory. The
test starts its own server the same way when the variable is not set. initdb refuses to run as root: as root, the
server runs as the unprivileged user `nobody` (runuser).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian's postgresql package
    return candidates[-1] if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "nobody", "--", *command]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start() -> tuple[str, Path]:
    """Start a server; returns (its URL, its data directory). Raises RuntimeError when PostgreSQL is not installed."""
    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed")
    root = Path(tempfile.mkdtemp(prefix="plugsurgeon-pg-"))
    os.chmod(root, 0o777)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]), **run)
    port = _free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]), **run)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", data


def stop(data: Path) -> None:
    pg_ctl = binary("pg_ctl")
    if pg_ctl is not None and data.exists():
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True)
    shutil.rmtree(data.parent, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of CI's server ($PLUGSURGEON_TEST_POSTGRES), or of one started for the block."""
    url = os.environ.get("PLUGSURGEON_TEST_POSTGRES")
    if url:
        yield url
        return
    url, data = start()
    try:
        yield url
    finally:
        stop(data)


if __name__ == "__main__":
    if sys.argv[1:] == ["start"]:
        url, data = start()
        print(f"export PLUGSURGEON_TEST_POSTGRES={url} PLUGSURGEON_TEST_PGDATA={data}")
    elif sys.argv[1:] == ["stop"]:
        if os.environ.get("PLUGSURGEON_TEST_PGDATA"):
            stop(Path(os.environ["PLUGSURGEON_TEST_PGDATA"]))
    else:
        sys.exit("usage: python -m tests.sweep.postgres start|stop")
