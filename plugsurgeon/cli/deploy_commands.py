"""`plugsurgeon deploy` and `plugsurgeon export`: thin commands over ps.deploy and ps.export_onnx.

app.py calls ``register(app, user_errors)``; nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from plugsurgeon.cli.options import (
    DEFAULT_SHAPE,
    Force,
    InputShape,
    Json,
    TrustSource,
    Weights,
    check_output,
    load_model,
    parse_shape,
    save,
)

if TYPE_CHECKING:  # annotations only: rich loads with the commands that print
    from rich.text import Text

ModelArg = Annotated[str, typer.Argument(help="a directory written by `plugsurgeon apply -o`, or any model spec (torchvision name, timm:NAME, package.module:factory)")]


def register(app: typer.Typer, user_errors=None) -> None:
    """Add the deploy and export commands to ``app``, inside its error boundary ``user_errors``."""
    wrap = user_errors or (lambda command: command)
    app.command("deploy")(wrap(deploy))
    app.command("export")(wrap(export))


def deploy(
    model: ModelArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the deployed model here (weights.safetensors + manifest.json)")] = None,
    force: Force = False,
    input_shape: InputShape = DEFAULT_SHAPE,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the comparison with the original model")] = False,
    atol: Annotated[float, typer.Option("--atol", help="absolute tolerance of the verification")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="tolerance relative to the largest output magnitude")] = 1e-4,
    weights: Weights = None,
    trust_source: TrustSource = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every reparameterized block, folded BatchNorm and verified part")] = False,
    json_output: Json = False,
) -> None:
    """Fuse train-time blocks (ACNet, ...) and conv-BatchNorm pairs into plain convs, verify, and save."""
    import plugsurgeon as ps

    shape = parse_shape(input_shape)
    if output is not None:
        check_output(output, force=force)  # before any work: a refusal costs nothing and changes nothing
    net = load_model(model, trust_source=trust_source)
    if weights is not None:
        ps.load_weights(net, weights)
    result = ps.deploy(net, input_shape=shape, verify=not no_verify, atol=atol, rtol=rtol)
    if json_output:
        from plugsurgeon.cli.render import print_json

        if output is not None:
            save(result.model, output, force=force)
        print_json({"report": result.report.to_dict(), "output": str(output) if output is not None else None})
        return
    deploy_summary(result.report, verbose=verbose)  # drawn before anything is written, like apply's
    if output is not None:
        save(result.model, output, force=force)
        _say(f"saved to {output} (load with plugsurgeon.load({str(output)!r}))")
        _say("export it with:")
        _print(f"  plugsurgeon export {output} --onnx FILE")  # whole, to copy: a command is not wrapped
    else:
        _say("nothing written: pass -o DIR to save the deployed model")


def export(
    model: ModelArg,
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write")],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="input shape N,C,H,W (default: the one the model was deployed with, else 1,3,224,224)", metavar="N,C,H,W")] = None,
    allow_unfused: Annotated[bool, typer.Option("--allow-unfused", help="export even if train-time blocks or foldable BatchNorms remain")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset version (default: the exporter's)")] = None,
    trust_source: TrustSource = False,
    json_output: Json = False,
) -> None:
    """Write a (deployed) model as ONNX and check it with onnxruntime against PyTorch."""
    import plugsurgeon as ps

    if input_shape is not None:
        parse_shape(input_shape)  # a malformed shape is refused before the model is built
    net = load_model(model, trust_source=trust_source)
    shape = parse_shape(input_shape) if input_shape is not None else _recorded_shape(net)
    report = ps.export_onnx(net, onnx, input_shape=shape, allow_unfused=allow_unfused, opset=opset)
    if json_output:
        from plugsurgeon.cli.render import print_json

        print_json(report.to_dict())
        return
    export_summary(report)


def _recorded_shape(net) -> tuple[int, ...]:
    from plugsurgeon.surgery.record import get_provenance

    for step in reversed(get_provenance(net).get("steps", [])):
        if step.get("kind") == "deploy" and step.get("input_shape"):
            return tuple(step["input_shape"])
    return parse_shape(DEFAULT_SHAPE)


_WIDTH = 80  # lines are wrapped here at most: what a pipe or a log shows whole


def _lines(text: str, *, indent: str = "  ", first: str = "") -> list[str]:
    """``text`` wrapped at word boundaries to the console's width (at most 80), later lines indented.

    Only spaces break a line: a module path or a number is never split, so a path longer than the whole
    width (rare) stays on its own, longer line.
    """
    import textwrap

    from plugsurgeon.cli.render import console

    width = max(40, min(console.width, _WIDTH))
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False) or [first]


def _say(text: str, *, label: str = "", style: str | None = None, indent: str = "  ") -> None:
    """Print ``text`` wrapped (see _lines), after an optional styled ``label``; soft_wrap so rich adds no breaks of its own."""
    from plugsurgeon.cli.render import console, line, styled

    lines = _lines(f"{label} {text}" if label else text, indent=indent)
    head: str | Text = lines[0]
    if label and style:
        head = line(styled(label, style), head[len(label):])
    console.print(head, soft_wrap=True)
    for rest in lines[1:]:
        console.print(rest, soft_wrap=True)


def _counted(items, key) -> list[str]:
    """``["53 BatchNorm2d into Conv2d", ...]``: items grouped by ``key``, most common first."""
    from collections import Counter

    return [f"{count} {what}" for what, count in Counter(key(item) for item in items).most_common()]


def _paths(paths: list[str], shown: int = 3) -> str:
    return ", ".join(paths[:shown]) + (f", ... {len(paths) - shown} more" if len(paths) > shown else "")


def deploy_summary(report, *, verbose: bool = False) -> None:
    """What deploy did, in a few lines; ``verbose`` adds one line per block and per BatchNorm."""
    from plugsurgeon.cli.render import human, signed

    _say(f"deployed {report.model}: {len(report.reparameterized)} blocks reparameterized, {len(report.folded)} BatchNorms folded, "
         f"{len(report.skipped)} left")
    if report.reparameterized:
        _say("; ".join(_counted(report.reparameterized, _conversion)), label="reparameterized:")
    if report.folded:
        _say("; ".join(_counted(report.folded, lambda f: f"{f.norm_type} into {f.layer_type}")), label="folded:")
    for reason, paths in _grouped(report.skipped):
        _say(f"{len(paths)} BatchNorm(s) not folded: {reason} ({_paths(paths)})", label="left:", style="yellow")
    for item in report.left_alone:
        _say(f"{item.path or '(model)'} {item.type}.{item.method}: {item.reason}", label="left alone:", style="yellow")
    _say(f"{human(report.params_before)} -> {human(report.params_after)} ({signed(report.params_after - report.params_before)})",
         label="params:")
    if None not in (report.flops_before, report.flops_after):
        whole = len(report.traced) == 1 and report.traced[0] == ""
        _say(f"{human(report.flops_before)} -> {human(report.flops_after)} ({signed(report.flops_after - report.flops_before)})"
             + ("" if whole else " over the traced parts"), label="FLOPs:")
    v = report.verification
    if v is None:
        _say("(--no-verify)", label="not verified", style="yellow")
    else:
        scope = "the whole model" if v.scope == "whole model" else f"{len(v.parts)} traced parts, each on its own input"
        _say(f"on random input ({scope}): max abs diff {v.max_abs_diff:.3g}, max rel diff {v.max_rel_diff:.3g} "
             f"(tolerance atol={v.atol:g} + rtol={v.rtol:g} x max|output|)",
             label="verified" if v.passed else "differs", style="green" if v.passed else "red")
    if report.untraced:
        _say(f"{', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}", label="traced parts:")
    for note in report.notes:
        _say(note, label="note:", style="yellow")
    if verbose:
        _deploy_details(report)
    elif report.folded or report.reparameterized or (v is not None and v.scope != "whole model"):
        _say("(--verbose lists them one by one)")


def _conversion(item) -> str:
    return f"{item.before}.{item.method}, in place" if item.in_place else f"{item.before} -> {item.after}"


def _grouped(skipped) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for item in skipped:
        groups.setdefault(item.reason, []).append(item.path)
    return list(groups.items())


def _deploy_details(report) -> None:
    """One line per reparameterized block, folded BatchNorm, skipped BatchNorm and verified part."""
    sections = [
        ("blocks reparameterized", [f"{r.path or '(model)'}: {_conversion(r)}" for r in report.reparameterized]),
        ("BatchNorms folded", [f"{f.norm} into {f.layer} ({f.norm_type} into {f.layer_type}"
                    + (f", keeps {', '.join(f.kept)}" if f.kept else "") + ")" for f in report.folded]),
        ("BatchNorms not folded", [f"{s.path}: {s.reason}" for s in report.skipped]),
    ]
    v = report.verification
    if v is not None and v.scope != "whole model":
        sections.append(("parts verified", [f"{p.part}: max abs diff {p.max_abs_diff:.3g}, max rel diff {p.max_rel_diff:.3g}"
                                            + ("" if p.passed else " (over the tolerance)") for p in v.parts]))
    for title, entries in sections:
        if entries:
            _say(f"{title}:")
            for entry in entries:
                for text in _lines(entry, first="  ", indent="      "):
                    _print(text)


def _print(text: str) -> None:
    from plugsurgeon.cli.render import console

    console.print(text, soft_wrap=True)


def export_summary(report) -> None:
    from plugsurgeon.cli.render import human

    _say(f"exported {report.path} ({human(report.size_bytes)}B) with torch.onnx's {report.exporter} exporter, opset {report.opset}")
    _say(f"{', '.join(report.input_names)} {'x'.join(str(d) for d in report.input_shape)}", label="input:")
    _say(", ".join(report.output_names), label="outputs:")
    d = report.detections
    inputs = f"{report.inputs_checked} random inputs"
    if d is None:
        _say(f"PyTorch on {inputs}: max abs diff {report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g}",
             label="onnxruntime matches" if report.passed else "onnxruntime differs from",
             style="green" if report.passed else "red")
    elif not d.compared_any:
        _say(f"on {inputs} PyTorch kept {d.reference} detections and onnxruntime {d.other}: nothing to match (see the note)",
             label="unchecked:", style="yellow")
    else:
        _say(f"PyTorch on {inputs}: {d.matched} of {d.reference} detections matched (boxes within {d.max_box_diff:.3g} px, "
             f"scores within {d.max_score_diff:.3g}"
             + "".join(f", {k} within {v:.3g}" for k, v in d.extras.items()) + f"); {d.at_cut} at the score cut, {d.unmatched} unmatched",
             label="onnxruntime matches" if report.passed else "onnxruntime differs from",
             style="green" if report.passed else "red")
    for item in report.unfused:
        _say(str(item), label="exported unfused (--allow-unfused):", style="yellow")
    for note in report.notes:
        _say(note, label="note:", style="yellow")
