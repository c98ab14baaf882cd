"""A mistake in ``--recipe`` (an unknown name, a missing file, YAML that does not parse or is not a
recipe's mapping) is reported before torch is imported: it took 12-25 s on a laptop, the time to load
torch and build the model, to say "unknown recipe 'cbma'"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every case in one fresh interpreter: each must fail (exit 1) with torch still not imported.
PROBE = """
import json, sys
from plugsurgeon.cli.app import run
seen = []
for args in json.loads(sys.argv[1]):
    code = run(args)
    seen.append([code, "torch" in sys.modules])
print(json.dumps(seen))
"""


def test_recipe_mistakes_are_reported_before_torch_loads(tmp_path):
    files = {
        "unparsable": "steps: [\n",
        "alias": "name: a\nsteps: &s [{plugin: se, at: residual.branch}]\nmore: *s\n",
        "list": "- plugin: se\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    specs = ["cbma", str(tmp_path / "missing.yaml"), *(str(tmp_path / f"{name}.yaml") for name in files)]
    cases = [[command, "resnet18", "--recipe", spec] for command in ("apply", "show") for spec in specs]
    cases.append(["apply", "resnet18", "--recipe", "se", "--recipe", "cbma"])  # the second of a chain too
    ran = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen == [[1, False]] * len(cases), list(zip(cases, seen, strict=False))
    messages = ran.stderr
    assert "unknown recipe 'cbma'; did you mean 'cbam'" in messages
    assert "missing.yaml' does not exist" in messages and "is not valid YAML at line 2" in messages
    assert "refuse anchors and aliases" in messages and "must be a mapping with 'name' and 'steps'" in messages
