"""What surgery costs, as ratios to references measured in the same process (issue 9).

Time: CPU seconds of ``ps.apply(model, recipe)`` over CPU seconds of ``torch.fx.symbolic_trace(model)``,
both warm (one untimed run first), median of ``--repeats``, one torch thread so that neither side
gains from the other core. Memory (``--memory``): peak resident memory while applying a recipe to
the largest torchvision classifier, in place and as a copy, over the model's own bytes; each in a
fresh subprocess so that peaks do not mix.

    python benchmarks/surgery_cost.py                      # resnet18..152 with cbam, a detector
    python benchmarks/surgery_cost.py --memory             # regnet_y_128gf (needs ~8 GB, minutes)
    python benchmarks/surgery_cost.py --profile resnet50   # where apply's time goes (cProfile)

Further columns: apply reusing one ``ps.trace`` of the model (``ps.apply(model, recipe, traced=t)``,
what trying several recipes on one model costs per recipe after the first); a dry run (the same plan
and checks, no copy and no real modules); and two floors, what no shape-aware copying surgery can go
below: one eval forward of the model on fake tensors, and ``copy.deepcopy`` of the model.

Targets (issue 9): apply <= 3x symbolic_trace, ratio within 20% from resnet18 to resnet152; peak
memory <= 1.15x the model's bytes in place, <= 2.15x copying.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import json
import pstats
import statistics
import subprocess
import sys
import time

CLASSIFIERS = ("resnet18", "resnet50", "resnet101", "resnet152")


def _cpu(fn, repeats: int) -> float:
    fn()  # warm: imports, dispatch caches
    times = []
    for _ in range(repeats):
        gc.collect()  # a collection owed by the previous call would land in this one's time
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def _fake_forward(model, shape):
    """One eval forward on fake tensors, state made blank in the mode: the least any shape-aware
    surgery has to run (it is what shape propagation is, without the interpreter)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call

    with FakeTensorMode(allow_non_fake_inputs=True):
        state = {name: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype) for name, t in model.state_dict(keep_vars=True).items()}
        return functional_call(model, state, (torch.empty(shape),))


def time_ratios(repeats: int) -> list[dict]:
    import torch
    import torchvision

    import plugsurgeon as ps

    torch.set_num_threads(1)
    rows = []
    for name in CLASSIFIERS:
        model = getattr(torchvision.models, name)()
        trace = _cpu(lambda m=model: torch.fx.symbolic_trace(m), repeats)
        apply = _cpu(lambda m=model: ps.apply(m, "cbam"), repeats)
        traced = ps.trace(model)
        reused = _cpu(lambda m=model, t=traced: ps.apply(m, "cbam", traced=t), repeats)
        dry = _cpu(lambda m=model: ps.apply(m, "cbam", dry_run=True), repeats)  # no copy, no real modules
        forward = _cpu(lambda m=model.eval(): _fake_forward(m, (1, 3, 224, 224)), repeats)
        copying = _cpu(lambda m=model: copy.deepcopy(m), repeats)
        # Issue 16's target: apply within 2.5x of its floor, what any shape-aware copying surgery must pay
        # (symbolic_trace + one eval forward on fake tensors + one deepcopy).
        floor = trace + forward + copying
        rows.append({"model": name, "recipe": "cbam", "trace_s": trace, "apply_s": apply, "ratio": apply / trace,
                     "reused_ratio": reused / trace, "dry_ratio": dry / trace, "forward_ratio": forward / trace,
                     "copy_ratio": copying / trace, "floor_ratio": apply / floor, "dry_floor_ratio": dry / floor})
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    # The detector does not trace whole; its backbone (the part surgery edits) is the reference.
    trace = _cpu(lambda: torch.fx.symbolic_trace(detector.backbone.body), repeats)
    apply = _cpu(lambda: ps.apply(detector, "se", input_shape=(1, 3, 512, 512)), repeats)
    traced = ps.trace(detector, (1, 3, 512, 512))
    reused = _cpu(lambda: ps.apply(detector, "se", traced=traced), repeats)
    dry = _cpu(lambda: ps.apply(detector, "se", input_shape=(1, 3, 512, 512), dry_run=True), repeats)
    rows.append({"model": "fasterrcnn_resnet50_fpn", "recipe": "se", "trace_s": trace, "apply_s": apply, "ratio": apply / trace,
                 "reused_ratio": reused / trace, "dry_ratio": dry / trace})
    return rows


_MEMORY_CHILD = """
import json, sys, torch, torchvision
import plugsurgeon as ps
torch.set_num_threads(1)
def rss(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = rss('VmRSS:')
model = torchvision.models.{name}()
model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
with open('/proc/self/clear_refs', 'w') as f:  # resets VmHWM to the current RSS
    f.write('5')
ps.apply(model, 'se', inplace={inplace})
print(json.dumps({{'model_bytes': model_bytes, 'peak_over_start': rss('VmHWM:') - before}}))
"""


def memory_ratios(name: str = "regnet_y_128gf") -> list[dict]:
    rows = []
    for inplace in (True, False):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD.format(name=name, inplace=inplace)],
                             capture_output=True, text=True, check=True)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"model": name, "inplace": inplace, "model_gb": data["model_bytes"] / 1e9,
                     "peak_gb": data["peak_over_start"] / 1e9, "ratio": data["peak_over_start"] / data["model_bytes"]})
    return rows


def profile(name: str) -> None:
    import torch
    import torchvision

    import plugsurgeon as ps

    torch.set_num_threads(1)
    model = getattr(torchvision.models, name)()
    ps.apply(model, "cbam")
    profiler = cProfile.Profile()
    profiler.enable()
    ps.apply(model, "cbam")
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(r"plugsurgeon/(surgery|graph|plugins/registry)", 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="peak memory on regnet_y_128gf instead of time")
    parser.add_argument("--profile", metavar="MODEL", help="print where apply's time goes on a torchvision classifier")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile)
        return
    if args.memory:
        print("| model | in place | model GB | peak over start GB | ratio |\n|---|---|---|---|---|")
        for row in memory_ratios():
            print(f"| {row['model']} | {row['inplace']} | {row['model_gb']:.2f} | {row['peak_gb']:.2f} | {row['ratio']:.2f}x |")
        return
    print("| model | recipe | symbolic_trace CPU s | apply CPU s | ratio | trace reused (`traced=`) | dry run "
          "| floor: one fake forward | floor: the copy | apply / floor | dry run / floor |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for row in time_ratios(args.repeats):
        floors = (f"{row['forward_ratio']:.1f}x | {row['copy_ratio']:.1f}x | {row['floor_ratio']:.2f}x | {row['dry_floor_ratio']:.2f}x"
                  if "forward_ratio" in row else "| | | ")
        print(f"| {row['model']} | {row['recipe']} | {row['trace_s']:.3f} | {row['apply_s']:.3f} | {row['ratio']:.1f}x "
              f"| {row['reused_ratio']:.1f}x | {row['dry_ratio']:.1f}x | {floors} |")


if __name__ == "__main__":
    main()
