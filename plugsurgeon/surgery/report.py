"""Plain report dataclasses with to_dict(); rendering lives in the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from plugsurgeon.drawing.draw import picture


@dataclass
class EditReport:
    step: int
    plugin: str
    mode: str
    role: str
    site: str  # the site path
    module: str  # path of the new (or replacing) module
    channels: int
    spatial: tuple[int, ...]
    stage: int
    params_added: int
    flops_added: int | None


@dataclass
class SurgeryReport:
    model: str
    recipe: str
    input_shape: tuple[int, ...]
    traced: list[str]
    untraced: list[tuple[str, str]]
    edits: list[EditReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    flops_before: int | None = None
    new_keys: list[str] = field(default_factory=list)
    renamed_keys: list[str] = field(default_factory=list)
    applied: bool = False
    # The model's boxes and data flow (plugsurgeon.blockgraph.BlockGraph, plain data) that its picture
    # is drawn from; not part of to_dict().
    blocks: Any = field(default=None, repr=False, compare=False)

    @property
    def params_added(self) -> int:
        return sum(e.params_added for e in self.edits)

    @property
    def flops_added(self) -> int | None:
        counted = [e.flops_added for e in self.edits if e.flops_added is not None]
        return sum(counted) if counted else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, blocks=None))
        data.pop("blocks")
        data.update(params_added=self.params_added, flops_added=self.flops_added)
        return data

    def _repr_svg_(self) -> str | None:
        """A notebook shows the report as its picture (``ps.picture``); plain text when it has none."""
        if self.blocks is None:
            return None
        return str(picture(self))
