"""`plugsurgeon deploy` and `plugsurgeon export`: thin commands over ps.deploy and ps.export_onnx.

app.py calls ``register(app, user_errors)``; nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    deploy_summary(result.report)  # drawn before anything is written, like apply's
    from plugsurgeon.cli.render import console

    if output is not None:
        save(result.model, output, force=force)
        console.print(f"saved to {output} (load with plugsurgeon.load({str(output)!r}); export with `plugsurgeon export {output} --onnx FILE`)",
                      soft_wrap=True)
    else:
        console.print("nothing written: pass -o DIR to save the deployed model")


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
    from plugsurgeon.provenance import get_provenance

    for step in reversed(get_provenance(net).get("steps", [])):
        if step.get("kind") == "deploy" and step.get("input_shape"):
            return tuple(step["input_shape"])
    return parse_shape(DEFAULT_SHAPE)


def deploy_summary(report) -> None:
    from rich.table import Table

    from plugsurgeon.cli.render import console, human, line, notes, signed, styled

    title = (f"deployed {report.model}: {len(report.reparameterized)} blocks reparameterized, "
             f"{len(report.folded)} BatchNorms folded, {len(report.skipped)} left")
    table = Table(title=title, title_justify="left")
    for column in ("action", "path", "detail"):
        table.add_column(column, overflow="fold")
    for item in report.reparameterized:
        detail = f"{item.before}.{item.method}, in place" if item.in_place else f"{item.before} -> {item.after}"
        table.add_row("reparameterized", item.path or "(model)", detail)
    for item in report.left_alone:
        table.add_row("left alone", item.path or "(model)", f"{item.type}.{item.method}: {item.reason}")
    for item in report.folded:
        table.add_row("folded", item.norm, f"{item.norm_type} into {item.layer_type} '{item.layer}'")
    for item in report.skipped:
        table.add_row(styled("skipped", "yellow"), item.path, item.reason)
    console.print(table)

    numbers = Table(title="before and after", title_justify="left")
    for column in ("", "before", "after", "change"):
        numbers.add_column(column, justify="left" if not column else "right")
    numbers.add_row("params", human(report.params_before), human(report.params_after), signed(report.params_after - report.params_before))
    flops_change = signed(report.flops_after - report.flops_before) if None not in (report.flops_before, report.flops_after) else "-"
    numbers.add_row("FLOPs" + ("" if len(report.traced) == 1 and report.traced[0] == "" else " (traced parts)"),
                    human(report.flops_before), human(report.flops_after), flops_change)
    console.print(numbers)

    v = report.verification
    if v is None:
        console.print(line(styled("not verified", "yellow"), " (--no-verify)"))
    else:
        status = styled("verified", "green") if v.passed else styled("differs", "red")
        console.print(line(status, f" on random input ({v.scope}): max abs diff {v.max_abs_diff:.3g}, max rel diff {v.max_rel_diff:.3g} "
                                   f"(tolerance atol={v.atol:g} + rtol={v.rtol:g} x max|output|)"))
        if v.scope != "whole model":
            for part in v.parts:
                console.print(f"  {part.part}: max abs diff {part.max_abs_diff:.3g}, max rel diff {part.max_rel_diff:.3g}")
    if report.untraced:
        console.print(f"traced parts: {', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}", soft_wrap=True)
    notes(report.notes)


def export_summary(report) -> None:
    from rich.table import Table

    from plugsurgeon.cli.render import console, human, line, notes, styled

    table = Table(title=f"exported {report.path}", title_justify="left", show_header=False)
    table.add_column("", overflow="fold")
    table.add_column("", overflow="fold")
    table.add_row("exporter", f"torch.onnx ({report.exporter}), opset {report.opset}")
    table.add_row("input", f"{', '.join(report.input_names)} {'x'.join(str(d) for d in report.input_shape)}")
    table.add_row("outputs", ", ".join(report.output_names))
    table.add_row("size", f"{human(report.size_bytes)}B")
    status = styled("matches", "green") if report.passed else styled("differs", "red")
    table.add_row("onnxruntime vs torch", line(status, f": max abs diff {report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g}"))
    console.print(table)
    for item in report.unfused:
        console.print(line(styled("exported unfused (--allow-unfused):", "yellow"), " ", str(item)), soft_wrap=True)
    notes(report.notes)
