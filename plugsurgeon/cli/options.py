"""Options shared by several commands, and turning their text into values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

InputShape = Annotated[str, typer.Option("--input-shape", help="input shape N,C,H,W used for tracing", metavar="N,C,H,W")]
Json = Annotated[bool, typer.Option("--json", help="print machine-readable JSON instead of tables")]
Weights = Annotated[Path | None, typer.Option("--weights", help="checkpoint to load before surgery: .safetensors or a weights-only torch file")]
DEFAULT_SHAPE = "1,3,224,224"


def parse_shape(text: str) -> tuple[int, ...]:
    from plugsurgeon.errors import PlugsurgeonError

    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise PlugsurgeonError(f"--input-shape '{text}' is not a list of positive sizes", hint="write it as N,C,H,W, for example --input-shape 1,3,224,224")
    return dims
