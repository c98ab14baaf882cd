"""The plugsurgeon command line: thin typer commands over the Python API, and one error boundary.

Nothing here imports torch at module level, so ``plugsurgeon --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from plugsurgeon.cli import deploy_commands
from plugsurgeon.cli.options import DEFAULT_SHAPE, InputShape, Json, Weights, parse_shape

app = typer.Typer(
    name="plugsurgeon",
    help="Model surgery for PyTorch: find insertion points by role, splice in plug-and-play modules, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(command):
    """The error boundary: a user's mistake is one message and a hint on stderr, exit code 1, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from plugsurgeon.errors import PlugsurgeonError

        try:
            return command(*args, **kwargs)
        except PlugsurgeonError as error:
            from plugsurgeon.cli.render import error as show

            show(error.message, error.hint)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@user_errors
def apply(
    model: Annotated[str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")],
    recipe: Annotated[list[str], typer.Option("--recipe", "-r", help="built-in recipe name or YAML file; repeat to chain")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write weights.safetensors + manifest.json here")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (sites, params, FLOPs) and change nothing")] = False,
    weights: Weights = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    json_output: Json = False,
) -> None:
    """Apply one or more recipes to a model, print what changed, and optionally save the result."""
    import plugsurgeon as ps
    from plugsurgeon.cli import render

    shape = parse_shape(input_shape)
    recipes = [ps.load_recipe(r) for r in recipe]  # every recipe is validated before the model is even built
    if output is not None and output.exists() and not output.is_dir():
        raise ps.PlugsurgeonError(f"output '{output}' exists and is not a directory", hint="choose a new directory with -o")
    net = ps.load_model(model)
    if weights is not None:
        ps.load_weights(net, weights)
    reports = []
    for each in recipes:
        result = ps.apply(net, each, input_shape=shape, dry_run=dry_run)
        reports.append(result.report)
        net = result.model
    if output is not None and not dry_run:
        ps.save(net, output)
    if json_output:
        render.print_json({"reports": [r.to_dict() for r in reports], "output": str(output) if output and not dry_run else None})
        return
    for report in reports:
        render.surgery_summary(report, dry_run=dry_run)
    if dry_run:
        render.console.print("dry run: nothing was changed or written")
    elif output is not None:
        render.console.print(f"saved to {output} (load with plugsurgeon.load('{output}'))")
    else:
        render.console.print("nothing written: pass -o DIR to save the edited model")


@app.command()
@user_errors
def sites(
    model: Annotated[str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")],
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="role, role family or alias: residual, residual.branch, conv, conv3x3, downsample, stage, backbone, neck, upsample")] = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    json_output: Json = False,
) -> None:
    """List the insertion points of a model, by role."""
    import plugsurgeon as ps
    from plugsurgeon.cli import render
    from plugsurgeon.sites.find import check_role

    if kind is not None:
        check_role(kind)
    shape = parse_shape(input_shape)
    net = ps.load_model(model)
    traced = ps.trace(net, shape)
    found = ps.find_sites(traced, kind)
    if json_output:
        render.print_json([s.to_dict() for s in found])
        return
    render.console.print(render.sites_table(found, f"{len(found)} {kind or ''} sites in {model}".replace("  ", " ")))
    if not traced.whole:
        render.console.print(f"traced parts: {', '.join(p.path for p in traced.parts)}; left alone: {', '.join(p or '(root)' for p, _ in traced.untraced)}")


@app.command()
@user_errors
def plugins(json_output: Json = False) -> None:
    """List the plugin catalog: modes, roles, identity at init and papers."""
    import plugsurgeon as ps
    from plugsurgeon.cli import render

    specs = list(ps.catalog().values())
    if json_output:
        render.print_json([s.to_dict() for s in specs])
        return
    render.console.print(render.plugins_table(specs))


@app.command()
@user_errors
def recipes(json_output: Json = False) -> None:
    """List the built-in recipes."""
    import plugsurgeon as ps
    from plugsurgeon.cli import render

    found = list(ps.builtin_recipes().values())
    if json_output:
        render.print_json([{"name": r.name, "description": r.description, "paper": r.paper,
                            "steps": [s.model_dump(mode="json", exclude_defaults=True) for s in r.steps]} for r in found])
        return
    render.console.print(render.recipes_table(found))


deploy_commands.register(app, user_errors)


def main() -> None:
    """Console entry point: usage errors exit 1 with one message, like every other user mistake."""
    from typer._click import exceptions as click_errors  # typer vendors click; its errors live here

    try:
        code = app(standalone_mode=False)
    except click_errors.UsageError as error:
        from plugsurgeon.cli.render import error as show

        command = error.ctx.command_path if error.ctx is not None else "plugsurgeon"
        show(error.format_message(), f"see `{command} --help`")
        sys.exit(1)
    except click_errors.Abort:
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence; a bug, not a user mistake
        if os.environ.get("PLUGSURGEON_DEBUG"):
            raise
        from plugsurgeon.cli.render import error as show

        show(f"internal error: {type(error).__name__}: {error}", "this is a plugsurgeon bug; rerun with PLUGSURGEON_DEBUG=1 for the traceback and report it")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
