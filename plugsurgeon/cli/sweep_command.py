"""`plugsurgeon sweep`: where should the module go? A thin command over ``plugsurgeon.sweep``.

``--dry-run`` lists the distinct placements a space expands to, priced (parameters, MACs) without
training anything; otherwise an Optuna study searches them on the user's metric and built-in costs.
app.py calls ``register(app, user_errors)``. Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from plugsurgeon.cli.options import (
    DEFAULT_SHAPE,
    InputShape,
    Json,
    TrustSource,
    Weights,
    load_model,
    parse_shape,
)

BUILTIN_OBJECTIVES = ("classification", "detection")


def register(app: typer.Typer, user_errors=None) -> None:
    """Add the sweep command to ``app``, inside its error boundary ``user_errors``."""
    wrap = user_errors or (lambda command: command)
    app.command("sweep")(wrap(sweep))


def sweep(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")],
    space: Annotated[Path, typer.Option("--space", "-s", dir_okay=False, help="the search space YAML (docs/sweep.md)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the distinct placements with params and MACs; train nothing")] = False,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="your metric: package.module:function (imported and run: a module you trust), "
                     "or a built-in: classification (--data an ImageFolder root) or detection (--data a data.yaml; "
                     "MODEL an Ultralytics model such as ultralytics.nn.tasks:DetectionModel)"),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="the built-in objective's data: ImageFolder root (train/, val/) or YOLO data.yaml")] = None,
    maximize: Annotated[list[str] | None, typer.Option("--maximize", help="a metric your function returns, larger better; repeat")] = None,
    minimize: Annotated[list[str] | None, typer.Option("--minimize", help="a metric your function returns, smaller better; repeat")] = None,
    cost: Annotated[list[str] | None, typer.Option("--cost", help="a built-in cost to minimise too: params, macs, latency; repeat")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="trials to run the study to (default: the grid, else 20)")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="auto, grid, tpe, nsga2 or random")] = "auto",
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="a database URL (postgresql://user:pass@host/db) or journal file that "
                     "workers on any machine share; default: a journal file in -o"),
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="the study's name in the storage (default: the space's name)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="results and the study's journal (default: sweep-NAME)")] = None,
    train_steps: Annotated[int, typer.Option("--train-steps", min=0, help="classification: fine-tuning steps per candidate")] = 100,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="detection: training epochs per candidate")] = 1,
    batch: Annotated[int, typer.Option("--batch", min=1, help="built-in objectives' batch size")] = 32,
    device: Annotated[str, typer.Option("--device", help="where candidates train and latency is measured (cpu, cuda, cuda:1)")] = "cpu",
    seed: Annotated[int | None, typer.Option("--seed", help="the sampler's seed")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="start no trial after this many seconds")] = None,
    weights: Weights = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    trust_source: TrustSource = False,
    json_output: Json = False,
) -> None:
    """Search where a module should go: which plugin, stages, density and arguments, on your metric (Optuna)."""
    import plugsurgeon as ps
    from plugsurgeon.errors import PlugsurgeonError
    from plugsurgeon.sweep.space import load_space

    shape = parse_shape(input_shape)
    parsed = load_space(space)  # a bad space file is refused before the model is even built
    metrics = {**{m: "maximize" for m in maximize or []}, **{m: "minimize" for m in minimize or []}}
    evaluate = None
    if objective is not None:
        evaluate, metrics = _objective(objective, data, metrics, train_steps=train_steps, epochs=epochs, batch=batch, device=device,
                                       image_size=shape[-1])
    elif metrics:
        raise PlugsurgeonError("--maximize/--minimize name what --objective returns, and no --objective was given",
                               hint="pass --objective package.module:function")
    elif data is not None:
        raise PlugsurgeonError("--data is for the built-in objectives", hint="pass --objective classification or --objective detection")
    if not dry_run and evaluate is None and not cost:
        raise PlugsurgeonError("nothing to optimise: give --objective, --cost, or both",
                               hint="for example --objective mypackage.eval:top1 --cost macs; --dry-run only lists the placements")
    net = load_model(model, trust_source=trust_source)
    if weights is not None:
        ps.load_weights(net, weights)
    traced = ps.trace(net, shape)
    if dry_run:
        from plugsurgeon.sweep.expand import expand

        expansion = expand(net, parsed, traced=traced, model_name=model)
        _print_expansion(expansion, model, parsed.name, json_output)
        return
    quiet = bool(ctx.find_root().params.get("quiet"))
    result = _run(net, parsed, evaluate, metrics, cost or [], trials, output, storage, study, sampler, traced, seed, timeout, device, quiet)
    _print_result(result, model, json_output)
    if result.stopped:
        from plugsurgeon.cli.stderr import plain

        plain("stopped by Ctrl-C after the current trial; the study is kept: run the same command again to resume")
        raise typer.Exit(130)


def _objective(spec: str, data: Path | None, metrics: dict[str, str], **options: Any) -> tuple[Any, dict[str, str]]:
    from plugsurgeon.errors import PlugsurgeonError

    if spec in BUILTIN_OBJECTIVES:
        if data is None:
            what = "an ImageFolder root with train/ and val/" if spec == "classification" else "a YOLO data.yaml"
            raise PlugsurgeonError(f"--objective {spec} needs --data: {what}")
        if metrics:
            raise PlugsurgeonError(f"--objective {spec} declares its own metric; leave --maximize/--minimize out")
        if spec == "classification":
            from plugsurgeon.sweep.classification import ImageFolderObjective

            return ImageFolderObjective(data, steps=options["train_steps"], batch_size=options["batch"], device=options["device"],
                                        image_size=options["image_size"]), {"top1": "maximize"}
        from plugsurgeon.sweep.detection import DetectionObjective

        return DetectionObjective(data, epochs=options["epochs"], imgsz=options["image_size"], batch=options["batch"],
                                  device=options["device"]), {"map50_95": "maximize"}
    from plugsurgeon.sweep.objectives import import_objective

    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script, unlike python -m, does not look here
        sys.path.insert(0, os.getcwd())
    return import_objective(spec), metrics


def _run(net, space, evaluate, metrics, costs, trials, output, storage, study, sampler, traced, seed, timeout, device, quiet):
    from plugsurgeon.cli.render import errors
    from plugsurgeon.sweep.study import sweep as run_sweep

    def report(done) -> None:
        row = done.row
        if quiet:
            return
        values = ", ".join(f"{k} {_value(v)}" for k, v in row.values.items())
        left = f"; about {_duration(done.seconds_left)} left" if done.seconds_left is not None and done.done < done.total else ""
        what = values if row.state == "COMPLETE" else f"{row.state.lower()}: {row.error or ''}"
        same = f" (same edits as trial {row.duplicate_of})" if row.duplicate_of is not None else ""
        errors.print(f"trial {row.number} [{done.done}/{done.total}] {row.label or '-'}: {what}{same}{left}", soft_wrap=True,
                     markup=False, highlight=False)

    return run_sweep(net, space, evaluate, metrics=metrics or None, costs=costs, trials=trials, output=output, storage=storage,
                     study_name=study, sampler=sampler, traced=traced, seed=seed, timeout=timeout, device=device, on_trial=report)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_expansion(expansion, model: str, name: str, json_output: bool) -> None:
    from plugsurgeon.cli import render
    from plugsurgeon.cli.render import Column, human, signed

    if json_output:
        render.print_json(expansion.to_dict())
        return
    columns = [Column("#", "right"), Column("candidate"), Column("choices", "right", drop=3), Column("edits", "right", drop=2),
               Column("params", "right"), Column("Δparams", "right", drop=1), Column("MACs", "right"), Column("ΔMACs", "right", drop=1)]
    rows = [[str(i), c.label, str(c.same), str(c.edits), human(c.params), signed(c.params_added), human(c.macs), signed(c.macs_added)]
            for i, c in enumerate(expansion.candidates, start=1)]
    title = (f"space '{name}' on {model}: {expansion.combinations} combinations, {len(expansion.candidates)} distinct placements"
             + (f", {len(expansion.refused)} refused" if expansion.refused else ""))
    render.print_table(title, columns, rows)
    if expansion.baseline is not None:
        render.paragraph(f"unedited: {human(expansion.baseline.params)} params, {human(expansion.baseline.macs)} MACs")
    for refused in expansion.refused:
        render.paragraph(f"{refused.label}: {refused.error}", prefix=render.styled("refused: ", "yellow"), indent=4)
    render.console.print("dry run: nothing was trained or written")


def _print_result(result, model: str, json_output: bool) -> None:
    from plugsurgeon.cli import render
    from plugsurgeon.cli.render import Column

    if json_output:
        render.print_json(result.to_dict())
        return
    pareto = {r.number for r in result.pareto}
    names = [o.name for o in result.objectives]
    columns = [Column("rank", "right"), Column("trial", "right", drop=2), Column("candidate"),
               *[Column(f"{n} ({'max' if o.direction == 'maximize' else 'min'})", "right") for n, o in zip(names, result.objectives, strict=True)],
               *([Column("Pareto", drop=1)] if len(names) > 1 else [])]
    rows = []
    for rank, row in enumerate(result.candidates, start=1):
        cells = [str(rank), str(row.number), row.label, *[_value(row.values[n]) for n in names]]
        if len(names) > 1:
            cells.append("*" if row.number in pareto else "")
        rows.append(cells)
    render.print_table(f"sweep '{result.study_name}' on {model}: {len(result.candidates)} candidates, {len(result.rows)} trials", columns, rows)
    for row in result.failed:
        render.paragraph(f"trial {row.number} {row.label or ''}: {row.error or ''}", prefix=render.styled(f"{row.state.lower()}: ", "yellow"), indent=4)
    best = result.best
    if best is not None:
        render.paragraph(f"best: trial {best.number}, {best.label} ({', '.join(f'{k} {_value(v)}' for k, v in best.values.items())})")
    if result.output is not None:
        where = result.output
        render.paragraph(f"written to {where}: results.json, recipes/trial_N.yaml" + (", pareto.png" if (where / "pareto.png").exists() else "")
                         + (f"; apply the best with `plugsurgeon apply {model} -r {where / 'best.yaml'}`" if (where / "best.yaml").exists() else ""))
    render.paragraph(f"study '{result.study_name}' in {result.storage}: run the same command again to resume or extend it (--trials)")


def _value(value: float) -> str:
    from plugsurgeon.cli.render import human

    return human(value) if abs(value) >= 1000 else f"{value:.4g}"
