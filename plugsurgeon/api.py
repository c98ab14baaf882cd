"""Entry points that take a model as users hold it."""

from __future__ import annotations

from torch import nn

from plugsurgeon.graph.trace import Traced
from plugsurgeon.graph.trace import trace as _trace
from plugsurgeon.sites.find import locate
from plugsurgeon.sites.site import Site
from plugsurgeon.surgery import DEFAULT_INPUT_SHAPE


def trace(model: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> Traced:
    """Trace a model (or its largest traceable parts) with shapes for every node."""
    return _trace(model, tuple(input_shape))


def find_sites(model: nn.Module | Traced, kind: str | None = None, *, input_shape=DEFAULT_INPUT_SHAPE) -> list[Site]:
    """Every insertion point of ``kind`` (a role such as ``residual.branch``, a family such as ``downsample``, or an alias such as ``conv3x3``)."""
    traced = model if isinstance(model, Traced) else trace(model, input_shape)
    return locate(traced, kind)
