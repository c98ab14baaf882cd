"""What listing and pricing a sweep's candidates costs (issue 18), as a ratio to one ``ps.apply`` in the same process.

A space of 3 plugins x 15 subsets of stages 2-5 x 3 densities on resnet50 (135 choices) is expanded: the first
``--candidates`` choices are each dry-run (``ps.apply(..., dry_run=True, traced=t)``: planned, built on fake tensors
and checked, as a real apply would be) on one trace made once, and the distinct ones kept. The reference is one
``ps.apply(resnet50, "cbam")`` (its own trace, the copy, the real modules). CPU seconds, one torch thread, warm.

    python benchmarks/sweep_cost.py                     # 100 candidates
    python benchmarks/sweep_cost.py --candidates 20 --model resnet18
"""

from __future__ import annotations

import argparse
import time

SPACE = {"sweep": {"name": "cost", "steps": [{"plugin": ["se", "cbam", "eca"], "at": "residual.branch",
                                              "stages": {"subsets_of": [2, 3, 4, 5]},
                                              "density": ["every", "per_stage_last", "last"]}]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--candidates", type=int, default=100)
    args = parser.parse_args()

    import torch
    import torchvision

    import plugsurgeon as ps
    from plugsurgeon.sweep.expand import price
    from plugsurgeon.sweep.space import grid, load_space, resolve

    torch.set_num_threads(1)
    model = getattr(torchvision.models, args.model)(weights=None)
    shape = (1, 3, 224, 224)
    ps.apply(model, "cbam", input_shape=shape)  # warm: imports, dispatch caches
    start = time.process_time()
    ps.apply(model, "cbam", input_shape=shape)
    one_apply = time.process_time() - start

    space = load_space(SPACE)
    choices = grid(space)[: args.candidates]
    start = time.process_time()
    traced = ps.trace(model, shape)
    traced_at = time.process_time() - start
    keys = set()
    for values in choices:
        keys.add(price(model, resolve(space, values), traced, values).key)
    total = time.process_time() - start
    print(f"{args.model}: one ps.apply(cbam) {one_apply:.2f} s CPU; one trace {traced_at:.2f} s")
    print(f"{len(choices)} candidates listed and priced on that trace: {total:.1f} s CPU, {len(keys)} distinct, "
          f"{total / one_apply:.1f}x one apply ({total / len(choices) / one_apply:.2f}x per candidate)")


if __name__ == "__main__":
    main()
