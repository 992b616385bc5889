"""`tao-qc inspect`: what one ONNX model (or pass dump, or results folder) holds, or how two differ.

One model: op counts, Q/DQ nodes and their dtypes, and for every Conv/Gemm/MatMul whether the graph
runs it quantized, with the recorded reason when a `report.json` with per-node decisions sits beside
the model (or is given with `--report`), else what the graph itself shows. Two models: the op-count
delta and every compute node whose quantization changed; `--text` adds the canonical text diff.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tao_qc.errors import InputError

REPORT_NAME = "report.json"
# A spec dtype as the graph shows it (ONNX's names; ONNX Runtime placement runs int8 activations as uint8).
GRAPH_DTYPES = {"int8": ("int8", "uint8"), "fp8_e4m3fn": ("float8e4m3fn",), "fp8_e5m2": ("float8e5m2",)}
# Keys a per-node decision record carries (see `tao_qc.patterns.Decision.as_dict`).
_DECISION_KEYS = ("quantized", "reason", "weights_rule", "skipped_by", "declined_by_backend")


@dataclass(frozen=True)
class Target:
    model_path: Path
    report_path: Path | None


# ---- locating and loading -------------------------------------------------------------------------


def resolve_target(path: Path, report: Path | None = None) -> Target:
    """The model file and the report for a user path: an .onnx file, a pass dump or a results folder."""
    if not path.exists():
        raise InputError(f"inspect: {path} does not exist (give an .onnx file, a pass dump or a results folder)")
    if report is not None and not report.is_file():
        raise InputError(f"inspect: --report {report} is not a file")
    if path.is_dir():
        report_path = report or (path / REPORT_NAME if (path / REPORT_NAME).is_file() else None)
        return Target(_model_in_folder(path, report_path), report_path)
    if report is None:
        # A pass dump lives in a folder below the results folder that holds the report.
        for folder in (path.parent, path.parent.parent):
            if (folder / REPORT_NAME).is_file():
                report = folder / REPORT_NAME
                break
    return Target(path, report)


def _model_in_folder(folder: Path, report_path: Path | None) -> Path:
    candidates = sorted(folder.glob("*.onnx"))
    if report_path is not None:
        named = [p for p in _onnx_paths_in(_read_json(report_path), folder) if p.parent == folder.resolve()]
        if named:
            candidates = sorted(set(named))
    if len(candidates) == 1:
        return candidates[0]
    quantized = [p for p in candidates if any(tag in p.name.lower() for tag in ("int8", "fp8", "mixed", "quant", "qdq"))]
    if len(quantized) == 1:
        return quantized[0]
    if not candidates:
        raise InputError(f"inspect: {folder} holds no .onnx model (give the model file itself)")
    names = ", ".join(p.name for p in candidates)
    raise InputError(f"inspect: {folder} holds several models ({names}); give one of them")


def _onnx_paths_in(data: Any, base: Path, depth: int = 0) -> list[Path]:
    """Existing .onnx files a report names (absolute, or relative to its folder)."""
    found: list[Path] = []
    if depth > 3:
        return found
    if isinstance(data, str) and data.endswith(".onnx"):
        path = Path(data) if Path(data).is_absolute() else base / data
        if path.is_file():
            found.append(path.resolve())
    elif isinstance(data, dict):
        for value in data.values():
            found.extend(_onnx_paths_in(value, base, depth + 1))
    elif isinstance(data, list):
        for value in data:
            found.extend(_onnx_paths_in(value, base, depth + 1))
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"inspect: report {path} is not readable JSON ({exc})") from None


def load_model(path: Path):
    """The ModelProto at `path` (external weights not loaded), or a one-line InputError."""
    import onnx
    from google.protobuf.message import DecodeError

    if path.is_dir():
        raise InputError(f"inspect: {path} is a folder, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"inspect: {path} is not a readable ONNX model (not ONNX, or truncated: {detail})") from None
    except OSError as exc:
        raise InputError(f"inspect: cannot read {path} ({exc.strerror or exc})") from None
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise InputError(f"inspect: {path} is not an ONNX model (no graph, opset or IR version)")
    _check_complete(model, path)
    return model


def _check_complete(model, path: Path) -> None:
    # A file cut at a field boundary still parses; what it lost shows as values nothing defines.
    graph = model.graph
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    defined |= {name for node in graph.node for name in node.output}
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                raise InputError(
                    f"inspect: {path} is incomplete or truncated: node '{node.name or node.op_type}' "
                    f"reads '{name}', which nothing in the graph defines"
                )
    for value in graph.output:
        if value.name not in defined:
            raise InputError(f"inspect: {path} is incomplete or truncated: graph output '{value.name}' is never defined")


def load_decisions(report_path: Path | None) -> dict[str, dict[str, Any]]:
    """Per-node decision records of a report, by node name ({} when it has none)."""
    if report_path is None:
        return {}
    records = _find_decisions(_read_json(report_path))
    return {record["name"]: record for record in records}


def _find_decisions(data: Any, depth: int = 0) -> list[dict[str, Any]]:
    # The report's layout belongs to the pipeline; look for the records by their shape, not a path.
    if depth > 4:
        return []
    if isinstance(data, list):
        records = [r for r in data if isinstance(r, dict) and isinstance(r.get("name"), str)]
        if records and len(records) == len(data) and any(k in records[0] for k in _DECISION_KEYS):
            return records
        for item in data:
            found = _find_decisions(item, depth + 1)
            if found:
                return found
    elif isinstance(data, dict):
        values = list(data.values())
        if values and all(isinstance(v, dict) and any(k in v for k in _DECISION_KEYS) for v in values):
            return [{"name": name, **record} for name, record in data.items()]
        for key in sorted(data, key=lambda k: (k != "decisions", str(k))):
            found = _find_decisions(data[key], depth + 1)
            if found:
                return found
    return []


def decision_reason(record: dict[str, Any]) -> str:
    declined = record.get("declined_by_backend")
    if declined:
        # The spec selected the node, the backend left it in float: its reason is the one that holds.
        return f"{declined}; the spec asked for it ({_spec_reason(record)})"
    return _spec_reason(record)


def planned_quantized(record: dict[str, Any]) -> bool | None:
    """Whether the report expects the graph to run the node quantized (None: it does not say)."""
    if record.get("declined_by_backend"):
        return False
    planned = record.get("quantized")
    return planned if isinstance(planned, bool) else None


def _spec_reason(record: dict[str, Any]) -> str:
    if record.get("reason"):
        return str(record["reason"])
    if record.get("skipped_by"):
        return f"kept in float: {record['skipped_by']}"
    if record.get("quantized") is False:
        return f"kept in float: {record.get('weights_rule', 'not selected')}"
    weights, activations = record.get("weights", "?"), record.get("activations", "?")
    return f"weights {weights}, activations {activations}: {record.get('weights_rule', 'selected')}"


# ---- analysis ------------------------------------------------------------------------------------


def summarize(target: Target, *, with_text: bool = False, digests: bool = False) -> dict[str, Any]:
    """JSON-ready summary of one model: graph facts plus, per compute node, the reason shown."""
    from tao_qc.graph_facts import quantization_summary
    from tao_qc.pipeline import PROVENANCE_KEY
    from tao_qc.textform import format_model

    model = load_model(target.model_path)
    summary = quantization_summary(model)
    decisions = load_decisions(target.report_path)
    created_by = {node.name: entry.value for node in model.graph.node for entry in node.metadata_props
                  if entry.key == PROVENANCE_KEY}
    for fact in summary["compute_nodes"]:
        record = decisions.get(fact["name"])
        if record is None:
            added = f"added by {created_by[fact['name']]}; " if fact["name"] in created_by else ""
            fact["reason"] = f"{added}graph shows: {fact['evidence']}"
            fact["reason_source"] = "graph"
            continue
        fact["reason"] = decision_reason(record)
        fact["reason_source"] = "report"
        planned = planned_quantized(record)
        if planned is not None and planned != (fact["status"] == "quantized"):
            fact["disagrees"] = f"report says {'quantized' if planned else 'float'}, graph shows {fact['status']}"
        elif planned is True and fact["status"] == "quantized":
            wrong = [f"{key} {record[key]}, graph shows {fact[side]}" for key, side in (("activations", "activation"), ("weights", "weights"))
                     if record.get(key) in GRAPH_DTYPES and fact[side] not in GRAPH_DTYPES[record[key]]]
            if wrong:
                fact["disagrees"] = "report says " + "; ".join(wrong)
    result: dict[str, Any] = {
        "model": str(target.model_path),
        "report": str(target.report_path) if target.report_path else None,
        "decisions_in_report": len(decisions),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "cpu": cpu_facts({p.key: p.value for p in model.metadata_props}),
        **summary,
    }
    if with_text:
        result["text"] = format_model(model, digests=digests)
    return result


def cpu_facts(metadata: dict[str, str]) -> dict[str, Any]:
    """The instruction set the model was compiled for (`tao_qc.cpu`), this machine's, and whether the
    model computes right here."""
    from tao_qc.cpu import compiled_for, mismatch, this_machine

    here = this_machine()
    model_isa = compiled_for(metadata)
    return {"compiled_for": model_isa, "this_machine": here.isa, "this_machine_model": here.model_name,
            "problem": mismatch(model_isa, here)}


def cpu_line(facts: dict[str, Any]) -> str:
    here = f"this machine {facts['this_machine']}" + (f" ({facts['this_machine_model']})" if facts.get("this_machine_model") else "")
    if facts["compiled_for"] is None:
        return f"not compiled for an ONNX Runtime CPU (no tao_qc.cpu); {here}"
    verdict = f"[bold red]{facts['problem']}[/]" if facts["problem"] else "its integer kernels compute it right here"
    return f"compiled for {facts['compiled_for']}; {here}: {verdict}"


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How the quantization of two summarized models differs, node by node (matched by name)."""
    from tao_qc.textform import op_delta

    delta = {
        op: after["op_counts"].get(op, 0) - before["op_counts"].get(op, 0)
        for op in sorted(set(before["op_counts"]) | set(after["op_counts"]))
    }
    old = {fact["name"]: fact for fact in before["compute_nodes"]}
    new = {fact["name"]: fact for fact in after["compute_nodes"]}
    changes = []
    for name in [*old, *(n for n in new if n not in old)]:
        a, b = old.get(name), new.get(name)
        was, now = (a["status"] if a else "absent"), (b["status"] if b else "absent")
        if was == now and (a is None or b is None or (a["activation"], a["weights"]) == (b["activation"], b["weights"])):
            continue
        fact = b or a
        changes.append(
            {
                "name": name,
                "op_type": fact["op_type"],
                "before": was if a is None else _status_text(a),
                "after": now if b is None else _status_text(b),
                "reason": b.get("reason", b["evidence"]) if b else "node removed",
            }
        )
    return {
        "before": _brief(before),
        "after": _brief(after),
        "op_delta_line": op_delta(before["op_counts"], after["op_counts"]),
        "op_delta": {op: change for op, change in delta.items() if change},
        "changes": changes,
    }


def _status_text(fact: dict[str, Any]) -> str:
    if fact["status"] == "float":
        return "float"
    return f"{fact['status']} (act {fact['activation']}, w {fact['weights']})"


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "report", "nodes", "qdq", "qdq_dtypes", "compute")
    return {key: summary[key] for key in keys}


# ---- output --------------------------------------------------------------------------------------


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

    from tao_qc.textform import diff_text

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
