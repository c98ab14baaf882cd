"""Start-up time of the listing commands as whole processes, as ratios to `python -c "import torch"`
measured in the same run (not a test; run by hand).

Each command is one fresh `plugsurgeon ...` process (the installed console script) with stdout and
stderr captured, timed from spawn to exit, interleaved round by round with the reference
`python -c "import torch"` so that load on the machine hits them alike. Each time is the median of
--runs rounds after one warm-up round (which fills the OS file cache). The target: listings, --help
and --version take at most 0.3 x the reference, because they read data files and never import torch.

    python benchmarks/cli_startup.py [--runs 7] [--target 0.3] [--json]

Exits 1 if a command is slower than the target (or fails), so it can gate a change by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["--version"],
    ["--help"],
    ["plugins"],
    ["plugins", "show", "cbam"],
    ["recipes"],
    ["recipes", "show", "cbam"],
]
REFERENCE = "python -c 'import torch'"


def plugsurgeon() -> list[str]:
    """The console script next to this interpreter, as a user runs it; else the same entry point via -c."""
    script = Path(sys.executable).with_name("plugsurgeon")
    if script.is_file():
        return [str(script)]
    found = shutil.which("plugsurgeon")
    return [found] if found else [sys.executable, "-c", "from plugsurgeon.cli.app import main; main()"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--target", type=float, default=0.3, help="largest acceptable ratio to the reference")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    env = {**os.environ, "COLUMNS": "80"}
    runs: dict[str, list[str]] = {REFERENCE: [sys.executable, "-c", "import torch"]}
    runs.update({"plugsurgeon " + " ".join(c): [*plugsurgeon(), *c] for c in COMMANDS})
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.runs + 1):
        for name, argv in runs.items():
            seconds = timed(argv, env)
            if round_:  # round 0 warms the file cache
                times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    reference = median[REFERENCE]
    rows = [
        {"command": name, "median_s": round(median[name], 3), "ratio": round(median[name] / reference, 3)}
        for name in runs
    ]
    slow = [r for r in rows[1:] if r["ratio"] > args.target]
    if args.json:
        print(json.dumps({"runs": args.runs, "target": args.target, "rows": rows}, indent=2))
    else:
        print(
            f"median of {args.runs} runs each, interleaved; ratio to `{REFERENCE}` (target <= {args.target})"
        )
        print(f"{'command':<34} {'median':>8} {'ratio':>7}")
        for r in rows:
            mark = "" if r["command"] == REFERENCE else ("  over target" if r in slow else "  ok")
            print(f"{r['command']:<34} {r['median_s']:>7.3f}s {r['ratio']:>7.2f}{mark}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
