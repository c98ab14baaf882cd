"""Run the random-CNN surgery properties (tests/test_property.py) over many seeds.

    python benchmarks/property_sweep.py --cases 2000 [--start 0]

Prints the outcome counts and every failing seed with its message; exits 1 if any property broke.
A failing seed is reproduced with `pytest tests/test_property.py -k` or `check_case(seed)`.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_property import check_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    for seed in range(args.start, args.start + args.cases):
        try:
            counts[check_case(seed)] += 1
        except Exception as error:  # noqa: BLE001 - a broken property or a raw exception: both are findings
            counts["failed"] += 1
            failures.append((seed, "".join(traceback.format_exception_only(type(error), error)).strip()))
    print(dict(counts))
    for seed, message in failures:
        print(f"seed {seed}: {message[:500]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
