"""Inference latency after deploy, as ratios measured in one run (not a test; run by hand).

Compares, on the same input, with the same thread count, interleaved round by round:
  - ACNet-resnet50 after `ps.deploy` (ACBlocks reparameterized, BN folded),
  - plain resnet50 after `ps.deploy` (BN folded by this pass),
  - plain resnet50 after `torch.fx.experimental.optimization.fuse` (torch's reference conv-BN pass),
and, for context, the unfused eval-mode models. Each latency is the median of --runs forwards
after --warmup forwards; ratios are to the torch.fx-fused plain resnet50.

    python benchmarks/deploy_latency.py [--threads 2] [--input-shape 1,3,224,224] [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse as fx_fuse

import plugsurgeon as ps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # randomize_batchnorm lives with the tests


def build(shape: tuple[int, ...]) -> dict[str, torch.nn.Module]:
    from tests.nets import randomize_batchnorm

    plain = randomize_batchnorm(ps.load_model("resnet50"), seed=0).eval()
    acnet = randomize_batchnorm(ps.apply(plain, "acnet", input_shape=shape).model, seed=1).eval()
    return {
        "acnet-resnet50 deployed (ps.deploy)": ps.deploy(acnet, input_shape=shape).model,
        "resnet50 fused by ps.deploy": ps.deploy(plain, input_shape=shape).model,
        "resnet50 fused by torch.fx fuse": fx_fuse(copy.deepcopy(plain), inplace=False),
        "resnet50 unfused (eval)": plain,
        "acnet-resnet50 train-time blocks (eval)": acnet,
    }


def measure(models: dict[str, torch.nn.Module], x: torch.Tensor, warmup: int, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(runs):  # round-robin, so drift (thermal, other load) hits every model alike
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    torch.manual_seed(0)
    models = build(shape)
    x = torch.randn(shape)
    with torch.inference_mode():  # the plain variants compute one function, the ACNet variants another
        plain_out = [models[n](x) for n in ("resnet50 fused by ps.deploy", "resnet50 fused by torch.fx fuse", "resnet50 unfused (eval)")]
        acnet_out = [models[n](x) for n in ("acnet-resnet50 deployed (ps.deploy)", "acnet-resnet50 train-time blocks (eval)")]
    for outs in (plain_out, acnet_out):
        scale = float(outs[0].abs().max())
        for other in outs[1:]:
            assert float((other - outs[0]).abs().max()) <= 1e-4 * scale, "variants disagree"
    times = measure(models, x, args.warmup, args.runs)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["resnet50 fused by torch.fx fuse"]
    result = {
        "torch": torch.__version__, "threads": args.threads, "input_shape": list(shape), "runs": args.runs, "warmup": args.warmup,
        "median_ms": {k: round(v * 1e3, 3) for k, v in medians.items()},
        "ratio_to_fx_fused": {k: round(v / base, 3) for k, v in medians.items()},
        "min_ms": {k: round(min(t) * 1e3, 3) for k, t in times.items()},  # less sensitive to other load on the machine
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, input {args.input_shape}, median of {args.runs} runs after {args.warmup} warm-up")
    width = max(len(k) for k in medians)
    print(f"{'':<{width}}  {'median':>11}  {'ratio':>6}  {'min':>11}")
    for name, median in medians.items():
        print(f"{name:<{width}}  {median * 1e3:8.2f} ms  x{median / base:.3f}  {min(times[name]) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
