"""Rich tables for the CLI. The core never prints; everything a user sees is drawn here."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def print_json(data: Any) -> None:
    # Plain print, not rich: JSON on stdout must not be wrapped or coloured.
    print(json.dumps(data, indent=2, default=str))


def human(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def signed(n: int | None) -> str:
    return "-" if n is None else ("+" if n >= 0 else "-") + human(abs(n))


def sites_table(sites, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("#", "path", "role", "channels", "spatial", "stride", "stage", "kernel"):
        table.add_column(column, justify="right" if column in ("#", "channels", "stride", "stage") else "left", overflow="fold")
    for index, site in enumerate(sites):
        spatial = "x".join(str(d) for d in site.spatial) if site.spatial else "-"
        kernel = "x".join(str(k) for k in site.kernel) if site.kernel else ""
        if site.depthwise:
            kernel += " dw"
        table.add_row(str(index), site.path, site.role, str(site.channels), spatial, str(site.stride), str(site.stage), kernel)
    return table


def plugins_table(specs) -> Table:
    table = Table(title="plugin catalog", title_justify="left", show_lines=False)
    for column in ("name", "mode", "roles", "identity at init", "paper", "summary"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        table.add_row(spec.name, spec.mode, ", ".join(spec.roles), "yes" if spec.identity_at_init else "no", spec.paper, spec.summary)
    return table


def recipes_table(recipes) -> Table:
    table = Table(title="built-in recipes", title_justify="left")
    for column in ("name", "steps", "description"):
        table.add_column(column, overflow="fold")
    for recipe in recipes:
        steps = "; ".join(f"{s.plugin} at {s.at}" for s in recipe.steps)
        table.add_row(recipe.name, steps, recipe.description)
    return table


def surgery_summary(report, *, dry_run: bool) -> None:
    title = f"{'plan' if dry_run else 'applied'}: recipe '{report.recipe}' on {report.model} ({len(report.edits)} edits)"
    table = Table(title=title, title_justify="left")
    for column in ("step", "site", "role", "channels", "spatial", "plugin", "new module", "params", "FLOPs"):
        table.add_column(column, justify="right" if column in ("step", "channels", "params", "FLOPs") else "left", overflow="fold")
    for edit in report.edits:
        spatial = "x".join(str(d) for d in edit.spatial)
        table.add_row(str(edit.step), edit.site, edit.role, str(edit.channels), spatial, edit.plugin, edit.module,
                      signed(edit.params_added), signed(edit.flops_added))
    console.print(table)
    flops = f"FLOPs {human(report.flops_before)} {signed(report.flops_added)}" if report.flops_before else ""
    console.print(f"params {human(report.params_before)} -> {human(report.params_after)} ({signed(report.params_after - report.params_before)})  {flops}")
    if report.untraced:
        console.print(f"traced parts: {', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}")
    for note in report.notes:
        console.print(f"note: {note}")
    if report.renamed_keys:
        console.print(f"[yellow]renamed state_dict keys:[/] {', '.join(report.renamed_keys[:10])}")


def error(message: str, hint: str | None) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        errors.print(f"[bold]hint:[/] {hint}", highlight=False, soft_wrap=True)
