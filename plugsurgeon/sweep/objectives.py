"""What a sweep measures: the user's metric (a callable), and built-in costs (parameters, MACs, latency).

A metric is a callable ``evaluate(model) -> float | dict[str, float]``, or ``evaluate(model, trial)`` to
report intermediate values (``trial.report(value, step)``) so that Optuna's pruner can stop a bad
candidate early (``if trial.should_prune(): raise optuna.TrialPruned()``). Each metric is declared with
its direction; costs are minimised.
"""

from __future__ import annotations

import importlib
import inspect
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from plugsurgeon.errors import PlugsurgeonError

Direction = Literal["maximize", "minimize"]
COSTS = ("params", "macs", "latency")


@dataclass(frozen=True)
class Metric:
    """One value a sweep optimises: its name and whether larger is better."""

    name: str
    direction: Direction = "maximize"


def metrics_of(metrics: Mapping[str, str] | Sequence[str] | None, has_evaluate: bool) -> list[Metric]:
    """The declared metrics: a mapping of name to direction, names (maximised), or the default ``score``.

    Raises:
        PlugsurgeonError: A direction is neither ``maximize`` nor ``minimize``, or a name is a built-in cost's.
    """
    if not has_evaluate:
        if metrics:
            raise PlugsurgeonError("metrics were declared but no evaluate function was given",
                                   hint="pass evaluate=..., or leave metrics out and optimise costs only")
        return []
    if not metrics:
        return [Metric("score")]
    items = metrics.items() if isinstance(metrics, Mapping) else [(name, "maximize") for name in metrics]
    found = []
    for name, direction in items:
        if direction not in ("maximize", "minimize"):
            raise PlugsurgeonError(f"metric '{name}': direction '{direction}' is neither 'maximize' nor 'minimize'",
                                   hint="declare each metric as {'top1': 'maximize'} or {'loss': 'minimize'}")
        if name in COSTS:
            raise PlugsurgeonError(f"metric '{name}' has the name of a built-in cost", hint=f"costs are {', '.join(COSTS)}: ask for them with costs=[...]")
        found.append(Metric(str(name), direction))  # type: ignore[arg-type]
    return found


def costs_of(costs: Sequence[str]) -> list[Metric]:
    """The built-in costs asked for, each minimised.

    Raises:
        PlugsurgeonError: An unknown cost.
    """
    found: list[Metric] = []
    for name in costs:
        if name not in COSTS:
            raise PlugsurgeonError(f"unknown cost '{name}'", hint=f"costs are {', '.join(COSTS)}")
        if name in [m.name for m in found]:
            raise PlugsurgeonError(f"cost '{name}' is asked for twice")
        found.append(Metric(name, "minimize"))
    return found


def takes_trial(evaluate: Callable[..., Any]) -> bool:
    """Whether ``evaluate`` takes a second argument (the Optuna trial, for intermediate reports)."""
    try:
        parameters = list(inspect.signature(evaluate).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def metric_values(result: Any, metrics: list[Metric]) -> dict[str, float]:
    """What ``evaluate`` returned, as one finite float per declared metric.

    Raises:
        PlugsurgeonError: A metric is missing, not a number, or not finite.
    """
    if isinstance(result, Mapping):
        missing = [m.name for m in metrics if m.name not in result]
        if missing:
            raise PlugsurgeonError(f"evaluate returned {sorted(map(str, result))}, without {missing}",
                                   hint="return a dict with every declared metric, or declare the metrics it returns")
        raw = {m.name: result[m.name] for m in metrics}
    elif len(metrics) == 1:
        raw = {metrics[0].name: result}
    else:
        raise PlugsurgeonError(f"evaluate returned a {type(result).__name__}, but {len(metrics)} metrics are declared",
                               hint="return a dict with one value per declared metric")
    values = {}
    for name, value in raw.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PlugsurgeonError(f"evaluate's '{name}' is {type(value).__name__}, not a number") from None
        if not math.isfinite(number):
            raise PlugsurgeonError(f"evaluate's '{name}' is {number}", hint="a metric must be a finite number")
        values[name] = number
    return values


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, device: str | torch.device = "cpu", repeats: int = 10,
                    warmup: int = 2) -> float:
    """The median time of one forward, in milliseconds, on ``device`` at ``input_shape`` (its batch included).

    The model is put in eval mode and moved to ``device``: pass a copy you do not need as it was.
    """
    device = torch.device(device)
    model.eval().to(device)
    example = torch.randn(*input_shape, device=device)
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(example)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def import_objective(spec: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names, imported (the caller trusts that code).

    Raises:
        PlugsurgeonError: The name is malformed, or the module or function cannot be found.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PlugsurgeonError(f"objective '{spec}' is not package.module:function",
                               hint="for example --objective mypackage.evaluation:top1")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PlugsurgeonError(f"cannot import '{module_name}' for the objective: {error}",
                               hint="run from the directory that holds it, or install it") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PlugsurgeonError(f"'{module_name}' has no function '{attribute}'")
    return function
