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
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from rich import box
from rich.cells import cell_len
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
    from plugsurgeon.cli.spinner import spinner

    with spinner(errors) as step, progress.reporting(step):
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


# -- tables that fit the width -------------------------------------------------------------------
#
# A table is laid out here, not by rich's shrinking: rich narrows columns below their longest word and
# then folds words ("layer1.0.bn2" becomes "layer1" / ".0.bn2"). Each column is at least as wide as its
# longest word, columns grow toward their longest cell while room is left, and when even that does
# not fit, columns are left out in a declared order and the table says which (--json has them all).
# On a terminal a table that fits is boxed; otherwise (narrow, or piped into a file or another
# program) it is drawn without borders, columns two spaces apart.


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    drop: int = 0  # 0: always shown; otherwise left out, lowest first, while the table does not fit
    wrap: bool = True  # cells may wrap between words; False keeps each cell on one line


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def _longest_line(text: str) -> int:
    return max((cell_len(part) for part in text.splitlines()), default=0)


def _overhead(count: int, boxed: bool) -> int:
    # boxed: a border and a space each side of every cell; compact: two spaces between columns.
    return 3 * count + 1 if boxed else 2 * (count - 1)


def layout(
    columns: list[Column], rows: list[list[str | Text]], width: int, *, terminal: bool
) -> tuple[list[int], list[int], bool]:
    """Which columns to show, their widths, and whether to draw borders, for a table ``width`` wide.

    Empty columns are never shown. A column is never narrower than its longest word (or, if it does
    not wrap, its longest cell), so no word is ever split.
    """
    texts = [[_plain(row[i]) for row in rows] for i in range(len(columns))]
    shown = [i for i, cells in enumerate(texts) if any(c.strip() for c in cells)] or list(range(len(columns)))
    low, high = [], []
    for column, cells in zip(columns, texts, strict=True):
        body = max(((_longest_word if column.wrap else _longest_line)(c) for c in cells), default=0)
        low.append(max(1, body, _longest_word(column.header)))
        high.append(max(low[-1], max((_longest_line(c) for c in cells), default=0), cell_len(column.header)))

    def needed(keep: list[int], boxed: bool) -> int:
        return sum(low[i] for i in keep) + _overhead(len(keep), boxed)

    boxed = terminal and needed(shown, True) <= width
    droppable = sorted((columns[i].drop, i) for i in shown if columns[i].drop)
    while needed(shown, boxed) > width and droppable:
        shown.remove(droppable.pop(0)[1])
    widths = {i: low[i] for i in shown}
    room = width - needed(shown, boxed)

    # Whole cells first, for the columns where a character of width unwraps the most cells; then what
    # is left is shared evenly among the columns that still wrap.
    def unwrapped_per_char(i: int) -> float:
        wrapping = sum(1 for c in texts[i] if _longest_line(c) > low[i])
        return wrapping / max(1, high[i] - low[i])

    for i in sorted(shown, key=unwrapped_per_char, reverse=True):
        if high[i] - widths[i] <= room:
            room -= high[i] - widths[i]
            widths[i] = high[i]
    while room > 0:
        growing = [i for i in shown if widths[i] < high[i]]
        if not growing:
            break
        share = max(1, room // len(growing))
        for i in growing:
            step = min(share, high[i] - widths[i], room)
            widths[i] += step
            room -= step
    return shown, [widths[i] for i in shown], boxed


def print_table(title: str | None, columns: list[Column], rows: list[list[str | Text]]) -> None:
    """A table that fits ``console.width`` without splitting a word; its title wraps between words above it."""
    width = console.width
    shown, widths, boxed = layout(columns, rows, width, terminal=console.is_terminal)
    if boxed:
        table = Table(show_edge=True)
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, w in zip(shown, widths, strict=True):
        table.add_column(
            columns[i].header,
            justify=columns[i].justify,
            width=w,
            no_wrap=not columns[i].wrap,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    if title:
        paragraph(title)
    console.print(table)
    dropped = [
        columns[i].header
        for i in range(len(columns))
        if columns[i].drop
        and columns[i].header
        and i not in shown
        and any(_plain(row[i]).strip() for row in rows)
    ]
    if dropped:
        paragraph(
            f"({', '.join(dropped)} left out to fit {width} columns; a wider terminal or --json shows them)"
        )


def paragraph(text: str, *, prefix: str | Text = "", indent: int = 0) -> None:
    """``prefix`` + ``text`` wrapped between words at the console's width, later lines indented by ``indent``."""
    head = _plain(prefix)
    lines = textwrap.wrap(
        head + text,
        width=max(20, console.width),
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [head]
    first = lines[0][len(head) :] if lines[0].startswith(head) else lines[0]
    console.print(line(prefix, first) if head else first, soft_wrap=True)
    for rest in lines[1:]:
        console.print(rest, soft_wrap=True)


def sites_table(sites, title: str) -> None:
    columns = [
        Column("#", "right", drop=4),
        Column("path", wrap=False),
        Column("role", wrap=False),
        Column("channels", "right"),
        Column("spatial", wrap=False),
        Column("stride", "right", drop=2),
        Column("stage", "right", drop=3),
        Column("kernel", drop=1),
    ]
    rows = []
    for index, site in enumerate(sites):
        spatial = "x".join(str(d) for d in site.spatial) if site.spatial else "-"
        kernel = "x".join(str(k) for k in site.kernel) if site.kernel else ""
        if site.depthwise:
            kernel += " dw"
        rows.append(
            [
                str(index),
                site.path,
                site.role,
                str(site.channels),
                spatial,
                str(site.stride),
                str(site.stage),
                kernel,
            ]
        )
    print_table(title, columns, rows)


def model_flops(flops: int | None, input_shape, *, parts: bool) -> None:
    """One line: the model's FLOPs at the traced input size, and the MACs papers quote."""
    if flops:
        paragraph(
            f"{'traced parts' if parts else 'model'}: {human(flops)} FLOPs = 2 x {human(flops / 2)} MACs at "
            f'{"x".join(map(str, input_shape))} (torch.utils.flop_counter; papers\' "FLOPs" are usually MACs)'
        )


def plugins_table(plugins: list[dict[str, Any]]) -> None:
    columns = [
        Column("name", wrap=False),
        Column("mode", wrap=False),
        Column("roles"),
        Column("identity at init", drop=2),
        Column("paper"),
        Column("summary", drop=1),
    ]
    rows = [
        [
            p["name"],
            p["mode"],
            ", ".join(p["roles"]),
            "yes" if p["identity_at_init"] else "no",
            p["paper"],
            p["summary"],
        ]
        for p in plugins
    ]
    print_table("plugin catalog (`plugsurgeon plugins show NAME` for one plugin's arguments)", columns, rows)


MODES = {"after": "inserted after the site", "replace": "replaces the module the site calls"}


def plugin_details(plugin: dict[str, Any]) -> None:
    """One plugin from its catalog entry: what it is, where it goes, then each argument it takes."""
    console.print(styled(plugin["name"], "bold"))
    paragraph(MODES.get(plugin["mode"], ""), prefix=f"mode: {plugin['mode']}, ", indent=2)
    paragraph(", ".join(plugin["roles"]), prefix="roles: ", indent=2)
    if plugin.get("suggested_where"):
        paragraph(
            ", ".join(f"{k}: {json.dumps(v)}" for k, v in plugin["suggested_where"].items()),
            prefix="typical where: ",
            indent=2,
        )
    if plugin.get("inputs") == "site+extra":
        paragraph(
            "the site and the other levels or inputs the site names as extra", prefix="reads: ", indent=2
        )
    paragraph(
        "yes: the edited model computes what it did until trained" if plugin["identity_at_init"] else "no",
        prefix="identity at init: ",
        indent=2,
    )
    paragraph(plugin["paper"], prefix="paper: ", indent=2)
    paragraph(plugin["summary"], prefix="what: ", indent=2)
    console.print()
    if not plugin["args"]:
        paragraph("no arguments: everything it needs comes from the graph")
        return
    paragraph("arguments a recipe may set (`args:`); structural ones such as channels come from the graph:")
    for name, arg in plugin["args"].items():
        facts = [arg["type"], f"default {json.dumps(arg['default'])}"] + (
            [f"range {arg['range']}"] if arg["range"] else []
        )
        paragraph("; ".join(facts), prefix=line(styled(name, "bold"), ": "), indent=6)
        if arg["description"]:
            paragraph(arg["description"], prefix="    ", indent=4)
        if arg["site_bound"]:
            paragraph(arg["site_bound"], prefix="    at a site: ", indent=6)


def recipes_table(recipes: list[dict[str, Any]]) -> None:
    columns = [Column("name", wrap=False), Column("steps"), Column("description", drop=1)]
    rows = []
    for recipe in recipes:
        steps = "; ".join(
            f"{s['plugin']} at {s['at']}"
            + (f" where {_flow(s['where'])}" if s.get("where") else "")
            + (" (skips unfit sites)" if s.get("on_unfit") == "skip" else "")
            for s in recipe["steps"]
        )
        rows.append([recipe["name"], steps, recipe["description"]])
    print_table("built-in recipes (`plugsurgeon recipes show NAME` prints one, ready to copy)", columns, rows)


def _flow(mapping: dict[str, Any]) -> str:
    """A ``where:`` mapping as the YAML flow a recipe would write: {stages: [4, 5], every: 2}."""
    return "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in mapping.items()) + "}"


def notes(items: list[str]) -> None:
    """The report's notes: sites skipped as unfit, shared instances edited at one path, conflicts.

    They change what the user got (a skipped pool is still aliased), so they are printed after every
    summary, never only in --json.
    """
    for note in items:
        paragraph(note, prefix=styled("note: ", "yellow"), indent=6)


def skipped_count(items: list[str]) -> int:
    # The engine words a skip as "step N (plugin) skipped 'path': reason" (surgery.plan).
    return sum(1 for note in items if ") skipped '" in note)


def surgery_summary(report, *, dry_run: bool) -> None:
    skipped = skipped_count(report.notes)
    title = (
        f"{'plan' if dry_run else 'applied'}: recipe '{report.recipe}' on {report.model} ({len(report.edits)} edits"
        + (f", {skipped} sites skipped as unfit" if skipped else "")
        + ")"
    )
    columns = [
        Column("step", "right", drop=4),
        Column("site", wrap=False),
        Column("role", wrap=False, drop=2),
        Column("channels", "right", drop=3),
        Column("spatial", wrap=False, drop=5),
        Column("plugin", wrap=False),
        Column("new module", wrap=False, drop=6),
        Column("params", "right"),
        Column("FLOPs", "right"),
        Column("MACs", "right", drop=1),
    ]
    rows = [
        [
            str(e.step),
            e.site,
            e.role,
            str(e.channels),
            "x".join(str(d) for d in e.spatial),
            e.plugin,
            e.module,
            signed(e.params_added),
            signed(e.flops_added),
            signed(None if e.flops_added is None else e.flops_added // 2),
        ]
        for e in report.edits
    ]
    print_table(title, columns, rows)
    totals: list[list[str | Text]] = [
        [
            "params",
            human(report.params_before),
            human(report.params_after),
            signed(report.params_after - report.params_before),
            "",
        ]
    ]
    if report.flops_before:
        before, added = report.flops_before, report.flops_added or 0
        totals += [
            [
                "FLOPs",
                human(before),
                human(before + added),
                signed(added),
                "2 x MACs, as torch.utils.flop_counter counts",
            ],
            [
                "MACs",
                human(before / 2),
                human((before + added) / 2),
                signed(added // 2),
                'the "FLOPs" most papers quote',
            ],
        ]
    print_table(
        None,
        [
            Column(""),
            Column("before", "right"),
            Column("after", "right"),
            Column("change", "right"),
            Column("", drop=1),
        ],
        totals,
    )
    if report.untraced:
        paragraph(
            f"traced parts: {', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}"
            + ("; FLOPs and MACs count the traced parts" if report.flops_before else "")
        )
    notes(report.notes)
    if report.renamed_keys:
        paragraph(
            ", ".join(report.renamed_keys[:10]),
            prefix=styled("renamed state_dict keys: ", "yellow"),
            indent=2,
        )


def error(message: str, hint: str | None) -> None:
    """A user's mistake: one message and a hint on stderr. Falls back to plain text if rich cannot print."""
    try:
        errors.print(line(styled("error:", "bold red"), " ", message), soft_wrap=True)
        if hint:
            errors.print(line(styled("hint:", "bold"), " ", hint), soft_wrap=True)
    except Exception:  # noqa: BLE001 - the error printer must not become the error
        plain(f"error: {message}" + (f"\nhint: {hint}" if hint else ""))
