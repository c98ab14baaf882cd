"""The zoo sweep (issue 7): apply a recipe to real third-party models and tabulate what happens.

For every model of the chosen zoos: build it with random weights, count its residual merges independently
(tests/zoo/counting.py: same-shape 4-D adds in an eager forward, narrowed by per-family hand rules), apply the
recipe with `ps.apply`, run the edited model in train and eval mode and compare its output structure with the
original's. Each model runs in a worker subprocess with a timeout. Writes a markdown table per zoo: applied /
refused (with the reason) / failed (raw exception) / broken (applied but does not run), sites found vs expected.

    python benchmarks/zoo_sweep.py --zoo timm --limit 40 --out zoo_timm.md
    python benchmarks/zoo_sweep.py --zoo all --jobs 2 --out zoo_all.md --json zoo_all.json
    python benchmarks/zoo_sweep.py --resample          # rewrite tests/zoo/timm_sample.txt from the installed timm

The core lives in tests/zoo/sweep.py (shared with the slow test tests/zoo/test_sweep_slow.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.zoo import sweep  # noqa: E402


def available_timm() -> set[str]:
    import timm

    return set(timm.list_models())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", choices=[*sweep.ZOOS, "all"], default="timm")
    parser.add_argument("--limit", type=int, default=None, help="first N models of each zoo (timm: of the sample)")
    parser.add_argument("--only", default="", help="comma-separated model names (overrides the lists)")
    parser.add_argument("--recipe", default="se")
    parser.add_argument("--size", type=int, default=224, help="input side (torchvision detectors: 320, SSD: fixed)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (each single-threaded)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--out", type=Path, default=None, help="markdown table (default: stdout)")
    parser.add_argument("--json", type=Path, default=None, help="also write every record as JSON")
    parser.add_argument("--resample", action="store_true", help="rewrite tests/zoo/timm_sample.txt and exit")
    args = parser.parse_args(argv)

    if args.resample:
        import timm

        names = sweep.select_timm_sample(160, log=lambda m: print(m, file=sys.stderr))
        sweep.SAMPLE_FILE.write_text(
            f"# timm models of the zoo sweep (tests/zoo/sweep.py): {len(names)} convolutional models, timm {timm.__version__} names.\n"
            "# Regenerate with: python benchmarks/zoo_sweep.py --resample (rule: select_timm_sample). "
            "A name missing from an older timm is skipped.\n" + "\n".join(names) + "\n")
        print(f"{len(names)} models, {len({sweep.timm_family(n) for n in names})} families -> {sweep.SAMPLE_FILE}")
        return 0

    zoos = sweep.ZOOS if args.zoo == "all" else (args.zoo,)
    tasks = []
    only = [n for n in args.only.split(",") if n]
    for zoo in zoos:
        names = sweep.models_for(zoo)
        if only and zoo == "torchvision":  # task/name: match the bare name too
            names = [n for n in names if n in only or n.split("/")[-1] in only]
        elif only:  # any name the zoo knows, in the sample or not
            names = [n for n in only if zoo != "timm" or n in available_timm()]
        tasks += [(zoo, n) for n in names[: args.limit]]
    start = time.perf_counter()
    done = 0

    def progress(record: sweep.Record) -> None:
        nonlocal done
        done += 1
        extra = f" ({record.reason})" if record.reason else ""
        print(f"[{done}/{len(tasks)}] {record.zoo} {record.name}: {record.status} {record.found}/{record.expected} "
              f"{record.seconds}s{extra}"[:240], file=sys.stderr, flush=True)

    records = sweep.sweep(tasks, recipe=args.recipe, size=args.size, jobs=args.jobs, timeout=args.timeout,
                          threads=args.threads, progress=progress)
    elapsed = time.perf_counter() - start
    title = (f"Zoo sweep: recipe `{args.recipe}`, input {args.size}x{args.size}, {len(records)} models, "
             f"{elapsed / 60:.1f} min with {args.jobs} job(s)")
    table = sweep.markdown(records, title=title)
    if args.out:
        args.out.write_text(table + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"count": r.count} for r in records], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
