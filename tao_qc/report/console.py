"""Results in the terminal: rich renderables of a comparison (two narrow tables that fit 80 columns,
the detection figures, the verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tao_qc.evaluate.checks import DEFAULT_MIN_COSINE
from tao_qc.evaluate.results import check_in_words
from tao_qc.evaluate.kernel_fidelity import fidelity_line
from tao_qc.evaluate.results import ComparisonResult
from tao_qc.report import headline


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


def compile_summary_lines(report: dict[str, Any]) -> list[str]:
    """compile's summary in the terminal, in report.html's order: the accuracy target, the nodes, the
    speed against FP32, kernel fidelity; then the default checks (marked), the outputs' figures, the
    verdict and where the report is."""
    lines = []
    target = headline.accuracy_target(report)
    if target is not None:
        met = {True: "met", False: "MISSED", None: "not measured"}[target.get("met")]
        note = f" ({target['note']})" if target.get("note") else ""
        wanted = headline.target_in_words(target)
        fp32 = "" if "FP32" in wanted else f" (FP32 {_fmt(target.get('fp32'))})"
        lines.append(f"  accuracy target: {target.get('metric')} {_fmt(target.get('value'))}{fp32}, target {wanted}: {met}{note}")
    elif report.get("comparison"):
        # The checks' own verdict: the run's (the `run:` line) also counts kernel fidelity and fallback.
        verdict = "passed" if report["comparison"].get("passed") else "FAILED"
        own = headline.user_checks(report)
        decided_by = ("the checks you set: " + "; ".join(
            f"{check_in_words(c)} on {c.get('output')} ({c.get('why')})"
            for c in own) if own else "the default checks (no accuracy.metric set)")
        lines.append(f"  accuracy: {decided_by}: {verdict}")
    nodes = headline.node_counts(report)
    if nodes is not None:
        quantized = ", ".join(f"{n} {dtype.upper() if dtype.startswith('int') else dtype}" for dtype, n in nodes["dtypes"].items())
        why = "; ".join(f"{n} {reason}" for reason, n in nodes["float_reasons"].items())
        lines.append(f"  nodes: {quantized or '0 quantized'}, {nodes['float']} float" + (f" ({why})" if why else "")
                     + f" of {nodes['total']} compute nodes")
    speed = headline.speed(report)
    if speed is not None:
        on = f" on {speed['measured_on']}" if speed.get("measured_on") and speed.get("runtime") == "onnxruntime" else ""
        elsewhere = (f"; placed for {speed['runtime_target']}, timed on {speed['runtime']}"
                     if speed.get("runtime_target") and speed["runtime_target"] != speed.get("runtime") else "")
        if speed.get("rounds"):
            rounds = ", ".join(f"{r:.2f}x at batch {b}" for b, r in speed["rounds"].items())
            lines.append(f"  speed vs FP32: {rounds} in interleaved rounds{on} (one pass at batch {speed['batch']}: "
                         f"{speed['fp32_ms']:.3f} ms FP32, {speed['quantized_ms']:.3f} ms quantized{elsewhere})")
        else:
            lines.append(f"  speed vs FP32: {speed['ratio']:.2f}x (latency at batch {speed['batch']}{on}: {speed['fp32_ms']:.3f} ms "
                         f"FP32, {speed['quantized_ms']:.3f} ms quantized{elsewhere})")
    fidelity = report.get("kernel_fidelity")
    if fidelity:
        lines.append(f"  kernel fidelity: {fidelity_line(fidelity)}"
                     + ("" if fidelity.get("decides", True) else " (decides nothing: another CPU than the one compiled for)"))
    defaults = headline.default_checks(report)
    if defaults:
        decide = "these decide the run" if headline.defaults_decide(report) else "they decide nothing: your target does"
        def said(c):
            return f"{check_in_words(c)} on {c.get('output')}{'' if c.get('passed') else ' below'}"

        if len(defaults) <= headline.SHOWN_DEFAULTS:
            shown = "; ".join(said(c) for c in defaults)
        else:  # the ones below their threshold, then the passing ones as a count and the closest call
            below = [said(c) for c in defaults if not c.get("passed")]
            passing = [c for c in defaults if c.get("passed")]
            nearest = headline.closest_call(passing)
            shown = "; ".join(below + [f"{len(passing)} pass" + (f", closest {said(nearest)}" if nearest else "")])
        lines.append(f"  default checks ({decide}): {shown}")
        if headline.defaults_decide(report) and all(c.get("proxy_for") for c in defaults):
            # A pass (or a miss) of proxies alone says nothing of the task: FastestDet's raw output kept a
            # cosine of 0.996 while a third of its boxes came or went (bench/results/default-checks.md).
            lines.append("  these checks are proxies, not the task: give accuracy.metric (a detector: "
                         "compare.decoder) for a verdict on what the model is for")
    comparison = report.get("comparison")
    if comparison:
        for output in comparison.get("outputs", []):
            parts = [f"cosine {output['cosine']:.5f}", f"max |err| {output['max_abs_error']:.3g}"]
            if output.get("min_cosine") is not None and output["min_cosine"] < DEFAULT_MIN_COSINE <= output["cosine"]:
                # Shown where one sample alone would read differently from the whole data set.
                parts.insert(1, f"lowest sample {output['min_cosine']:.5f}")
            if output.get("top1_agreement") is not None:
                parts.insert(0, f"top-1 agreement {output['top1_agreement']:.2%}")
            if output.get("position_top1_agreement") is not None:  # the measure its default check reads comes first
                parts.insert(0, f"top-1 agreement per position {output['position_top1_agreement']:.2%}")
            if output.get("label_map_iou") is not None:
                parts.insert(0, f"label-map mIoU {output['label_map_iou']:.3f} (" + ", ".join(
                    f"class {label} {iou:.3f}" for label, iou in list(output["class_iou"].items())[:8]) + ")")
            if output.get("mask_iou") is not None:
                parts.insert(0, f"IoU of the thresholded maps {output['mask_iou']:.4f}")
            if output.get("regions"):
                regions = output["regions"]
                parts.insert(0, f"text regions found {output['region_agreement']:.3f} ({regions['matched']} of FP32's "
                                f"{regions['fp32']} matched, {regions['quantized']} found)")
            if output.get("reference_top1") is not None:
                parts.append(f"top-1 accuracy {output['reference_top1']:.2%} FP32 -> {output['candidate_top1']:.2%} quantized")
            lines.append(f"  output {output['name']}: " + ", ".join(parts))
        detection = comparison.get("detection")
        if detection:
            lines.append("  " + detection_line(detection))
        if comparison.get("passed"):
            shown = "passed"
        elif headline.defaults_decide(report):
            shown = "FAILED: " + "; ".join(comparison.get("failures") or [])
        else:  # only default checks can fail here without deciding: say so, not FAILED
            shown = "below a default check (decides nothing: accuracy.metric decides)"
        lines.append(f"  comparison on {comparison.get('runtime')} ({comparison.get('num_samples')} samples): {shown}")
    verdict = headline.verdict(report)
    if verdict is not None and report.get("verdict"):
        lines.append("  run: passed" if verdict.get("passed") else "  run: FAILED: " + "; ".join(verdict.get("failures") or []))
    if comparison:
        lines.append(f"  report: {Path(report['output']).parent / 'report.html'}")
    return lines


def detection_line(section: dict) -> str:
    """mAP of the quantized model, against what, on how much."""
    def show(value):
        return "-" if value is None else f"{value:.4f}"

    if section.get("against") == "annotations":
        fp32 = section.get("fp32") or {}
        return (f"detections: mAP@[.5:.95] {show(fp32.get('map'))} FP32 -> {show(section.get('map'))} quantized, "
                f"mAP@.5 {show(fp32.get('map50'))} -> {show(section.get('map50'))} ({section.get('truth_boxes')} "
                f"annotated boxes on {section.get('images')} images)")
    return (f"detections: mAP@[.5:.95] {show(section.get('map'))}, mAP@.5 {show(section.get('map50'))} of the quantized "
            f"model against FP32's {section.get('truth_boxes')} boxes on {section.get('images')} images "
            f"({_which_boxes(section)})")


def _which_boxes(section: dict) -> str:
    """Which boxes were compared: as a module:function decoder returned them, or above a threshold."""
    threshold = section.get("score_threshold") or 0.0
    if section.get("candidate_score_threshold") is not None and threshold == 0:
        return "every box the decoder returns"
    return f"score >= {threshold:g}"
