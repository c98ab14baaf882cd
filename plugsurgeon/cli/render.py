"""Rich tables for the CLI. The core never prints; everything a user sees is drawn here.

Almost everything shown comes from the user or their model: model specs, recipe names and descriptions,
module paths (a ``ModuleDict`` key can hold any character), file names, error messages quoting all of
these. Rich would read ``[/]`` or ``[bold]`` in such text as markup and either restyle it or raise
``MarkupError`` from inside the error printer. So both consoles have markup (and ``:emoji:`` codes)
switched off: every string is printed literally, and the few styled words are ``Text`` objects built
here. Nothing has to remember to escape, and a new table cannot forget to.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from plugsurgeon.cli.stderr import plain

console = Console(markup=False, emoji=False)
errors = Console(stderr=True, markup=False, emoji=False, highlight=False)


def styled(text: str, style: str) -> Text:
    """A styled word for a table cell or a line; the only way styles enter the output."""
    return Text(text, style=style)


def line(*parts: str | Text) -> Text:
    """Join plain strings (printed literally) and styled Texts into one line."""
    out = Text()
    for part in parts:
        out.append(part if isinstance(part, Text) else str(part))
    return out


@contextlib.contextmanager
def progress_on_stderr() -> Iterator[None]:
    """A spinner on stderr naming the core's current step (plugsurgeon.progress), gone when the command ends."""
    from plugsurgeon import progress

    with errors.status("starting", spinner="dots") as status, progress.reporting(lambda message: status.update(message)):
        yield


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


def plugin_details(plugin: dict[str, Any]) -> None:
    """One plugin from ``PluginSpec.to_dict()``: what it is, then a table of its arguments."""
    console.print(line(styled(plugin["name"], "bold"), f" ({plugin['mode']}; roles: {', '.join(plugin['roles'])}; "
                       f"identity at init: {'yes' if plugin['identity_at_init'] else 'no'})"))
    console.print(plugin["paper"])
    console.print(plugin["summary"])
    if not plugin["args"]:
        console.print("no arguments: everything it needs comes from the graph")
        return
    table = Table(title="arguments (structural ones come from the graph)", title_justify="left")
    for column in ("argument", "type", "default", "range", "at a site", "description"):
        table.add_column(column, overflow="fold")
    for name, arg in plugin["args"].items():
        table.add_row(name, arg["type"], json.dumps(arg["default"]), arg["range"], arg["site_bound"] or "", arg["description"])
    console.print(table)


def recipes_table(recipes) -> Table:
    table = Table(title="built-in recipes", title_justify="left")
    for column in ("name", "steps", "description"):
        table.add_column(column, overflow="fold")
    for recipe in recipes:
        steps = "; ".join(f"{s.plugin} at {s.at}" + (" (skips unfit sites)" if s.on_unfit == "skip" else "") for s in recipe.steps)
        table.add_row(recipe.name, steps, recipe.description)
    return table


def notes(items: list[str]) -> None:
    """The report's notes: sites skipped as unfit, shared instances edited at one path, conflicts.

    They change what the user got (a skipped pool is still aliased), so they are printed after every
    summary, never only in --json.
    """
    for note in items:
        console.print(line(styled("note:", "yellow"), " ", note), soft_wrap=True)


def skipped_count(items: list[str]) -> int:
    # The engine words a skip as "step N (plugin) skipped 'path': reason" (surgery.plan).
    return sum(1 for note in items if ") skipped '" in note)


def surgery_summary(report, *, dry_run: bool) -> None:
    skipped = skipped_count(report.notes)
    title = (f"{'plan' if dry_run else 'applied'}: recipe '{report.recipe}' on {report.model} ({len(report.edits)} edits"
             + (f", {skipped} sites skipped as unfit" if skipped else "") + ")")
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
        console.print(f"traced parts: {', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}", soft_wrap=True)
    notes(report.notes)
    if report.renamed_keys:
        console.print(line(styled("renamed state_dict keys:", "yellow"), " ", ", ".join(report.renamed_keys[:10])), soft_wrap=True)


def error(message: str, hint: str | None) -> None:
    """A user's mistake: one message and a hint on stderr. Falls back to plain text if rich cannot print."""
    try:
        errors.print(line(styled("error:", "bold red"), " ", message), soft_wrap=True)
        if hint:
            errors.print(line(styled("hint:", "bold"), " ", hint), soft_wrap=True)
    except Exception:  # noqa: BLE001 - the error printer must not become the error
        plain(f"error: {message}" + (f"\nhint: {hint}" if hint else ""))


