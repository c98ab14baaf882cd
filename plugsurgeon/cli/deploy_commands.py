"""`plugsurgeon deploy` and `plugsurgeon export`: thin commands over ps.deploy and ps.export_onnx.

app.py calls ``register(app, user_errors)``; nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plugsurgeon.cli.options import DEFAULT_SHAPE, InputShape, Json, Weights, parse_shape

ModelArg = Annotated[str, typer.Argument(help="a directory written by `plugsurgeon apply -o`, or any model spec (torchvision name, timm:NAME, package.module:factory)")]


def register(app: typer.Typer, user_errors=None) -> None:
    """Add the deploy and export commands to ``app``, inside its error boundary ``user_errors``."""
    wrap = user_errors or (lambda command: command)
    app.command("deploy")(wrap(deploy))
    app.command("export")(wrap(export))


def deploy(
    model: ModelArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the deployed model here (weights.safetensors + manifest.json)")] = None,
    input_shape: InputShape = DEFAULT_SHAPE,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="skip the comparison with the original model")] = False,
    atol: Annotated[float, typer.Option("--atol", help="absolute tolerance of the verification")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="tolerance relative to the largest output magnitude")] = 1e-4,
    weights: Weights = None,
    json_output: Json = False,
) -> None:
    """Fuse train-time blocks (ACNet, ...) and conv-BatchNorm pairs into plain convs, verify, and save."""
    import plugsurgeon as ps

    shape = parse_shape(input_shape)
    if output is not None and output.exists() and not output.is_dir():
        raise ps.PlugsurgeonError(f"output '{output}' exists and is not a directory", hint="choose a new directory with -o")
    net = ps.load_model(model)
    if weights is not None:
        ps.load_weights(net, weights)
    result = ps.deploy(net, input_shape=shape, verify=not no_verify, atol=atol, rtol=rtol)
    if output is not None:
        ps.save(result.model, output)
    if json_output:
        from plugsurgeon.cli.render import print_json

        print_json({"report": result.report.to_dict(), "output": str(output) if output is not None else None})
        return
    deploy_summary(result.report)
    from plugsurgeon.cli.render import console

    if output is not None:
        console.print(f"saved to {output} (load with plugsurgeon.load('{output}'); export with `plugsurgeon export {output} --onnx FILE`)")
    else:
        console.print("nothing written: pass -o DIR to save the deployed model")


def export(
    model: ModelArg,
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write")],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="input shape N,C,H,W (default: the one the model was deployed with, else 1,3,224,224)", metavar="N,C,H,W")] = None,
    allow_unfused: Annotated[bool, typer.Option("--allow-unfused", help="export even if train-time blocks or foldable BatchNorms remain")] = False,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset version (default: the exporter's)")] = None,
    json_output: Json = False,
) -> None:
    """Write a (deployed) model as ONNX and check it with onnxruntime against PyTorch."""
    import plugsurgeon as ps

    net = ps.load_model(model)
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

    from plugsurgeon.cli.render import console, human, signed

    title = (f"deployed {report.model}: {len(report.reparameterized)} blocks reparameterized, "
             f"{len(report.folded)} BatchNorms folded, {len(report.skipped)} left")
    table = Table(title=title, title_justify="left")
    for column in ("action", "path", "detail"):
        table.add_column(column, overflow="fold")
    for item in report.reparameterized:
        table.add_row("reparameterized", item.path, f"{item.before} -> {item.after}")
    for item in report.folded:
        table.add_row("folded", item.norm, f"{item.norm_type} into {item.layer_type} '{item.layer}'")
    for item in report.skipped:
        table.add_row("[yellow]skipped[/]", item.path, item.reason)
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
        console.print("[yellow]not verified[/] (--no-verify)")
    else:
        status = "[green]verified[/]" if v.passed else "[red]differs[/]"
        console.print(f"{status} on random input ({v.scope}): max abs diff {v.max_abs_diff:.3g}, max rel diff {v.max_rel_diff:.3g} "
                      f"(tolerance atol={v.atol:g} + rtol={v.rtol:g} x max|output|)")
        if v.scope != "whole model":
            for part in v.parts:
                console.print(f"  {part.part}: max abs diff {part.max_abs_diff:.3g}, max rel diff {part.max_rel_diff:.3g}")
    if report.untraced:
        console.print(f"traced parts: {', '.join(report.traced)}; left alone: {', '.join(p or '(root)' for p, _ in report.untraced)}")
    for note in report.notes:
        console.print(f"note: {note}")


def export_summary(report) -> None:
    from rich.table import Table

    from plugsurgeon.cli.render import console, human

    table = Table(title=f"exported {report.path}", title_justify="left", show_header=False)
    table.add_column("", overflow="fold")
    table.add_column("", overflow="fold")
    table.add_row("exporter", f"torch.onnx ({report.exporter}), opset {report.opset}")
    table.add_row("input", f"{', '.join(report.input_names)} {'x'.join(str(d) for d in report.input_shape)}")
    table.add_row("outputs", ", ".join(report.output_names))
    table.add_row("size", f"{human(report.size_bytes)}B")
    status = "[green]matches[/]" if report.passed else "[red]differs[/]"
    table.add_row("onnxruntime vs torch", f"{status}: max abs diff {report.max_abs_diff:.3g}, max rel diff {report.max_rel_diff:.3g}")
    console.print(table)
    for item in report.unfused:
        console.print(f"[yellow]exported unfused (--allow-unfused):[/] {item}")
    for note in report.notes:
        console.print(f"note: {note}")
