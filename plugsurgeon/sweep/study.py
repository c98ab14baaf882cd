"""The search: an Optuna study over a space's candidates, stored where it can resume and be shared.

Each trial samples one value per dimension of the space, resolves them to a recipe, plans it on one trace
(a placement the model refuses fails the trial with the reason), and, unless an earlier complete trial
made the same edits (its values are then taken, nothing is trained twice), applies it to a copy of the
model and measures it. Storage: by default a journal file in the output directory (nothing to set up;
a stopped sweep resumes), or any database URL Optuna accepts, which any number of workers on any number
of machines can share (Optuna's own distributed mode).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from torch import nn

from plugsurgeon import progress
from plugsurgeon.errors import PlugsurgeonError, first_line
from plugsurgeon.graph.fake import count_params
from plugsurgeon.graph.shapes import DEFAULT_INPUT_SHAPE
from plugsurgeon.graph.trace import Traced, trace
from plugsurgeon.surgery.commit import apply
from plugsurgeon.sweep.expand import edits_key
from plugsurgeon.sweep.objectives import (
    Metric,
    costs_of,
    measure_latency,
    metric_values,
    metrics_of,
    takes_trial,
)
from plugsurgeon.sweep.results import Row, SweepResult, row_of
from plugsurgeon.sweep.space import (
    Dimension,
    Space,
    check_model,
    describe,
    dimensions,
    invalid,
    load_space,
    resolve,
)

SAMPLERS = ("auto", "grid", "tpe", "nsga2", "random")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
JOURNAL = "study.journal"
POLL_SECONDS = 0.5  # how often a trial waiting for another worker's trial of the same edits looks again
AUTO_GRID = 200  # auto: a finite space up to this many combinations is searched exhaustively


@dataclass(frozen=True)
class TrialDone:
    """What ``on_trial`` is told after each trial this worker runs.

    Attributes:
        row: The trial (state, candidate, values or error).
        done: Trials finished in the study, every worker's included.
        total: Trials the sweep runs to.
        seconds_left: An estimate from this worker's trials so far, or None.
    """

    row: Row
    done: int
    total: int
    seconds_left: float | None


def sweep(model: nn.Module, space: str | Path | Space | dict, evaluate: Callable[..., Any] | None = None, *,
          metrics: Mapping[str, str] | Sequence[str] | None = None, costs: Sequence[str] = (), trials: int | None = None,
          output: str | Path | None = None, storage: str | None = None, study_name: str | None = None, sampler: str = "auto",
          input_shape: Sequence[int] | None = None, traced: Traced | None = None, seed: int | None = None,
          timeout: float | None = None, device: str = "cpu", on_trial: Callable[[TrialDone], None] | None = None) -> SweepResult:
    """Search a space of placements for the best by your metric and built-in costs, with Optuna.

    Every candidate is applied to a copy of ``model``; the model itself is never changed. The study is
    stored as it goes: calling ``sweep`` again with the same output (or storage and study name) resumes
    it, and several processes given the same storage share it. A candidate that fails (your function
    raises, or the model refuses the placement) is recorded with its message and the sweep goes on.
    Ctrl-C (SIGINT, in the main thread) stops after the current trial; a second one stops at once.

    Args:
        model: The model to place modules in.
        space: A space YAML path, its content as a mapping, or a ``Space`` (docs/sweep.md).
        evaluate: Your metric: ``evaluate(model) -> float | dict``, or ``evaluate(model, trial)`` to
            report intermediate values to Optuna's pruner. None: optimise ``costs`` only.
        metrics: The names ``evaluate`` returns, each ``"maximize"`` or ``"minimize"`` (a list of names:
            all maximised); default one maximised value named ``score``.
        costs: Built-in costs to minimise too: ``"params"``, ``"macs"``, ``"latency"`` (milliseconds per
            forward at ``input_shape``, its batch included, on ``device``). Several objectives give a Pareto front.
        trials: Trials to run the study to (every worker's and earlier runs' counted); default: the
            whole grid for a finite space searched by grid, else 20.
        output: Directory for the study's journal file and the results (default ``sweep-NAME`` with
            the space's name, when no ``storage`` is given).
        storage: A database URL (``postgresql://...``, ``sqlite:///...``) or a journal file path, to
            share one study between workers; default the journal file in ``output``.
        study_name: The study's name in the storage (default: the space's name).
        sampler: ``"grid"``, ``"tpe"``, ``"nsga2"``, ``"random"``, or ``"auto"``: grid for a finite space of
            at most 200 combinations (or at most ``trials``), else NSGA-II for several objectives, TPE for one.
        input_shape: The input shape, N,C,H,W (default 1,3,224,224).
        traced: A trace of ``model`` to reuse.
        seed: The sampler's seed.
        timeout: Stop starting trials after this many seconds.
        device: Where latency is measured.
        on_trial: Called after each trial this process runs (progress; the library never prints).

    Returns:
        The results of every trial in the study: ranked candidates, the Pareto front, the best.

    Raises:
        RecipeError: The space is malformed or does not fit the model.
        PlugsurgeonError: No objective, an unknown cost or sampler, or the stored study was made with
            another space or objectives.

    Examples:
        >>> def evaluate(model):
        ...     return top1(model, val_loader)
        >>> result = ps.sweep.run(torchvision.models.resnet18(), "space.yaml", evaluate, costs=["macs"], trials=30)
        >>> print(result.best.label)
        >>> edited = ps.apply(model, result.output / "best.yaml").model
    """
    space = load_space(space)
    objectives = metrics_of(metrics, evaluate is not None) + costs_of(costs)
    if not objectives:
        raise PlugsurgeonError("nothing to optimise: no evaluate function and no costs",
                               hint="pass evaluate=your_function, or costs=['macs'] (or params, latency)")
    if sampler not in SAMPLERS:
        raise PlugsurgeonError(f"unknown sampler '{sampler}'", hint=f"samplers are {', '.join(SAMPLERS)}")
    dims = dimensions(space)
    size = _grid_size(dims)
    chosen = _sampler_name(sampler, size, trials, len(objectives))
    if chosen == "grid" and size is None:
        raise PlugsurgeonError("a grid search needs a finite space, and this one has a continuous range",
                               hint="give the range a `step`, or use sampler tpe, nsga2 or random")
    target = trials if trials is not None else (size if chosen == "grid" and size is not None else 20)
    if target < 1:
        raise PlugsurgeonError(f"trials must be at least 1, not {target}")
    traced = traced or trace(model, tuple(input_shape or DEFAULT_INPUT_SHAPE))
    check_model(space, traced, type(model).__name__)
    out = Path(output) if output is not None else (Path(f"sweep-{space.name}") if storage is None else None)
    opened, where = _storage(storage, out)
    name = study_name or space.name
    with _quiet_optuna():
        study = _open_study(opened, name, chosen, dims, objectives, space, seed)
        if "://" not in where:  # a database's heartbeats notice killed workers themselves
            _reclaim_dead_workers(study, opened, name)
    runner = _Runner(model, space, dims, evaluate, objectives, traced, device, study)
    stop = threading.Event()
    started = time.monotonic()

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = _finished(study)
        if on_trial is not None:
            mine = runner.finished
            left = (time.monotonic() - started) / mine * max(0, target - done) if mine else None
            on_trial(TrialDone(row_of(trial, objectives), done, target, left))
        if done >= target or stop.is_set():
            study.stop()

    if _finished(study) < target:
        with _quiet_optuna(), _stop_on_interrupt(stop):
            study.optimize(runner, timeout=timeout, catch=(Exception,), callbacks=[after_trial])
    result = SweepResult(name, where, objectives, [row_of(t, objectives) for t in study.get_trials(deepcopy=False)], stopped=stop.is_set())
    if out is not None:
        result.write(out)
    return result


def _finished(study: optuna.Study) -> int:
    """Trials finished, less those of killed workers (queued again: their candidate still has to run)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get("requeued"))


def _grid_size(dims: list[Dimension]) -> int | None:
    size = 1
    for dim in dims:
        values = dim.values()
        if values is None:
            return None
        size *= len(values)
    return size


def _sampler_name(sampler: str, size: int | None, trials: int | None, objectives: int) -> str:
    if sampler != "auto":
        return sampler
    if size is not None and size <= max(AUTO_GRID, trials or 0):
        return "grid"
    return "nsga2" if objectives > 1 else "tpe"


def _storage(storage: str | None, output: Path | None) -> tuple[Any, str]:
    """The Optuna storage, and where it is in words: a journal file, or a database with heartbeats (a
    worker killed mid-trial is noticed by the others and its trial run again)."""
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if storage is None or "://" not in storage:
        path = Path(storage) if storage is not None else (output or Path(".")) / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    url = storage
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as the psycopg 3 driver; the `sweep` extra installs psycopg2.
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and say so at every start
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=30, grace_period=90,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1)), _redacted(storage)
        except ImportError as error:
            failure: Exception = error
            break
        except Exception as error:  # noqa: BLE001 - drivers raise their own types
            # Workers started together race to create Optuna's tables; the loser finds them made on a retry.
            failure = error
            time.sleep(1 + attempt)
    raise PlugsurgeonError(f"cannot open the study storage '{_redacted(storage)}': {first_line(failure, 200)}",
                           hint="check the URL, that the database server runs and its driver is installed (psycopg2 for postgresql)") from None


def _redacted(url: str) -> str:
    head, at, tail = url.rpartition("@")
    return url if not at else head.split("://")[0] + "://***@" + tail


def _open_study(storage: Any, name: str, sampler: str, dims: list[Dimension], objectives: list[Metric], space: Space,
                seed: int | None) -> optuna.Study:
    directions = [o.direction for o in objectives]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True,
                                sampler=_make_sampler(sampler, dims, seed), pruner=optuna.pruners.MedianPruner(n_warmup_steps=1))
    made_with = {"space": space.model_dump(mode="json"), "objectives": [[o.name, o.direction] for o in objectives]}
    stored = {key: study.user_attrs.get(key) for key in made_with}
    if stored["space"] is None:
        for key, value in made_with.items():
            study.set_user_attr(key, value)
    elif json.dumps(stored, sort_keys=True) != json.dumps(made_with, sort_keys=True):
        what = "space" if stored["space"] != made_with["space"] else "objectives"
        raise PlugsurgeonError(f"study '{name}' in this storage was made with other {what}; resuming it would mix two searches",
                               hint="give another output directory or study name for the new search, or the same space and objectives to resume")
    return study


def _make_sampler(name: str, dims: list[Dimension], seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "grid":
        return optuna.samplers.GridSampler({d.name: d.values() or [] for d in dims}, seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_here(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's worker ran on this machine and is gone (killed: the trial will never finish)."""
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _reclaim_dead_workers(study: optuna.Study, storage: Any, name: str) -> None:
    """A trial left running by a worker of this machine that no longer exists (killed) is failed, with
    why, and its candidate queued again; a journal file has no heartbeats to notice it otherwise."""
    study_id = storage.get_study_id_from_name(name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead_here(trial):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "error", "its worker stopped before the trial finished; queued again")
        storage.set_trial_user_attr(trial_id, "requeued", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), skip_if_exists=False)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs each trial on stderr; the library never prints (progress goes to ``on_trial``)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


@contextlib.contextmanager
def _stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C asks to stop after the current trial; a second one interrupts it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        progress.step("stopping after this trial (Ctrl-C again to stop now); the study is kept")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Runner:
    """The Optuna objective: one candidate sampled, resolved, deduplicated, applied to a copy and measured."""

    def __init__(self, model: nn.Module, space: Space, dims: list[Dimension], evaluate: Callable[..., Any] | None,
                 objectives: list[Metric], traced: Traced, device: str, study: optuna.Study) -> None:
        self.model, self.space, self.dims, self.evaluate = model, space, dims, evaluate
        self.objectives, self.traced, self.device, self.study = objectives, traced, device, study
        self.metrics = [o for o in objectives if o.name not in ("params", "macs", "latency")]
        self.with_trial = evaluate is not None and takes_trial(evaluate)
        self.finished = 0

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._run(trial)
        finally:
            self.finished += 1

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        trial.set_user_attr("worker", _worker())
        values = {d.name: _suggest(trial, d) for d in self.dims}
        reason = invalid(self.space, values)
        if reason is not None:
            trial.set_user_attr("error", reason)
            trial.set_user_attr("invalid", True)  # no candidate: not listed among the failures
            raise optuna.TrialPruned(reason)
        recipe = resolve(self.space, values)
        label = describe(recipe)
        trial.set_user_attr("label", label)
        trial.set_user_attr("recipe", None if recipe is None else recipe.model_dump(mode="json", exclude_defaults=True))
        progress.step(f"trial {trial.number}: {label}")
        try:
            # Applying costs little next to evaluating, and plans once: the plan then says whether an earlier
            # trial made the same edits.
            applied = apply(self.model, recipe, traced=self.traced) if recipe is not None else None
            planned = applied.plan if applied is not None else None
            key = edits_key(planned)
            trial.set_user_attr("key", key)
            earlier = self._same_edits(key, trial.number)
            if earlier is not None:
                trial.set_user_attr("duplicate_of", earlier.number)
                return tuple(earlier.values)
            edited = applied.model if applied is not None else copy.deepcopy(self.model)
            measured = self._costs(edited, planned)
            if self.evaluate is not None:
                result = self.evaluate(edited, trial) if self.with_trial else self.evaluate(edited)
                measured.update(metric_values(result, self.metrics))
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("error", f"pruned: {first_line(pruned, 300) or 'by the pruner'}")
            raise
        except PlugsurgeonError as error:
            trial.set_user_attr("error", (error.message.splitlines() or [""])[0][:500])
            raise
        except Exception as error:  # noqa: BLE001 - the user's code raises anything; the sweep goes on
            trial.set_user_attr("error", f"{type(error).__name__}: {first_line(error, 500)}")
            raise
        return tuple(measured[o.name] for o in self.objectives)

    def _same_edits(self, key: str, number: int) -> optuna.trial.FrozenTrial | None:
        """The complete trial that made these edits; one still running, started earlier by another worker
        (a grid sampler hands out running grid points once none is left), is waited for."""
        while True:
            running = False
            for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
                if other.number == number or other.user_attrs.get("key") != key:
                    continue
                if other.state == TrialState.COMPLETE:
                    return other
                running = running or (other.number < number and not _dead_here(other))
            if not running:
                return None
            time.sleep(POLL_SECONDS)

    def _costs(self, edited: nn.Module, planned: Any) -> dict[str, float]:
        names = {o.name for o in self.objectives}
        found: dict[str, float] = {}
        if "params" in names:
            found["params"] = float(count_params(edited))
        if "macs" in names:
            added = planned.report().flops_added if planned is not None else 0
            if self.traced.flops is None:
                raise PlugsurgeonError("the model's FLOPs cannot be counted on fake tensors, so MACs are unknown",
                                       hint="optimise params or latency instead")
            found["macs"] = float((self.traced.flops + (added or 0)) // 2)
        if "latency" in names:
            param = next(edited.parameters(), None)
            home = param.device if param is not None else "cpu"
            found["latency"] = measure_latency(edited, self.traced.input_shape, device=self.device)
            edited.to(home)
        return found


def _suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    if dim.range is not None:
        r = dim.range
        if r.integer and not r.log:
            return trial.suggest_int(dim.name, int(r.low), int(r.high), step=int(r.step or 1))
        if r.integer:
            return trial.suggest_int(dim.name, int(r.low), int(r.high), log=True)
        return trial.suggest_float(dim.name, float(r.low), float(r.high), step=r.step, log=r.log)
    return trial.suggest_categorical(dim.name, list(dim.choices or ()))
