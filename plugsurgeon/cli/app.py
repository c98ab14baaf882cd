"""The plugsurgeon command line: thin typer commands over the Python API, and one error boundary.

Nothing here imports torch at module level, so ``plugsurgeon --help`` stays fast.

Exit codes: 0 done; 1 a user's mistake (a ``PlugsurgeonError`` or a usage error: one message and a
hint, no traceback); 2 a plugsurgeon bug (one line; the traceback only with ``PLUGSURGEON_DEBUG=1``);
130 interrupted; 141 the reader of stdout went away (``| head``).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from plugsurgeon.cli import deploy_commands, helptext, show_command, sweep_command
from plugsurgeon.cli.options import (
    DEFAULT_SHAPE,
    Force,
    InputShape,
    Json,
    TrustSource,
    Weights,
    check_output,
    check_recipes,
    load_model,
    parse_shape,
    parse_where,
    save,
)
from plugsurgeon.cli.stderr import plain
from plugsurgeon.errors import PlugsurgeonError
from plugsurgeon.sites.site import ALIASES

# The exception classes the boundary sorts errors by are looked up here, once, from typer's public API:
# an ``except`` clause evaluates its class only when an error is in flight, so a name missing from the
# installed typer would turn every error into an AttributeError raised by the handler itself.
# (typer >= 0.26 vendors click: errors it raises are not ``click``'s classes, so ``import click`` would
# not catch them; typer.TyperException is the public base of its usage errors since 0.27.2.)
_USAGE_ERROR = typer.TyperException
_ABORT = typer.Abort
_EXIT = typer.Exit

app = typer.Typer(
    name="plugsurgeon",
    help="Model surgery for PyTorch: find insertion points by role, splice in plug-and-play modules, deploy.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


_options: dict[
    str, bool
] = {}  # the root command's options, set by its callback for the subcommand that follows


def _version(value: bool) -> None:
    if not value:
        return
    from importlib import metadata

    try:
        version = metadata.version("plugsurgeon")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        from plugsurgeon import __version__ as version
    typer.echo(f"plugsurgeon {version}")
    raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="no progress on stderr (it is shown only on a terminal anyway)"),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="print the version and exit")
    ] = False,
) -> None:
    _options["quiet"] = quiet
    # Bare `plugsurgeon` is a request for help, not a mistake: print it and exit 0. (typer's
    # no_args_is_help raises a usage error carrying the help text instead, which exits 2, or 1 here.)
    if ctx.invoked_subcommand is None:
        text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        raise typer.Exit(0)


def _progress():
    """Progress of the command's slow steps on stderr: only on a terminal, never with --quiet, never on stdout."""
    import contextlib

    from plugsurgeon.cli import render

    if _options.get("quiet") or not render.errors.is_terminal:
        return contextlib.nullcontext()
    return render.progress_on_stderr()


def _debug() -> bool:
    return os.environ.get("PLUGSURGEON_DEBUG", "") not in ("", "0")


def _show(message: str, hint: str | None) -> None:
    try:
        from plugsurgeon.cli import render

        render.error(message, hint)
    except Exception:  # noqa: BLE001 - rich missing or broken: the message still gets out
        plain(f"error: {message}" + (f"\nhint: {hint}" if hint else ""))


def exit_code_for(error: BaseException) -> int:
    """The error boundary: tell the user what went wrong in one message, and return the exit code.

    Never raises: every printer it calls falls back to plain stderr.
    """
    if isinstance(error, PlugsurgeonError):  # the core's hints speak Python; its flag form, where there is one, is ours
        _show(str(error.message), getattr(error, "cli_hint", None) or error.hint)
        return 1
    if isinstance(error, _USAGE_ERROR):  # unknown option, missing argument, bad value: typer's message
        context = getattr(error, "ctx", None)
        command = getattr(context, "command_path", None) or "plugsurgeon"
        try:
            message = error.format_message()
        except Exception:  # noqa: BLE001
            message = str(error)
        _show(message, f"see `{command} --help`")
        return 1
    if isinstance(error, (_ABORT, KeyboardInterrupt)):
        plain("aborted")
        return 130
    if isinstance(error, BrokenPipeError):
        # `plugsurgeon ... --json | head`: the reader left, nothing is wrong. Exit as a program killed by
        # SIGPIPE would, silently, with stdout pointed at /dev/null so the flush at exit cannot fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except Exception:  # noqa: BLE001 - no real stdout (captured in tests): nothing to silence
            pass
        return 141
    if _debug():
        try:
            traceback.print_exception(type(error), error, error.__traceback__)
        except Exception:  # noqa: BLE001
            pass
    try:
        text = (str(error).strip().splitlines() or [""])[0][:300]
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails
        text = "(no message)"
    plain(
        f"internal error: {type(error).__name__}: {text} (a plugsurgeon bug; "
        + (
            "please report it with the traceback above)"
            if _debug()
            else "rerun with PLUGSURGEON_DEBUG=1 for the traceback and report it)"
        )
    )
    return 2


def user_errors(command):
    """Run a command body inside the error boundary.

    main() would catch these too, but typer's CliRunner (and anyone calling ``app`` directly) bypasses
    main(); classifying here gives both the same messages and exit codes.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with _progress():
                return command(*args, **kwargs)
        except (_EXIT, _ABORT, _USAGE_ERROR):
            raise  # typer's own signals: typer and main() handle them
        except Exception as error:  # noqa: BLE001 - the boundary: nothing else leaves a command
            raise typer.Exit(exit_code_for(error)) from None

    return wrapper


@app.command()
@user_errors
def apply(
    model: Annotated[
        str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")
    ],
    recipe: Annotated[
        list[str], typer.Option("--recipe", "-r", help="built-in recipe name or YAML file; repeat to chain")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write weights.safetensors + manifest.json here")
    ] = None,
    force: Force = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan (sites, params, FLOPs) and change nothing")
    ] = False,
    weights: Weights = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    trust_source: TrustSource = False,
    json_output: Json = False,
) -> None:
    """Apply one or more recipes to a model, print what changed, and optionally save the result."""
    import plugsurgeon as ps
    from plugsurgeon.cli import render

    pending = check_recipes(recipe, model, trust_source=trust_source)  # a typo in a name or a file, before torch loads
    shape = parse_shape(input_shape)
    # A plugin the model's own module registers exists once it is imported: then the model comes first.
    net = load_model(model, trust_source=trust_source) if pending else None
    recipes = [ps.load_recipe(r) for r in recipe]  # every recipe is validated before the model is even built
    if output is not None:
        check_output(output, force=force)  # before any work: a refusal costs nothing and changes nothing
    if net is None:
        net = load_model(model, trust_source=trust_source)
    if weights is not None:
        ps.load_weights(net, weights)
    reports = []
    for each in recipes:
        result = ps.apply(net, each, input_shape=shape, dry_run=dry_run)
        reports.append(result.report)
        net = result.model
    written = output is not None and not dry_run
    if json_output:
        if written and output is not None:  # (written implies an output)
            save(net, output, force=force)
        render.print_json(
            {"reports": [r.to_dict() for r in reports], "output": str(output) if written else None}
        )
        return
    # The summary is drawn before anything is written: if drawing it ever failed, nothing would be on disk.
    for report in reports:
        render.surgery_summary(report, dry_run=dry_run)
    if dry_run:
        render.console.print("dry run: nothing was changed or written")
    elif written and output is not None:
        save(net, output, force=force)
        render.paragraph(f"saved to {output} (load with plugsurgeon.load({str(output)!r}))")
    else:
        render.console.print("nothing written: pass -o DIR to save the edited model")


@app.command(help=escape(helptext.sites_help()))
@user_errors
def sites(
    model: Annotated[
        str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")
    ],
    kind: Annotated[str | None, typer.Option("--kind", "-k", help=escape(helptext.kind_help()))] = None,
    where: Annotated[
        str | None, typer.Option("--where", "-w", help=escape(helptext.where_help()), metavar="YAML")
    ] = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    trust_source: TrustSource = False,
    json_output: Json = False,
) -> None:
    import plugsurgeon as ps
    from plugsurgeon.cli import render
    from plugsurgeon.graph.inputs import resize_notes
    from plugsurgeon.sites.find import check_role
    from plugsurgeon.sites.missing import why_no_sites
    from plugsurgeon.sites.seeds import seed_note, trace_checking_seeds

    if kind is not None:
        check_role(kind)
    selector = parse_where(where, kind) if where is not None else None
    shape = parse_shape(input_shape)
    net = load_model(model, trust_source=trust_source)
    traced, unstable = trace_checking_seeds(net, shape)
    if selector is None:
        found = ps.find_sites(traced, kind)
    else:
        from plugsurgeon.sites.select import select

        role, _alias = ALIASES.get(kind, (kind, {})) if kind is not None else (None, {})
        found = select(ps.find_sites(traced, role), selector)
    if json_output:
        render.print_json([s.to_dict() for s in found])
        return
    described = f"{kind} sites" if kind else "sites"
    render.sites_table(found, f"{len(found)} {described} in {model}" + (f" where {where}" if where else ""))
    render.model_flops(traced.flops, traced.input_shape, parts=not traced.whole)
    if not traced.whole:
        render.paragraph(
            f"traced parts: {', '.join(p.path for p in traced.parts)}; "
            f"left alone: {', '.join(p or '(root)' for p, _ in traced.untraced)}"
        )
    why = why_no_sites(traced, kind) if not found and selector is None else None
    render.notes(resize_notes(traced) + ([f"no {kind + ' ' if kind else ''}sites: {why}"] if why else [])
                 + [note for note in (seed_note(unstable),) if note])


plugins_app = typer.Typer(
    help="The plugin catalog; `plugins show NAME` for one plugin's arguments.", add_completion=False
)
app.add_typer(plugins_app, name="plugins")


@plugins_app.callback(invoke_without_command=True)
@user_errors
def plugins(ctx: typer.Context, json_output: Json = False) -> None:
    """List the plugin catalog: modes, roles, identity at init and papers."""
    if ctx.invoked_subcommand is not None:
        return
    from plugsurgeon.cli import listings, render

    found = listings.plugins()
    if json_output:
        render.print_json(found)
        return
    render.plugins_table(found)


@plugins_app.command("show")
@user_errors
def plugins_show(
    name: Annotated[str, typer.Argument(help="catalog name, e.g. se")], json_output: Json = False
) -> None:
    """One plugin: mode, roles, identity at init, paper, and every argument a recipe may set (type, default, range, site bound)."""
    from plugsurgeon.cli import listings, render

    found = listings.plugin(name)
    if json_output:
        render.print_json(found)
        return
    render.plugin_details(found)


recipes_app = typer.Typer(
    help="The built-in recipes; `recipes show NAME` prints one, ready to copy.", add_completion=False
)
app.add_typer(recipes_app, name="recipes")


@recipes_app.callback(invoke_without_command=True)
@user_errors
def recipes(ctx: typer.Context, json_output: Json = False) -> None:
    """List the built-in recipes: their steps and what they do."""
    if ctx.invoked_subcommand is not None:
        return
    from plugsurgeon.cli import listings, render

    found = listings.recipes()
    if json_output:
        render.print_json(found)
        return
    render.recipes_table(found)


@recipes_app.command("show")
@user_errors
def recipes_show(name: Annotated[str, typer.Argument(help="built-in recipe name, e.g. cbam")]) -> None:
    """Print a built-in recipe's YAML, and only that, on stdout: `plugsurgeon recipes show cbam > my.yaml`, edit, `apply -r my.yaml`."""
    from plugsurgeon.cli import listings

    sys.stdout.write(listings.recipe_text(name))
    sys.stdout.flush()


deploy_commands.register(app, user_errors)
show_command.register(app, user_errors)
sweep_command.register(app, user_errors)


def main() -> None:
    """Console entry point."""
    sys.exit(run())


def run(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv[1:]``) and return its exit code.

    Errors inside a command body are sorted by ``user_errors``; this catches what happens around them:
    usage errors while parsing, Ctrl-C, and anything typer itself raises.
    """
    try:
        code = app(args=args, prog_name="plugsurgeon", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - the last line of defence
        return exit_code_for(error)
    # standalone_mode=False returns the command's return value (None) or the code of a typer.Exit.
    return code if isinstance(code, int) else 0
