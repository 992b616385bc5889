"""`tao-qc inspect`: what one ONNX model (or pass dump, or results folder) holds, or how two differ.

One model: op counts, Q/DQ nodes and their dtypes, and for every Conv/Gemm/MatMul whether the graph
runs it quantized, with the recorded reason when a `report.json` with per-node decisions sits beside
the model (or is given with `--report`), else what the graph itself shows. Two models: the op-count
delta and every compute node whose quantization changed; `--text` adds the canonical text diff.
The analysis is `tao_qc.report.reader`; this module prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from tao_qc.errors import InputError
from tao_qc.ir.textform import diff_text
from tao_qc.report.reader import (
    compare,
    cpu_line,
    resolve_target,
    summarize,
)


def _console():
    from rich.console import Console

    # Off a terminal rich would wrap at 80 columns; node names and reasons need room.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _qdq_line(summary: dict[str, Any]) -> str:
    qdq = summary["qdq"]
    dtypes = ", ".join(f"{dtype} {n}" for dtype, n in summary["qdq_dtypes"].items()) or "none"
    return f"{qdq['QuantizeLinear']} QuantizeLinear, {qdq['DequantizeLinear']} DequantizeLinear (dtypes: {dtypes})"


def _compute_line(summary: dict[str, Any]) -> str:
    c = summary["compute"]
    return f"{c['quantized']} quantized, {c['partial']} partial, {c['float']} float (of {c['total']} Conv/Gemm/MatMul)"


def print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    opsets = ", ".join(f"{domain} {version}" for domain, version in sorted(summary["opsets"].items()))
    console.print(f"[bold]model[/]    {summary['model']}")
    if summary["report"]:
        console.print(f"[bold]report[/]   {summary['report']} ({summary['decisions_in_report']} node decisions)")
    console.print(f"[bold]nodes[/]    {summary['nodes']} (opsets: {opsets})")
    console.print(f"[bold]Q/DQ[/]     {_qdq_line(summary)}")
    console.print(f"[bold]compute[/]  {_compute_line(summary)}")
    console.print(f"[bold]cpu[/]      {cpu_line(summary['cpu'])}")

    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in summary["op_counts"].items():
        ops.add_row(op, str(count))
    console.print(ops)

    if summary["compute_nodes"]:
        nodes = Table(title="compute nodes", title_justify="left")
        for column in ("node", "op", "graph runs it", "activation", "weights", "why"):
            nodes.add_column(column, overflow="fold")
        for fact in summary["compute_nodes"]:
            weights = fact["weights"]
            if fact.get("weights_granularity"):
                weights += f" {fact['weights_granularity']}"
            why = fact["reason"]
            if fact.get("disagrees"):
                why += f" [bold red](mismatch: {fact['disagrees']})[/]"
            style = {"quantized": "green", "partial": "yellow"}.get(fact["status"], "")
            nodes.add_row(fact["name"], fact["op_type"], f"[{style}]{fact['status']}[/]" if style else fact["status"],
                          fact["activation"], weights, why)
        console.print(nodes)


def print_comparison(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(escape(result["op_delta_line"]))
    for label in ("before", "after"):
        brief = result[label]
        console.print(f"[bold]{label:<6}[/] {brief['model']}: {brief['nodes']} nodes; Q/DQ {_qdq_line(brief)}; "
                      f"compute {_compute_line(brief)}")
    if not result["changes"]:
        console.print("no compute node changed its quantization")
    else:
        table = Table(title="quantization changes", title_justify="left")
        for column in ("node", "op", "before", "after", "why (after)"):
            table.add_column(column, overflow="fold")
        for change in result["changes"]:
            table.add_row(change["name"], change["op_type"], change["before"], change["after"], change["reason"])
        console.print(table)
    if "text_diff" in result:
        click.echo(result["text_diff"], nl=False)


@click.command("inspect")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--report", "report", type=click.Path(path_type=Path), help="report.json with per-node decisions (default: beside the model).")
@click.option("--text", "show_text", is_flag=True, help="Print the canonical text (two models: append the text diff).")
@click.option("--digests", is_flag=True, help="With --text: add a checksum to every large initializer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(models: tuple[Path, ...], report: Path | None, show_text: bool, digests: bool, as_json: bool) -> None:
    """Summarize one model, pass dump or results folder, or diff two.

    \b
    Examples:
      tao-qc inspect results/model.int8.onnx        # ops, Q/DQ, which nodes are quantized and why
      tao-qc inspect results/                       # the model in a results folder, with its report
      tao-qc inspect model.onnx --text              # the canonical text form
      tao-qc inspect dumps/02-fold.onnx dumps/04-quantize.onnx --text   # what changed, with text diff
      tao-qc inspect model.int8.onnx --json
    """
    if len(models) > 2:
        raise InputError(f"inspect: takes one model or two to compare, got {len(models)}")
    targets = [resolve_target(path, report) for path in models]
    if len(targets) == 1:
        summary = summarize(targets[0], with_text=show_text, digests=digests)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        elif show_text:
            click.echo(summary["text"], nl=False)
        else:
            print_summary(summary)
        return

    before, after = (summarize(t, with_text=show_text, digests=digests) for t in targets)
    result = compare(before, after)
    if show_text:
        result["text_diff"] = diff_text(
            before["text"], after["text"], before_name=str(models[0]), after_name=str(models[1])
        )
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_comparison(result)
