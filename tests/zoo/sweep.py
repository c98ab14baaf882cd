"""The zoo sweep's core, shared by `benchmarks/zoo_sweep.py` (which writes the table) and
`tests/zoo/test_sweep_slow.py` (which asserts on it).

For each model: build it with random weights, count its residual merges independently (tests/zoo/counting.py),
apply a recipe (default `se`) with plugsurgeon's public API, run the edited and the original model in train and
eval mode, and compare their output structures. Each model runs in a worker subprocess with a timeout, so one
hang or crash does not end the sweep; a worker is replaced after a timeout, a crash, or every few models (to
bound memory).

Outcomes:

- ``applied``: the recipe applied, and the edited model runs in train and eval mode with the original structure;
- ``broken``: the recipe applied, but the edited model fails to run or its output structure differs (the worst
  outcome: surgery returned a model that does not work);
- ``refused``: a ``PlugsurgeonError`` (the reason is its message's first line);
- ``failed``: any other exception out of plugsurgeon (a raw error reaching the user);
- ``skipped``: the zoo itself could not build or run the original model at this input (not plugsurgeon's doing);
- ``timeout`` / ``crashed``: the worker did not answer within the timeout, or died.

The residual count is checked against the independent expectation ``low..high``: ``ok``, ``below`` (merges
missed) or ``above`` (more sites than same-shape adds: certainly wrong).
"""

from __future__ import annotations

import json
import os
import re
import select
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FILE = Path(__file__).with_name("timm_sample.txt")
ZOOS = ("timm", "torchvision", "ultralytics", "smp")

# --------------------------------------------------------------------------------------------------------------
# Model lists


# timm modules whose models are convolutional networks (hybrids with attention stages and transformers excluded).
TIMM_CONV_MODULES = (
    "byobnet", "convmixer", "convnext", "cpubone", "cspnet", "cspnext", "densenet", "dla", "dpn", "efficientnet",
    "fasternet", "fastvit", "ghostnet", "hardcorenas", "hgnet", "hrnet", "inception_next", "inception_resnet_v2",
    "inception_v3", "inception_v4", "lcnetv2", "mambaout", "metaformer", "mobilenetv3", "nasnet", "nfnet",
    "pnasnet", "rdnet", "regnet", "repghost", "repvit", "res2net", "resnest", "resnet", "resnetv2", "rexnet",
    "selecsls", "senet", "sknet", "starnet", "tresnet", "vgg", "vovnet", "xception", "xception_aligned",
)
# Names with attention or token-mixing transformer stages inside those modules.
TIMM_EXCLUDE = re.compile(r"^test_|caformer|hybrid|fastvit_mci|fastvit_ma|botnet|halonet|lambda")
TIMM_MAX_PARAMS = 100_000_000  # 24 GB of RAM with a copy, and CPU time
# Models issue 7 names (wrong counts, wrong refusals, broken results): always in the sample.
TIMM_ISSUE_MODELS = (
    "convnextv2_atto", "convnextv2_base", "hrnet_w18_small", "hrnet_w32", "res2net50_26w_4s", "res2net50_26w_6s",
    "res2next50", "ghostnetv2_100", "nasnetalarge", "dla46x_c", "dla60x", "dla102x2", "ecaresnet26t",
    "ecaresnet50d", "cspresnet50", "cspdarknet53", "cs3darknet_s", "convnext_atto_rms", "convnext_atto_ols",
    "convnext_zepto_rms", "inception_next_atto", "skresnet18", "repvgg_a0", "repvgg_a1", "mobileone_s1",
    "lcnetv2_small", "ese_vovnet19b_dw", "ese_vovnet39b", "tf_efficientnet_b0", "dm_nfnet_f0", "nf_resnet50",
    "ghostnetv3_100", "repghostnet_058",
)


def timm_family(name: str) -> str:
    """A family key from a timm name: its first token (two for prefixed variants such as ``tf_``, ``eca_``),
    without a trailing size number (``resnet18d`` -> ``resnet``; version suffixes such as ``v2`` stay)."""
    tokens = name.split("_")
    prefixed = ("tf", "gluon", "legacy", "dm", "eca", "ese", "gc", "se", "nf", "inception")
    base = "_".join(tokens[:2]) if tokens[0] in prefixed and len(tokens) > 1 else tokens[0]
    return re.sub(r"(?<=[a-uw-z])\d+[a-z]?\d*$", "", base)


def select_timm_sample(target: int = 160, log: Callable[[str], None] = print) -> list[str]:
    """A deterministic sample: the issue's models, then round-robin over families (sorted by name): each
    family's smallest model by parameter count (built on the meta device: nothing is allocated), then its
    median-size one, ..., until ``target`` models. Takes a minute or two (every candidate is built)."""
    import timm
    import torch

    sizes: dict[str, int] = {}
    for module in TIMM_CONV_MODULES:
        for name in timm.list_models(module=module):
            if TIMM_EXCLUDE.search(name):
                continue
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
            except Exception as error:  # a model timm cannot build is simply not sampled
                log(f"  cannot build {name}: {type(error).__name__}: {error}")
                continue
            sizes[name] = sum(p.numel() for p in model.parameters())
    fitting = {n: p for n, p in sizes.items() if p <= TIMM_MAX_PARAMS}
    families: dict[str, list[str]] = {}
    for name in sorted(fitting, key=lambda n: (fitting[n], n)):
        families.setdefault(timm_family(name), []).append(name)
    sample = [n for n in TIMM_ISSUE_MODELS if n in sizes]
    round_ = 0
    while len(sample) < target and any(len(v) > round_ for v in families.values()):
        for family in sorted(families):
            members = families[family]
            # first round: the smallest; second: the median size, for variety; then upwards from the smallest
            order = [members[0], members[len(members) // 2], *members[1:]]
            pick = [m for m in order if m not in sample]
            if len(members) > round_ and pick and len(sample) < target:
                sample.append(pick[0])
        round_ += 1
    return sorted(sample)


def timm_sample() -> list[str]:
    return [line.split("#")[0].strip() for line in SAMPLE_FILE.read_text().splitlines() if line.split("#")[0].strip()]


def torchvision_models() -> list[str]:
    import torchvision

    names = []
    for module in ("", "detection", "segmentation"):
        mod = getattr(torchvision.models, module) if module else torchvision.models
        names += [f"{module or 'classification'}/{n}" for n in torchvision.models.list_models(module=mod)]
    return names


ULTRALYTICS_MODELS = (
    "yolov3-tiny.yaml", "yolov5n.yaml", "yolov6n.yaml", "yolov8n.yaml", "yolov8n-cls.yaml", "yolov8n-seg.yaml",
    "yolov8n-pose.yaml", "yolov8n-obb.yaml", "yolov8n-ghost.yaml", "yolov8n-p2.yaml", "yolov9t.yaml",
    "yolov10n.yaml", "yolo11n.yaml", "yolo11n-cls.yaml", "yolo11n-seg.yaml", "yolo11n-pose.yaml", "yolo12n.yaml",
    "yolo26n.yaml", "yolo26n-cls.yaml",
)
SMP_MODELS = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN",
              "UPerNet", "Segformer")


def models_for(zoo: str) -> list[str]:
    if zoo == "timm":
        return timm_sample()
    if zoo == "torchvision":
        return torchvision_models()
    if zoo == "ultralytics":
        return list(ULTRALYTICS_MODELS)
    if zoo == "smp":
        return list(SMP_MODELS)
    raise ValueError(zoo)


def family_of(zoo: str, name: str) -> str:
    if zoo == "timm":
        return timm_family(name)
    if zoo == "torchvision":
        task, bare = name.split("/")
        return f"{task}/{re.sub(r'[0-9_].*$', '', bare)}"
    if zoo == "ultralytics":
        return re.sub(r"^(yolo(?:v?\d+)).*?(-\w+)?\.yaml$", lambda m: m.group(1) + (m.group(2) or ""), name)
    return name


# --------------------------------------------------------------------------------------------------------------
# One model (runs inside a worker)


@dataclass
class Record:
    zoo: str
    name: str
    recipe: str
    family: str = ""
    status: str = ""
    found: int | None = None  # residual.branch sites plugsurgeon reports (edits when applied)
    low: int | None = None
    high: int | None = None
    rule: str = ""
    reason: str = ""
    edits: int = 0
    seconds: float = 0.0
    apply_cpu: float | None = None  # CPU seconds of the ps.apply call alone (issue 9)
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> str:
        if self.found is None or self.low is None:
            return "n/a"
        if self.found > self.high:
            return "above"
        return "below" if self.found < self.low else "ok"

    @property
    def expected(self) -> str:
        if self.low is None:
            return "?"
        return str(self.low) if self.low == self.high else f"{self.low}..{self.high}"

    @property
    def wrong_refusal(self) -> bool:
        """Refused as having no residual sites although the independent count says it has some."""
        return self.status == "refused" and "no residual.branch sites" in self.reason and bool(self.low)


class _Setup(Exception):
    """The zoo could not build or run the original model: not plugsurgeon's doing."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _build(zoo: str, name: str, size: int):
    """(model, plan input shape, run inputs, runner(model, train) -> output, expectation(model) -> (low, high, rule))."""
    import torch

    from tests.zoo import counting
    from tests.zoo.helpers import run, structure  # noqa: F401

    if zoo == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
        shape = (1, 3, size, size)
        x, batch = torch.randn(shape), torch.randn(2, *shape[1:])

        def expect(m):
            e = counting.expected_residuals(name, m, x)
            return e.low, e.high, e.rule

        return model, shape, lambda m, train: run(m, batch, train=train), expect

    if zoo == "torchvision":
        import torchvision

        task, bare = name.split("/")
        if task == "classification":
            model = torchvision.models.get_model(bare, weights=None)
            fixed = bare.startswith(("vit_", "maxvit_", "swin_"))
            shape = (1, 3, 299, 299) if bare == "inception_v3" else (1, 3, 224, 224) if fixed else (1, 3, size, size)
            x, batch = torch.randn(shape), torch.randn(2, *shape[1:])

            def expect(m):
                e = counting.expected_residuals(f"torchvision:{bare}", m, x)
                return e.low, e.high, e.rule

            return model, shape, lambda m, train: run(m, batch, train=train), expect
        if task == "segmentation":
            aux = {} if bare.startswith("lraspp") else {"aux_loss": True}
            model = torchvision.models.get_model(bare, weights=None, weights_backbone=None, **aux)
            shape = (2, 3, size, size)
            x = torch.randn(shape)

            def expect(m):
                n = counting.count_adds(m.backbone, x)
                return n, n, "same-shape 4-D adds in the backbone"

            return model, shape, lambda m, train: run(m, x, train=train), expect
        # detection: small images; train mode needs targets
        from tests.zoo.helpers import build_detector, detection_images, extractor, image_size, targets_for

        model = build_detector(bare)
        side = image_size(model)
        shape = (1, 3, side, side)
        images = detection_images(side)

        def runner(m, train):
            torch.manual_seed(1)
            out = run(m, images, train=train, targets=targets_for(model, side) if train else None)
            return out if train else structure(out, ragged=True)

        def expect(m):
            n = counting.count_adds(extractor(m), torch.randn(shape))
            return n, n, "same-shape 4-D adds in the backbone body"

        return model, shape, runner, expect

    if zoo == "ultralytics":
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics.nn import tasks

        kind = tasks.guess_model_task(name)
        cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "classify": tasks.ClassificationModel,
               "pose": tasks.PoseModel, "obb": tasks.OBBModel}[kind]
        model = cls(name, verbose=False)
        shape = (1, 3, size, size)
        x = torch.randn(shape)

        def expect(m):
            shortcuts = sum(1 for mod in m.modules() if getattr(mod, "add", None) is True)
            return shortcuts, counting.count_adds(m, x), "one or more per module with add=True, at most every same-shape add"

        return model, shape, lambda m, train: run(m, x, train=train), expect

    if zoo == "smp":
        import segmentation_models_pytorch as smp

        model = getattr(smp, name)("resnet34", encoder_weights=None, classes=2)
        shape = (2, 3, size, size)
        x = torch.randn(shape)

        def expect(m):
            return (counting.count_adds(m.encoder, x), counting.count_adds(m, x),
                    "encoder adds, at most every same-shape add (decoder skip adds)")

        return model, shape, lambda m, train: run(m, x, train=train), expect
    raise ValueError(zoo)


def _native_size(zoo: str, name: str) -> int | None:
    if zoo != "timm":
        return None
    import timm

    size = timm.get_pretrained_cfg(name).to_dict().get("input_size") if timm.get_pretrained_cfg(name) else None
    return int(size[-1]) if size else None


def run_one(zoo: str, name: str, recipe: str = "se", size: int = 224) -> Record:
    """Build, count, apply, run: one Record. Never raises."""
    import torch

    import plugsurgeon as ps
    from tests.zoo.helpers import structure

    record = Record(zoo, name, recipe, family_of(zoo, name))
    start = time.perf_counter()
    try:
        sizes = [size]
        while True:
            try:
                torch.manual_seed(0)
                model, shape, runner, expect = _build(zoo, name, sizes[-1])
                model.eval()
                record.low, record.high, record.rule = expect(model)
                originals = {train: structure(runner(model, train)) for train in (False, True)}
                break
            except Exception as error:
                # Fixed-resolution models (attention with fixed feature sizes): retry at the model's own size.
                native = _native_size(zoo, name)
                if native is None or native in sizes:
                    raise _Setup(_first_line(error)) from error
                record.notes.append(f"{sizes[-1]}x{sizes[-1]} does not run ({_first_line(error)}); using {native}")
                sizes.append(native)
        try:
            started = time.process_time()
            result = ps.apply(model, recipe, input_shape=shape)
            record.apply_cpu = round(time.process_time() - started, 2)
        except ps.PlugsurgeonError as error:
            record.status, record.reason = "refused", _first_line(error)
            try:
                record.found = len(ps.find_sites(model, "residual.branch", input_shape=shape))
            except ps.PlugsurgeonError as sites_error:
                record.notes.append(f"find_sites refused too: {_first_line(sites_error)}")
            except Exception as sites_error:
                record.notes.append(f"find_sites raised {_first_line(sites_error)}")
        except Exception as error:
            record.status, record.reason = "failed", _first_line(error)
            record.notes.append(traceback.format_exc(limit=-4)[-1500:])
        else:
            record.edits = len(result.report.edits)
            if recipe in ("se", "cbam", "eca"):
                record.found = record.edits
            else:
                record.found = len(ps.find_sites(model, "residual.branch", input_shape=shape))
            record.status = "applied"
            for train in (False, True):
                try:
                    got = structure(runner(result.model, train))
                except Exception as error:
                    record.status, record.reason = "broken", f"{'train' if train else 'eval'}: {_first_line(error)}"
                    break
                if got != originals[train]:
                    record.status = "broken"
                    record.reason = f"{'train' if train else 'eval'} output structure differs: {got} != {originals[train]}"[:300]
                    break
    except _Setup as error:
        record.status, record.reason = "skipped", str(error)
    record.seconds = round(time.perf_counter() - start, 1)
    return record


# --------------------------------------------------------------------------------------------------------------
# Workers


def _worker_main() -> None:
    """Read JSON tasks on stdin, answer one JSON line per task on the original stdout."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # whatever models print goes to stderr
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(int(os.environ.get("ZOO_SWEEP_THREADS", "1")))
    for line in sys.stdin:
        task = json.loads(line)
        record = run_one(task["zoo"], task["name"], task["recipe"], task["size"])
        out.write(json.dumps(asdict(record)) + "\n")
        out.flush()


class _Worker:
    def __init__(self, threads: int) -> None:
        env = dict(os.environ, YOLO_OFFLINE="1", OMP_NUM_THREADS=str(threads), ZOO_SWEEP_THREADS=str(threads),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.zoo.sweep"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.done = 0

    def ask(self, task: dict, timeout: float) -> Record:
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except OSError:
            return Record(task["zoo"], task["name"], task["recipe"], family_of(task["zoo"], task["name"]), "crashed",
                          reason="the worker died before the task")
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        self.done += 1
        if not line:
            status = "timeout" if not ready else "crashed"
            self.close()
            return Record(task["zoo"], task["name"], task["recipe"], family_of(task["zoo"], task["name"]), status,
                          reason=f"no answer within {timeout:.0f} s" if status == "timeout" else
                          f"the worker died (exit {self.proc.returncode})", seconds=timeout)
        data = json.loads(line)
        return Record(**data)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def sweep(tasks: Iterable[tuple[str, str]], *, recipe: str = "se", size: int = 224, jobs: int = 1,
          timeout: float = 300.0, threads: int = 1, recycle: int = 15,
          progress: Callable[[Record], None] | None = None) -> list[Record]:
    """Run (zoo, name) tasks in ``jobs`` worker subprocesses; the records come back in task order."""
    tasks = list(tasks)
    records: list[Record | None] = [None] * len(tasks)
    lock = threading.Lock()
    queue = list(enumerate(tasks))

    def slot() -> None:
        worker: _Worker | None = None
        while True:
            with lock:
                if not queue:
                    break
                index, (zoo, name) = queue.pop(0)
            if worker is None or not worker.alive or worker.done >= recycle:
                if worker is not None:
                    worker.close()
                worker = _Worker(threads)
            record = worker.ask({"zoo": zoo, "name": name, "recipe": recipe, "size": size}, timeout)
            records[index] = record
            if progress is not None:
                with lock:
                    progress(record)
        if worker is not None:
            worker.close()

    threads_ = [threading.Thread(target=slot) for _ in range(max(1, jobs))]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    return [r for r in records if r is not None]


# --------------------------------------------------------------------------------------------------------------
# Tables


def markdown(records: list[Record], *, title: str = "") -> str:
    """A summary per zoo and family, then one row per model."""
    lines: list[str] = []
    statuses = ("applied", "refused", "failed", "broken", "skipped", "timeout", "crashed")
    for zoo in ZOOS:
        rows = [r for r in records if r.zoo == zoo]
        if not rows:
            continue
        recipe = rows[0].recipe
        total = {s: sum(r.status == s for r in rows) for s in statuses}
        counted = [r for r in rows if r.count != "n/a"]
        lines += [f"## {zoo} ({len(rows)} models, recipe `{recipe}`)", ""]
        lines.append(", ".join(f"{s}: {n}" for s, n in total.items() if n) +
                     f"; residual count ok: {sum(r.count == 'ok' for r in counted)}/{len(counted)}"
                     f" (below: {sum(r.count == 'below' for r in counted)}, above: {sum(r.count == 'above' for r in counted)})"
                     f"; wrong 'no residual sites' refusals: {sum(r.wrong_refusal for r in rows)}")
        timed = sorted(r.apply_cpu for r in rows if r.apply_cpu is not None)
        if timed:
            lines += ["", f"`ps.apply` CPU seconds over the {len(timed)} applied models: median {statistics.median(timed):.2f}, "
                          f"p90 {timed[min(len(timed) - 1, int(0.9 * len(timed)))]:.2f}, max {timed[-1]:.2f}"]
        lines += ["", "| family | models | applied | refused | failed | broken | other | count ok |", "|---|---|---|---|---|---|---|---|"]
        families: dict[str, list[Record]] = {}
        for r in rows:
            families.setdefault(r.family, []).append(r)
        for family, members in sorted(families.items()):
            n = {s: sum(r.status == s for r in members) for s in statuses}
            other = n["skipped"] + n["timeout"] + n["crashed"]
            ok = sum(r.count == "ok" for r in members)
            lines.append(f"| {family} | {len(members)} | {n['applied']} | {n['refused']} | {n['failed']} | {n['broken']} | "
                         f"{other} | {ok}/{sum(r.count != 'n/a' for r in members)} |")
        lines += ["", "| model | status | sites / expected | count | seconds | reason |", "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r.family, r.name)):
            found = "-" if r.found is None else str(r.found)
            reason = r.reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.name} | {r.status} | {found} / {r.expected} | {r.count} | {r.seconds} | {reason} |")
        lines.append("")
    header = [f"# {title}", ""] if title else []
    return "\n".join(header + lines)


if __name__ == "__main__":
    _worker_main()
