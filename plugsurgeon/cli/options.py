"""Options shared by several commands, and turning their text into values."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # annotations only: the CLI imports torch when a command needs it
    from torch import nn

InputShape = Annotated[
    str, typer.Option("--input-shape", help="input shape N,C,H,W used for tracing", metavar="N,C,H,W")
]
Json = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]
# dir_okay=False: a directory is refused while parsing, with typer's "is a directory", before any model is built.
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        dir_okay=False,
        help="checkpoint to load before surgery: .safetensors or a weights-only torch file",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="replace the saved model in an existing -o directory")]
TrustSource = Annotated[
    bool,
    typer.Option(
        "--trust-source",
        help="MODEL is a saved directory you trust: let its manifest import and call the package.module:factory it names "
        "(without this, a directory may only name torchvision or timm models)",
    ),
]
DEFAULT_SHAPE = "1,3,224,224"


def parse_shape(text: str) -> tuple[int, ...]:
    from plugsurgeon.errors import PlugsurgeonError

    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise PlugsurgeonError(
            f"--input-shape '{text}' is not a list of positive sizes",
            hint="write it as N,C,H,W, for example --input-shape 1,3,224,224",
        )
    return dims


def check_output(output: Path, *, force: bool) -> None:
    """Refuse an -o that holds a saved model, before the model is loaded or anything is computed.

    ps.save refuses the same directory, but only after the whole surgery (or deploy) has run; here the
    refusal costs nothing. What counts as a saved model is io's rule (its two file names, links
    included); other files in the directory are never touched, so they do not need --force.
    """
    import os

    from plugsurgeon.errors import PlugsurgeonError
    from plugsurgeon.store.saved import MANIFEST, WEIGHTS

    if not os.path.lexists(output):
        return
    if not output.is_dir():
        raise PlugsurgeonError(
            f"output '{output}' exists and is not a directory", hint="choose a new directory with -o"
        )
    saved = [name for name in (MANIFEST, WEIGHTS) if os.path.lexists(output / name)]
    if saved and not force:
        raise PlugsurgeonError(
            f"output '{output}' already holds a saved model ({', '.join(saved)}); nothing was done",
            hint="pass --force to replace it, or choose a new directory with -o",
        )


def load_model(spec: str, *, trust_source: bool):
    """ps.load_model, trusting a saved directory's import-path source only when --trust-source was given.

    Whatever building the model prints goes to stderr: a trusted factory's own output (Ultralytics
    prints its layer table) would otherwise be mixed into `--json` on stdout."""
    import plugsurgeon as ps

    with _stdout_to_stderr():
        # The keyword is passed only when set, so the default stays whatever the library's safe default is.
        return ps.load_model(spec, trust_source=True) if trust_source else ps.load_model(spec)


@contextlib.contextmanager
def _stdout_to_stderr():
    # Both Python's stream and the process's descriptor 1: loggers hold the stream they were given at
    # creation, and compiled code writes to the descriptor.
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout descriptor (an embedding host closed it): nothing to move
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_recipes(specs: list[str] | None, model: str, *, trust_source: bool) -> bool:
    """Each ``--recipe`` exists, reads as plain YAML and names known plugins and roles, checked before
    torch and the model load (which take seconds): a typo in a name or a file is reported at once. The
    schema is checked next, when the recipe is loaded, still before the model is built -- unless a step
    names a plugin that the model's own module may register (``package.module:factory``, a trusted
    directory): True then, and the caller builds the model first."""
    from plugsurgeon.surgery.recipe_yaml import check_recipe_text

    user_code = trust_source if Path(model).is_dir() else ":" in model and not model.startswith(("timm:", "torchvision:"))
    return any([check_recipe_text(spec, user_plugins=user_code) for spec in specs or []])


def save(model: nn.Module, output: Path, *, force: bool) -> None:
    """ps.save; --force is passed on so the library does not refuse the directory check_output allowed."""
    import plugsurgeon as ps

    if force:
        ps.save(model, output, force=True)
    else:
        ps.save(model, output)


def parse_where(text: str, kind: str | None):
    """``--where``: a recipe step's ``where:`` selectors as YAML, validated as the recipe would be.

    Merged over an alias's own selector (``--kind conv3x3`` is conv with kernel 3) as a step's are.
    """
    import yaml
    from pydantic import ValidationError

    from plugsurgeon.errors import PlugsurgeonError
    from plugsurgeon.sites.select import Where
    from plugsurgeon.sites.site import ALIASES

    hint = "write it as YAML, for example --where '{kernel: 3, stages: [4, 5]}'; `plugsurgeon sites --help` lists the selectors"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PlugsurgeonError(
            f"--where '{text}' is not YAML: {getattr(error, 'problem', error)}", hint=hint
        ) from None
    if not isinstance(data, dict):
        raise PlugsurgeonError(f"--where '{text}' is not a mapping of selectors", hint=hint)
    alias = ALIASES.get(kind, (kind, {}))[1] if kind is not None else {}
    try:
        return Where(**{**alias, **data})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "where"
        message = "unknown selector" if first["type"] == "extra_forbidden" else first["msg"]
        raise PlugsurgeonError(f"--where: '{field}': {message}", hint=hint) from None
    except TypeError:  # a key that is not a string
        raise PlugsurgeonError(
            f"--where '{text}' has a selector name that is not a word", hint=hint
        ) from None
