"""Latency of our catalog modules against the well-known implementations they equal (not a test; run by hand).

For every pair that tests/plugins/test_reference_equivalence.py shows to compute the same function (ours
and torchvision's SqueezeExcitation, and timm's SEModule, EcaModule, CbamModule, GlobalContext,
SelectiveKernel, SplitAttn, BlurPool2d, CoordAttn, NonLocalAttn, configured to match), on the same input
with the same weights (checked equal before timing):
  - forward: eval mode under torch.inference_mode(),
  - forward + backward: train mode, the input requiring grad (as an activation inside a network does),
    backward of a fixed random output gradient; gradients reset outside the timed region.
Ours and the reference run alternately, round by round, their order swapped every round, so drift
(thermal, other load on the machine) hits both alike. Each latency is the median of --runs after --warmup
rounds; the ratio is the median over rounds of ours / reference timed back to back in the same round
(< 1: ours is faster), which drifting load on a shared machine disturbs less than a ratio of medians.

Shapes: channel-attention modules at ResNet-50's stage-2 and stage-4 block outputs (8x256x56x56,
8x1024x14x14); the conv replacements (sk, splat) at the 3x3 convs of stages 3 and 4 (8x128x28x28,
8x256x14x14); non-local (which builds an HW x HW matrix) at 8x1024x14x14 only. SK replaces a 3x3 conv with
32 groups (SKNet-50's ResNeXt base; timm has one ``groups`` for both paths), split attention a dense one
(ResNeSt-50, cardinality 1); BlurPool uses filter size 3 (our default 4 is padded differently by timm).

    python benchmarks/reference_latency.py [--threads 2] [--runs 15] [--warmup 3] [--only se,cbam] [--json]

Needs timm for all rows but the torchvision one (pip install 'plugsurgeon[timm]').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Large tensors on transparent huge pages: each 100 MB activation otherwise costs ~25k page faults per
# allocation, whose price varies a lot on a VM and made one side of a pair look up to 2x slower at random.
# It applies to ours and the reference alike; THP_MEM_ALLOC_ENABLE=0 in the environment turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the pair builders live with the tests

from tests.plugins import _reference_pairs as rp  # noqa: E402

ATTENTION_SHAPES = ((8, 256, 56, 56), (8, 1024, 14, 14))
CONV_SHAPES = ((8, 128, 28, 28), (8, 256, 14, 14))

# name, needs timm, pair builder from the input shape, shapes
PAIRS: list[tuple[str, bool, Callable[[tuple[int, ...]], rp.Pair], tuple[tuple[int, ...], ...]]] = [
    ("se", False, lambda s: rp.se_torchvision(s[1]), ATTENTION_SHAPES),
    ("se", True, lambda s: rp.se_timm(s[1]), ATTENTION_SHAPES),
    ("eca", True, lambda s: rp.eca_timm(s[1]), ATTENTION_SHAPES),
    ("cbam", True, lambda s: rp.cbam_timm(s[1]), ATTENTION_SHAPES),
    ("gc", True, lambda s: rp.gc_timm(s[1]), ATTENTION_SHAPES),
    ("coord_attention", True, lambda s: rp.coord_attention_timm(s[1]), ATTENTION_SHAPES),
    ("blurpool", True, lambda s: rp.blurpool_timm(s[1], 3), ATTENTION_SHAPES),
    ("nonlocal", True, lambda s: rp.nonlocal_timm(s[1]), ((8, 1024, 14, 14),)),
    ("sk", True, lambda s: rp.sk_timm(s[1], groups=32), CONV_SHAPES),
    ("splat", True, lambda s: rp.splat_timm(s[1]), CONV_SHAPES),
]


def _check_equal(pair: rp.Pair, x: torch.Tensor, x_ref: torch.Tensor) -> None:
    pair.ours.eval()
    pair.reference.eval()
    with torch.inference_mode():
        ours, ref = pair.ours(x), pair.reference(x_ref)
    scale = float(ref.abs().max())
    if float((ours - ref).abs().max()) > 1e-4 * max(scale, 1.0):
        raise AssertionError(f"{pair.name}: outputs differ before timing")


def _forward(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            module(x)

    return run


def _forward_backward(module: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[Callable[[], None], Callable[[], None]]:
    def reset() -> None:
        x.grad = None
        for p in module.parameters():
            p.grad = None

    def run() -> None:
        module(x).backward(grad)

    return reset, run


def _interleaved(ours: tuple[Callable, Callable], ref: tuple[Callable, Callable], warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """(reset, run) pairs; returns the timed runs of each, alternating which goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for j in order:
            reset, run = (ours, ref)[j]
            reset()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[j].append(elapsed)
    return times


def measure(pair: rp.Pair, shape: tuple[int, ...], warmup: int, runs: int) -> dict:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x_ref = pair.reference_input(x).contiguous()
    _check_equal(pair, x, x_ref)
    noop = lambda: None  # noqa: E731
    fwd = _interleaved((noop, _forward(pair.ours, x)), (noop, _forward(pair.reference, x_ref)), warmup, runs)

    pair.ours.train()
    pair.reference.train()
    with torch.no_grad():
        grad = torch.randn_like(pair.ours(x))
    # One input tensor for both where the reference takes ours unchanged: two copies of a large tensor can sit
    # in memory that reads at different speeds (seen on a VM), which would show up as a ratio.
    leaf = x.clone().requires_grad_(True)
    leaf_ref = leaf if x_ref is x else x_ref.clone().requires_grad_(True)
    bwd = _interleaved(_forward_backward(pair.ours, leaf, grad), _forward_backward(pair.reference, leaf_ref, grad), warmup, runs)
    result = {"pair": pair.name, "input": "x".join(map(str, shape))}
    for label, (t_ours, t_ref) in (("forward", fwd), ("forward_backward", bwd)):
        ratios = [o / r for o, r in zip(t_ours, t_ref, strict=True)]  # paired within a round: robust to drifting load
        result[label] = {"ours_ms": round(statistics.median(t_ours) * 1e3, 2),
                         "reference_ms": round(statistics.median(t_ref) * 1e3, 2),
                         "ratio": round(statistics.median(ratios), 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated plugin names (se,eca,...); default: all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = {n for n in args.only.split(",") if n}
    try:
        import timm  # noqa: F401
        have_timm = True
    except ImportError:
        have_timm = False

    results = []
    for name, needs_timm, build, shapes in PAIRS:
        if (only and name not in only) or (needs_timm and not have_timm):
            continue
        for shape in shapes:
            pair = build(shape)
            results.append(measure(pair, shape, args.warmup, args.runs))

    if args.json:
        header = {"torch": torch.__version__, "threads": args.threads, "thp_mem_alloc": os.environ["THP_MEM_ALLOC_ENABLE"], "runs": args.runs, "warmup": args.warmup}
        print(json.dumps({**header, "results": results}, indent=2))
        return
    thp = os.environ["THP_MEM_ALLOC_ENABLE"]
    print(f"torch {torch.__version__}, {args.threads} threads, THP_MEM_ALLOC_ENABLE={thp}, float32 CPU, median of {args.runs} runs after "
          f"{args.warmup} warm-up; ratio = median over rounds of ours / reference timed in the same round\n")
    print("| ours \\| reference | input | forward ms (ours / ref) | forward ratio | fwd+bwd ms (ours / ref) | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|")
    for r in results:
        f, b, label = r["forward"], r["forward_backward"], r["pair"].replace("|", "\\|")
        print(f"| {label} | {r['input']} | {f['ours_ms']:.1f} / {f['reference_ms']:.1f} | "
              f"x{f['ratio']:.2f} | {b['ours_ms']:.1f} / {b['reference_ms']:.1f} | x{b['ratio']:.2f} |")


if __name__ == "__main__":
    main()
