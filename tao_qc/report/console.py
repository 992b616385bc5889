"""Results in the terminal: rich renderables of a comparison (two narrow tables that fit 80 columns,
the detection figures, the verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tao_qc.evaluate.results import ComparisonResult


def render_comparison(result: ComparisonResult) -> Any:
    """A rich renderable: one row per output, then the verdict."""
    # Two narrow tables (errors; agreement and tolerance) rather than one wide one: each fits an
    # 80-column terminal, and columns without a value for any output are left out.
    errors: list[tuple[str, Any]] = [
        ("output", lambda o: o.name),
        ("max |err|", lambda o: _fmt(o.max_abs_error)),
        ("mean |err|", lambda o: _fmt(o.mean_abs_error)),
        ("p99 |err|", lambda o: _fmt(o.p99_abs_error)),
        ("mean rel", lambda o: _fmt(o.mean_rel_error)),
        ("cosine", lambda o: f"{o.cosine:.5f}"),
    ]
    agreement: list[tuple[str, Any]] = [("output", lambda o: o.name)]
    for header, attr in (("top-1 agree", "top1_agreement"), ("acc FP32", "reference_top1"),
                         ("acc quant", "candidate_top1"), ("within tol", "within_tolerance")):
        if any(getattr(o, attr) is not None for o in result.outputs):
            agreement.append((header, lambda o, attr=attr: _pct(getattr(o, attr))))
    title = f"{Path(result.reference).name} vs {Path(result.candidate).name} on {result.runtime}, {result.num_samples} samples"
    parts: list[Any] = [_table(result, title, errors)]
    if len(agreement) > 1:
        parts.append(_table(result, None, agreement))
    if result.detection:
        parts.extend(_detection_renderables(result.detection))
    if result.data_is_random:
        parts.append(Text("warning: compared on RANDOM inputs; give --data for figures that mean something", style="bold yellow"))
    if result.passed:
        parts.append(Text(f"PASSED ({len(result.checks)} checks)", style="bold green"))
    else:
        parts.append(Text("FAILED: " + "; ".join(result.failures), style="bold red"))
    return Group(*parts)


def _table(result: ComparisonResult, title: str | None, columns: list[tuple[str, Any]]) -> Any:
    table = Table(title=title)
    for header, _ in columns:
        is_name = header == "output"
        table.add_column(header, justify="left" if is_name else "right", no_wrap=not is_name,
                         overflow="fold" if is_name else "ellipsis")
    for o in result.outputs:
        table.add_row(*(cell(o) for _, cell in columns))
    return table


def _detection_renderables(section: dict[str, Any]) -> list[Any]:
    against = ("the annotations" if section.get("against") == "annotations" else
               f"FP32's detections at score >= {section.get('score_threshold'):g}")
    lines = [Text(f"detection ({section.get('decoder')}): mAP@[.5:.95] {_map(section.get('map'))}, mAP@.5 "
                  f"{_map(section.get('map50'))} of the quantized model against {against} "
                  f"({section.get('images')} images, {section.get('truth_boxes')} boxes to find)")]
    if section.get("against") == "annotations":
        fp32, versus = section.get("fp32") or {}, section.get("vs_fp32") or {}
        lines.append(Text(f"  FP32: mAP@[.5:.95] {_map(fp32.get('map'))}, mAP@.5 {_map(fp32.get('map50'))}; quantized "
                          f"against FP32's detections: mAP@.5 {_map(versus.get('map50'))}"))
    if section.get("note"):
        lines.append(Text("note: " + section["note"], style="yellow"))
    rows = section.get("per_class") or []
    if rows:
        table = Table(title="AP per class")
        for header in ("class", "AP@[.5:.95]", "AP@.5") + (("FP32 AP",) if any("fp32_ap" in r for r in rows) else ()):
            table.add_column(header, justify="left" if header == "class" else "right")
        for row in rows:
            cells = [str(row.get("name")), _map(row.get("ap")), _map(row.get("ap50"))]
            if "fp32_ap" in row:
                cells.append(_map(row.get("fp32_ap")))
            table.add_row(*cells)
        lines.append(table)
    return lines


def _map(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
