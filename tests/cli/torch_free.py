"""Running CLI commands in one fresh interpreter, and seeing whether each had imported torch by its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PROBE = """
import json, sys
from plugsurgeon.cli.app import run
seen = []
for args in json.loads(sys.argv[1]):
    code = run(args)
    seen.append([code, "torch" in sys.modules])
print(json.dumps(seen))
"""


def write_recipes(folder: Path, texts: dict[str, str]) -> dict[str, str]:
    """Each text as ``folder/<name>.yaml``; the paths by name."""
    for name, text in texts.items():
        (folder / f"{name}.yaml").write_text(text)
    return {name: str(folder / f"{name}.yaml") for name in texts}


def run_cases(cases: list[list[str]], *, path: list[Path] = ()) -> tuple[list[list], subprocess.CompletedProcess]:
    """([exit code, torch imported] for each case, the run); ``path`` goes before the repository on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(ROOT)])}
    ran = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(cases)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout.strip().splitlines()[-1]), ran
