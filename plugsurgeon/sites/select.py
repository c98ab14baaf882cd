"""Narrowing a list of sites: filters on what a site is, then on where it sits in the list."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field

from plugsurgeon.sites.site import Site


class Where(BaseModel):
    """Selectors of a recipe step. Attribute filters run first, then ``per_stage_last``, ``every``, ``last``, ``first``.

    A recipe step's ``where:`` (``plugsurgeon sites MODEL --where '{...}'`` shows what it keeps).
    Filters left unset keep every site.

    Attributes:
        include: Globs on the site path; keep the sites matching any.
        exclude: Globs on the site path; drop the sites matching any.
        stages: Stage indices to keep (log2 of the cumulative stride: C2..C5 = 2..5).
        kernel: A conv site's square kernel size.
        stride: A conv or pooling site's stride.
        groups: A conv site's groups.
        depthwise: Keep only depthwise convs (true), or only others (false).
        in_residual: Keep convs inside (true) or outside (false) residual branches.
        min_channels: The fewest channels a site's map may have.
        max_channels: The most channels a site's map may have.
        every: Keep every n-th site (the 1st, the n+1-th, ...).
        offset: Start counting ``every`` from this site index.
        last: Keep the last k sites (applied before ``first``).
        first: Keep the first k sites (``last: 2, first: 1`` is the second to last).
        per_stage_last: Keep the last k sites of each stage.

    Examples:
        >>> ps.Where(stages=[4, 5], exclude=["layer4.2.*"])
        >>> recipe = {"name": "late-se", "steps": [{"plugin": "se", "at": "residual.branch", "where": {"stages": [4, 5]}}]}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: list[str] = Field(default_factory=list, description="globs on the site path; keep sites matching any")
    exclude: list[str] = Field(default_factory=list, description="globs on the site path; drop sites matching any")
    stages: list[int] | None = Field(default=None, description="stage indices (log2 of the cumulative stride: C2..C5 = 2..5)")
    kernel: int | None = Field(default=None, ge=1, description="square kernel size of a conv site")
    stride: int | None = Field(default=None, ge=1, description="stride of a conv or pooling site")
    groups: int | None = Field(default=None, ge=1)
    depthwise: bool | None = None
    in_residual: bool | None = Field(default=None, description="keep convs inside (true) or outside (false) residual branches")
    min_channels: int | None = Field(default=None, ge=1)
    max_channels: int | None = Field(default=None, ge=1)
    every: int | None = Field(default=None, ge=1, description="keep every n-th site (1st, n+1-th, ...)")
    offset: int = Field(default=0, ge=0, description="start counting `every` from this site index")
    last: int | None = Field(default=None, ge=1, description="keep the last k sites (applied before `first`)")
    first: int | None = Field(default=None, ge=1, description="keep the first k sites (last: 2, first: 1 is the second to last)")
    per_stage_last: int | None = Field(default=None, ge=1, description="keep the last k sites of each stage")


def _keep(site: Site, where: Where) -> bool:
    if where.include and not any(fnmatchcase(site.path, g) for g in where.include):
        return False
    if any(fnmatchcase(site.path, g) for g in where.exclude):
        return False
    if where.stages is not None and site.stage not in where.stages:
        return False
    if where.kernel is not None and (site.kernel is None or set(site.kernel) != {where.kernel}):
        return False
    if where.stride is not None and site.stride != where.stride:
        return False
    if where.groups is not None and site.groups != where.groups:
        return False
    if where.depthwise is not None and site.depthwise != where.depthwise:
        return False
    if where.in_residual is not None and site.in_residual != where.in_residual:
        return False
    if where.min_channels is not None and site.channels < where.min_channels:
        return False
    return where.max_channels is None or site.channels <= where.max_channels


def select(sites: list[Site], where: Where) -> list[Site]:
    kept = [s for s in sites if _keep(s, where)]
    if where.per_stage_last is not None:
        by_stage: dict[int, list[Site]] = {}
        for site in kept:
            by_stage.setdefault(site.stage, []).append(site)
        chosen = {id(s) for group in by_stage.values() for s in group[-where.per_stage_last :]}
        kept = [s for s in kept if id(s) in chosen]
    if where.every is not None:
        kept = kept[where.offset :: where.every]
    if where.last is not None:
        kept = kept[-where.last :]
    if where.first is not None:
        kept = kept[: where.first]
    return kept
