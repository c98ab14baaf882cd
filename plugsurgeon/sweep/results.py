"""A sweep's results, read back from its study: ranked candidates, the Pareto front, recipes ready for ``apply``, a plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plugsurgeon.sweep.objectives import Metric


@dataclass
class Row:
    """One trial of the study.

    Attributes:
        number: The trial's number in the study.
        state: ``COMPLETE``, ``FAIL``, ``PRUNED`` or ``RUNNING``.
        label: The candidate in a few words.
        values: Each objective's value (metrics, then costs), for a complete trial.
        recipe: The candidate's recipe as a mapping (None: the unedited model).
        key: The candidate's edits; trials with equal keys are one candidate.
        error: Why it failed or was pruned.
        duplicate_of: The earlier trial of the same candidate whose values it took, if any.
        seconds: How long it took.
    """

    number: int
    state: str
    label: str = ""
    values: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    key: str | None = None
    error: str | None = None
    duplicate_of: int | None = None
    seconds: float | None = None
    invalid: bool = False  # the sampler's choice was no candidate (a step that must be used chose no stage)


def row_of(trial: Any, objectives: list[Metric]) -> Row:
    """A Row from an Optuna FrozenTrial of a sweep."""
    attrs = trial.user_attrs
    values = dict(zip([o.name for o in objectives], trial.values, strict=False)) if trial.values else {}
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return Row(trial.number, trial.state.name, attrs.get("label", ""), values, attrs.get("recipe"), attrs.get("key"),
               attrs.get("error"), attrs.get("duplicate_of"), seconds, bool(attrs.get("invalid")))


def dominates(a: dict[str, float], b: dict[str, float], objectives: list[Metric]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for o in objectives:
        x, y = (a[o.name], b[o.name]) if o.direction == "maximize" else (-a[o.name], -b[o.name])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(rows: list[Row], objectives: list[Metric]) -> list[Row]:
    """The rows no other row dominates (``dominates``), in the order given."""
    return [r for r in rows if not any(dominates(other.values, r.values, objectives) for other in rows if other is not r)]


@dataclass
class SweepResult:
    """What a sweep found, from every trial stored in its study (earlier runs and other workers included).

    Attributes:
        study_name: The Optuna study's name.
        storage: Where the study is stored (a journal file or a database URL).
        objectives: The metrics, then the costs, each with its direction.
        rows: Every trial.
        output: The directory results were written to, if any.
        stopped: Whether Ctrl-C stopped the sweep before its trials were done.

    Examples:
        >>> result = ps.sweep.run(model, "space.yaml", evaluate, costs=["macs"], trials=20)
        >>> result.best.label, result.best.values
        >>> result.plot()  # metric against MACs, the Pareto front drawn
    """

    study_name: str
    storage: str
    objectives: list[Metric]
    rows: list[Row]
    output: Path | None = None
    stopped: bool = False  # by Ctrl-C, after the current trial

    @property
    def candidates(self) -> list[Row]:
        """The complete trials, one per candidate (a duplicate's values are its first trial's), best first."""
        complete = [r for r in self.rows if r.state == "COMPLETE" and r.duplicate_of is None]
        seen: set[str | None] = set()
        unique = []
        for row in sorted(complete, key=lambda r: r.number):
            if row.key is None or row.key not in seen:
                seen.add(row.key)
                unique.append(row)
        return sorted(unique, key=self._rank)

    def _rank(self, row: Row) -> tuple[float, ...]:
        return tuple(-row.values[o.name] if o.direction == "maximize" else row.values[o.name] for o in self.objectives)

    @property
    def pareto(self) -> list[Row]:
        """The candidates no other candidate beats in every objective, best first."""
        return pareto_front(self.candidates, self.objectives)

    @property
    def best(self) -> Row | None:
        """The best candidate by the first objective (ties by the next ones); None before any trial completes."""
        ranked = self.candidates
        return ranked[0] if ranked else None

    @property
    def failed(self) -> list[Row]:
        """The trials that failed or were pruned, with why (not the sampler's choices that were no candidate)."""
        return [r for r in self.rows if r.state in ("FAIL", "PRUNED") and not r.invalid]

    def to_dict(self) -> dict[str, Any]:
        pareto = {r.number for r in self.pareto}
        best = self.best
        return {"study": self.study_name, "storage": self.storage,
                "objectives": [asdict(o) for o in self.objectives],
                "best": None if best is None else best.number,
                "candidates": [{**asdict(r), "pareto": r.number in pareto} for r in self.candidates],
                "failed": [asdict(r) for r in self.failed],
                "trials": len(self.rows), "output": None if self.output is None else str(self.output)}

    def recipe_text(self, row: Row) -> str | None:
        """The candidate's recipe as YAML, ready for ``plugsurgeon apply -r``; None for the unedited model."""
        if row.recipe is None:
            return None
        recipe = {**row.recipe, "name": f"{self.study_name}-trial{row.number}", "description": row.label}
        return yaml.safe_dump(recipe, sort_keys=False)

    def plot(self, x: str | None = None, y: str | None = None) -> Any:
        """The candidates, metric against cost, the Pareto front joined by a line (needs matplotlib).

        Args:
            x: The objective on the horizontal axis (default: MACs, else latency, else params, else the second).
            y: The objective on the vertical axis (default: the first).

        Returns:
            A matplotlib Figure.
        """
        from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed

        names = [o.name for o in self.objectives]
        y = y or names[0]
        x = x or next((n for n in ("macs", "latency", "params") if n in names and n != y), names[1] if len(names) > 1 else y)
        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        rows = self.candidates
        axes.scatter([r.values[x] for r in rows], [r.values[y] for r in rows], color="0.6", label="candidates")
        front = sorted(pareto_front(rows, [o for o in self.objectives if o.name in (x, y)]), key=lambda r: r.values[x])
        axes.plot([r.values[x] for r in front], [r.values[y] for r in front], "o-", color="C3", label="Pareto front")
        best = self.best
        if best is not None:
            axes.annotate(best.label, (best.values[x], best.values[y]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        axes.set_xlabel(x)
        axes.set_ylabel(y)
        axes.legend(fontsize=8)
        axes.set_title(self.study_name)
        figure.tight_layout()
        return figure

    def write(self, directory: str | Path) -> Path:
        """Write ``results.json``, each candidate's recipe (``recipes/trial_N.yaml``), ``best.yaml`` and,
        with matplotlib installed and two objectives or more, ``pareto.png``.

        Returns:
            The directory.
        """
        directory = Path(directory)
        (directory / "recipes").mkdir(parents=True, exist_ok=True)
        for row in self.candidates:
            text = self.recipe_text(row)
            if text is not None:
                (directory / "recipes" / f"trial_{row.number}.yaml").write_text(text, encoding="utf-8")
        best = self.best
        best_text = self.recipe_text(best) if best is not None else None
        if best_text is not None:
            (directory / "best.yaml").write_text(best_text, encoding="utf-8")
        (directory / "results.json").write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        if len(self.objectives) > 1 and self.candidates:
            try:
                figure = self.plot()
            except ImportError:
                figure = None  # matplotlib is optional: the table and the JSON say the same
            if figure is not None:
                figure.savefig(directory / "pareto.png", dpi=120)
        self.output = directory
        return directory

