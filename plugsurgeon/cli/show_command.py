"""`plugsurgeon show`: draw a model as blocks, with what its recipes (or deploy) changed, as an SVG file.

A thin command over ``ps.picture``; app.py calls ``register(app, user_errors)``. Nothing here imports
torch at module level.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from plugsurgeon.cli.options import (
    DEFAULT_SHAPE,
    InputShape,
    Json,
    TrustSource,
    check_recipes,
    load_model,
    parse_shape,
)


def register(app: typer.Typer, user_errors=None) -> None:
    """Add the show command to ``app``, inside its error boundary ``user_errors``."""
    wrap = user_errors or (lambda command: command)
    app.command("show")(wrap(show))


def show(
    model: Annotated[
        str, typer.Argument(help="torchvision name, timm:NAME, package.module:factory, or a saved directory")
    ],
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", "-r", help="built-in recipe name or YAML file; repeat to chain"),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="SVG file to write (default: MODEL_RECIPE.svg here; a directory: that name in it)",
        ),
    ] = None,
    deploy: Annotated[
        bool, typer.Option("--deploy", help="then deploy, and mark the blocks it fused")
    ] = False,
    input_shape: InputShape = DEFAULT_SHAPE,
    trust_source: TrustSource = False,
    json_output: Json = False,
) -> None:
    """Draw the model as blocks (stages, residual blocks, neck, head), the edited ones highlighted with their parameter and FLOP deltas."""
    import plugsurgeon as ps
    from plugsurgeon.cli.render import console, print_json

    pending = check_recipes(recipe, model, trust_source=trust_source)  # before torch loads
    shape = parse_shape(input_shape)
    # A plugin the model's own module registers exists once it is imported: then the model comes first.
    net = load_model(model, trust_source=trust_source) if pending else None
    recipes = [ps.load_recipe(r) for r in recipe or []]  # every recipe is validated before the model is built
    path = picture_path(output, model, [r.name for r in recipes], deploy)
    if net is None:
        net = load_model(model, trust_source=trust_source)
    results = []
    for each in recipes:
        results.append(ps.apply(net, each, input_shape=shape))
        net = results[-1].model
    if deploy:
        svg = ps.picture(ps.deploy(net, input_shape=shape), original=net)
    elif results:
        svg = ps.picture(results)
    else:
        svg = ps.picture(net, input_shape=shape)
    write(svg, path)
    edited = sum(len(r.report.edits) for r in results)
    if json_output:  # the file is written either way; the JSON says where, and what it shows
        print_json({"output": str(path), "edits": edited, "deployed": deploy, "picture": svg.data})
        return
    what = (
        f"{edited} edits marked"
        if results and not deploy
        else ("fused blocks marked" if deploy else "no edits")
    )
    console.print(f"wrote {path} ({what}; open it in a browser)", soft_wrap=True)


def picture_path(output: Path | None, model: str, recipes: list[str], deploy: bool) -> Path:
    """Where the picture goes, checked before any work: a refusal then costs nothing."""
    from plugsurgeon.errors import PlugsurgeonError

    default = default_name(model, recipes, deploy)
    if output is None:
        return Path(default)
    if output.is_dir():
        return output / default
    if output.suffix.lower() != ".svg":
        raise PlugsurgeonError(
            f"output '{output}' is not an .svg file: the picture is SVG", hint=f"for example -o {default}"
        )
    if not output.parent.is_dir():
        raise PlugsurgeonError(
            f"cannot write '{output}': directory '{output.parent}' does not exist",
            hint="create it first, or choose another -o",
        )
    return output


def default_name(model: str, recipes: list[str], deploy: bool) -> str:
    """``resnet18_cbam.svg``: the model's last name part and the recipes, in characters every file system takes."""
    stem = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].rsplit(":", 1)[-1] or "model"
    parts = [stem, *recipes, *(["deployed"] if deploy else [])]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)) + ".svg"


def write(svg: str, path: Path) -> None:
    from plugsurgeon.errors import PlugsurgeonError

    try:
        path.write_text(svg, encoding="utf-8")
    except OSError as error:
        raise PlugsurgeonError(
            f"cannot write '{path}': {error.strerror or error}", hint="choose another file with -o"
        ) from None
