"""A self-contained `report.html` for people: what was quantized and why, how close the outputs stay,
how the error is spread, and how fast each model runs. Inline CSS and SVG only, no scripts and no
external assets, so it opens anywhere (a mail attachment, a CI artifact) exactly as written.

Input: the compile `report.json` dict (`spec`, `decisions`, `warnings`, `passes`, `counts`, `versions`) plus the
`comparison` (`ComparisonResult.to_dict()`) and `latency` (`BenchTable.to_dict()`) sections. Every
section is optional; a missing one is said to be missing, never an exception.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from tao_qc.evaluate.results import check_name
from tao_qc.fileio import atomic_write_text
from tao_qc.report import headline
from tao_qc.report.pictures import bars_svg, boxes_svg, histogram_svg, sensitivity_svg

_CSS = """
:root { --ink:#1d2433; --muted:#5c6677; --line:#e3e7ee; --bg:#f6f8fb; --ok:#1a7f37; --bad:#c62828;
        --warn:#9a6700; --accent:#2f6fde; --q:#e8f0fe; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; margin-top: 2px; }
.card .d { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.pass { background: #dafbe1; color: var(--ok); } .fail { background: #ffebe9; color: var(--bad); }
.warn { background: #fff8c5; color: var(--warn); } .none { background: #eef1f5; color: var(--muted); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); border-radius: 8px;
        overflow: hidden; font-size: 13px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f0f3f8; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.q td { background: var(--q); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.dt { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; padding: 0 5px; border-radius: 4px; }
.dt-int8 { background: #d0e2ff; } .dt-fp8_e4m3fn, .dt-fp8_e5m2 { background: #e8d5ff; } .dt-native { background: #eef1f5; color: var(--muted); }
.note { color: var(--muted); font-size: 13px; }
.missing { color: var(--muted); font-style: italic; }
.failures { color: var(--bad); margin: 8px 0 0 18px; padding: 0; }
.warnings { color: var(--warn); margin: 8px 0 0 18px; padding: 0; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
.figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.figure .cap { color: var(--muted); font-size: 12px; margin-top: 4px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.pair svg { width: 100%; height: auto; display: block; border-radius: 4px; }
.key-fp32 { color: #2f6fde; font-weight: 600; } .key-quant { color: #d9480f; font-weight: 600; }
details summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
.headline .card { border-width: 2px; }
.verdict { margin: 10px 0 0; } .verdict .failures { margin-top: 4px; }
.badge.big { font-size: 20px; padding: 1px 10px; }
.defaults { margin-top: 14px; } .defaults h3 { font-size: 13px; color: var(--muted); margin: 0 0 2px; }
.defaults .note { margin: 0 0 6px; }
.defaults .card { background: #fbfcfd; padding: 8px 12px; } .defaults .card .v { font-size: 16px; }
details.group { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 6px 0; padding: 0 10px; }
details.group > summary { color: var(--ink); padding: 6px 0; }
details.group > summary .count { font-weight: 600; }
details.group table { border: 0; margin-bottom: 8px; }
p.nodes { margin: 0 0 10px; line-height: 2; } code.node { background: #eef1f5; border-radius: 4px; padding: 1px 5px; white-space: nowrap; }
code.node.q { background: var(--q); }
pre { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; overflow: auto; font-size: 12px; }
"""


def write_html_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write `report` as one self-contained HTML file at `path` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_html(report))
    path.chmod(0o644)  # a report is for reading by others (the atomic temp file is created 0600)
    return path


def render_html(report: dict[str, Any]) -> str:
    report = report or {}
    comparison = report.get("comparison") or None
    latency = report.get("latency") or None
    title = _title(report, comparison)
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{_subtitle(report)}</p>',
        _summary_cards(report, comparison),
        _warnings_section(report.get("warnings")),
        "<h2>Accuracy: quantized against FP32</h2>",
        _comparison_section(comparison, defaults_decide=headline.defaults_decide(report)),
        _detection_section((comparison or {}).get("detection")),
        _accuracy_section(report.get("accuracy")),
        _corrections_section(report),
        _kernel_fidelity_section(report.get("kernel_fidelity")),
        "<h2>Latency</h2>",
        _latency_section(latency),
        speed_html(report.get("speed")),
        "<h2>Quantization decisions</h2>",
        _decisions_section(report.get("decisions")),
        _engine_section(comparison),
        "<h2>Passes</h2>",
        _passes_section(report.get("passes")),
        "<h2>Spec and versions</h2>",
        _spec_section(report.get("spec"), report.get("versions")),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------


def _title(report: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    spec = report.get("spec") or {}
    model = report.get("model") or (spec.get("model_path") if isinstance(spec, dict) else None)
    if not model and comparison:
        model = comparison.get("reference")
    return f"tao-qc report: {Path(str(model)).name}" if model else "tao-qc report"


def _subtitle(report: dict[str, Any]) -> str:
    parts = []
    spec = report.get("spec") if isinstance(report.get("spec"), dict) else {}
    for key in ("backend", "mode", "algorithm", "target"):
        if spec.get(key):
            parts.append(f"{key} <b>{escape(str(spec[key]))}</b>")
    if report.get("output"):
        parts.append(f"artifact <code>{escape(str(report['output']))}</code>")
    return " · ".join(parts) or "quantization report"


def _card(key: str, value: str, detail: str = "", kind: str = "") -> str:
    """`kind` names what the card says (target, nodes, speed, fidelity, default) for readers and tests."""
    data = f' data-card="{kind}"' if kind else ""
    return (f'<div class="card"{data}><div class="k">{escape(key)}</div><div class="v">{value}</div>'
            f'<div class="d">{detail}</div></div>')


def _summary_cards(report: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    """The first row, in the order a person asks: did it reach my target, what runs in INT8 and what
    in float (and why), how fast against FP32 on the CPU it is for, do the CPU's kernels compute what
    the graph says. Then the verdict, then the default checks, marked and set apart."""
    cards = [_target_card(report, comparison), _nodes_card(report), _speed_card(report), _fidelity_card(report)]
    row = f'<div class="cards headline">{"".join(card for card in cards if card)}</div>'
    return row + _verdict_line(report) + _default_checks_row(report)


def _target_card(report: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    target = headline.accuracy_target(report)
    if target is not None:
        met = target.get("met")
        badge = ('<span class="badge none">not measured</span>' if met is None else
                 '<span class="badge pass">met</span>' if met else '<span class="badge fail">missed</span>')
        wanted = headline.target_in_words(target)  # the metric is in the card's title
        detail = f"target {escape(wanted)}" + ("" if "FP32" in wanted else f"; FP32 {_num(target.get('fp32'))}")
        if target.get("data"):
            detail += f"; on {escape(str(target['data']))}"
        if target.get("note"):
            detail += f'<br><span class="badge warn">note</span> {escape(str(target["note"]))}'
        return _card(f"accuracy target · {target.get('metric')}", f"{_num(target.get('value'))} {badge}", detail,
                     kind="target")
    if not comparison:
        return _card("accuracy", '<span class="badge none">not compared</span>', "no comparison was run", kind="target")
    # No target of the user's: the comparison's checks decide (the user's where set, else the defaults).
    # The card gives their verdict; the run's, which also counts kernel fidelity, is the line below.
    badge = '<span class="badge pass">PASSED</span>' if comparison.get("passed") else '<span class="badge fail">FAILED</span>'
    own = headline.user_checks(report)
    if own:
        shown = "; ".join(f"{escape(str(c.get('metric')))} {_check_value(c)} on <code>{escape(str(c.get('output')))}</code> "
                          f"(needs &ge; {_check_value(c, 'threshold')}, {escape(str(c.get('why')))})" for c in own[:4])
        detail = f"{shown}{' ...' if len(own) > 4 else ''}; no accuracy.metric set"
        key = "your checks"
    else:
        detail = "no accuracy target set (accuracy.metric): the default checks below decide"
        key = "accuracy: default checks"
    detail += f"; {comparison.get('num_samples', '?')} samples"
    if comparison.get("data_is_random"):
        detail += ' · <span class="badge warn">random inputs</span>'
    return _card(key, badge, detail, kind="target")


def _nodes_card(report: dict[str, Any]) -> str:
    nodes = headline.node_counts(report)
    if nodes is None:
        counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
        if not counts:
            return ""
        first = next(iter(counts.items()))
        return _card(str(first[0]).replace("_", " "), escape(str(first[1])))
    quantized = " · ".join(f"{n} {escape(dtype.upper() if dtype.startswith('int') else dtype)}"
                           for dtype, n in nodes["dtypes"].items()) or "0 quantized"
    value = f"{quantized} · {nodes['float']} float"
    if nodes["float"]:
        why = "; ".join(f"{n} {escape(reason)}" for reason, n in nodes["float_reasons"].items())
        detail = f"of {nodes['total']} compute nodes; float: {why}"
    else:
        detail = f"all {nodes['total']} compute nodes quantized"
    if len(nodes["dtypes"]) > 1:
        detail += "; mixed dtypes as the spec's layers set them"
    return _card("nodes", value, detail, kind="nodes")


def _speed_card(report: dict[str, Any]) -> str:
    speed = headline.speed(report)
    if speed is None:
        return ""
    on = ""
    if speed.get("measured_on") and speed.get("runtime") == "onnxruntime":
        on = f" on {escape(str(speed['measured_on']))}" + (f" ({escape(str(speed['cpu_model']))})" if speed.get("cpu_model") else "")
    if speed.get("rounds"):
        rounds = ", ".join(f"{r:.2f}× at batch {b}" for b, r in speed["rounds"].items())
        detail = (f"{rounds} in interleaved rounds on {escape(str(speed.get('runtime')))}{on} (&gt;1: faster); one timed "
                  f"pass at batch {speed['batch']}: FP32 {speed['fp32_ms']:.3f} ms, quantized {speed['quantized_ms']:.3f} ms")
    else:
        detail = (f"batch {speed['batch']} on {escape(str(speed.get('runtime')))}{on}: FP32 {speed['fp32_ms']:.3f} ms, "
                  f"quantized {speed['quantized_ms']:.3f} ms (&gt;1: faster)")
    if speed.get("target") and speed.get("measured_on") and speed["target"] != speed["measured_on"]:
        detail += f"; compiled for {escape(str(speed['target']))}, measured on another CPU"
    placed_for = speed.get("runtime_target")
    if placed_for and speed.get("runtime") and placed_for != speed["runtime"]:
        # A graph placed for TensorRT, timed on ONNX Runtime's CPU provider: its speed there means little.
        detail += f"; placed for {escape(str(placed_for))}, so this timing says little about its speed there"
    checked = report.get("speed") or {}
    if checked.get("why_slower"):
        detail += '; <a href="#speed">why slower</a>'
    ratio = speed["ratio"]
    style = "pass" if ratio >= 1 else "warn"
    return _card("speed vs FP32", f'<span class="badge {style} big">{ratio:.2f}×</span>', detail, kind="speed")


def _fidelity_card(report: dict[str, Any]) -> str:
    fidelity = headline.kernel_fidelity(report)
    cpu = (report.get("cpu") or {}).get("target") or {}
    if fidelity is None:
        if not cpu:
            return ""
        return _card("kernel fidelity", '<span class="badge none">not checked</span>',
                     escape(f"compiled for {cpu.get('isa')}; {cpu.get('weight_bits')}-bit weights"), kind="fidelity")
    badge = ('<span class="badge pass">kernels exact</span>' if fidelity["passed"]
             else '<span class="badge fail">kernels deviate</span>')
    detail = f"ONNX Runtime's integer kernels against the graph's Q/DQ arithmetic on {escape(str(fidelity.get('measured_on')))}"
    if cpu:
        source = ("named in the spec" if cpu.get("asked") != "auto" else
                  "auto: TAO_QC_CPU" if cpu.get("source") == "environment" else "auto: this machine")
        detail += escape(f"; compiled for CPU {cpu.get('isa')} ({source}), {cpu.get('weight_bits')}-bit weights")
    if not fidelity["passed"] and fidelity.get("reason"):
        detail += f"; {escape(str(fidelity['reason']))}"
    if not fidelity.get("decides", True):
        detail += "; decides nothing (another CPU than the one compiled for)"
    return _card("kernel fidelity", badge, detail, kind="fidelity")


def _check_value(check: dict[str, Any], key: str = "value") -> str:
    if check.get("metric") in ("map", "map50_vs_fp32"):
        return _fixed(check.get(key), 4)
    return (_pct if check.get("metric") in ("top1_agreement", "within_tolerance") else _num)(check.get(key))


def _verdict_line(report: dict[str, Any]) -> str:
    verdict = headline.verdict(report)
    if verdict is None:
        return ""
    if verdict.get("passed"):
        return '<p class="verdict"><span class="badge pass">run passed</span> nothing the spec asks for was missed.</p>'
    exits = " (exit 1)" if verdict.get("fails_run") else " (compare.fail_on_mismatch is off: exit 0)" if verdict.get("fails_run") is False else ""
    items = "".join(f"<li>{escape(str(f))}</li>" for f in verdict.get("failures") or [])
    return f'<div class="verdict"><span class="badge fail">run failed{exits}</span><ul class="failures">{items}</ul></div>'


def _default_checks_row(report: dict[str, Any]) -> str:
    """The checks nobody asked for, below the headline: each marked default, with whether it decides."""
    checks = headline.default_checks(report)
    if not checks:
        return ""
    decide = headline.defaults_decide(report)
    note = ("No accuracy target is set, so these decide the run." if decide else
            "Shown for reference; they decide nothing: your accuracy target above does.")
    shown = checks if len(checks) <= headline.SHOWN_DEFAULTS else [c for c in checks if not c.get("passed")]
    cards = []
    for check in shown:
        badge = '<span class="badge pass">pass</span>' if check.get("passed") else '<span class="badge fail">below</span>'
        cards.append(_card(f"default · {check_name(str(check.get('metric')))} · {check.get('output')}",
                           f"{_check_value(check)} {badge}",
                           f"needs &ge; {_check_value(check, 'threshold')}; {escape(str(check.get('why')))}"
                           + _about_check(check), kind="default"))
    passing = [c for c in checks if c.get("passed")]
    if len(shown) < len(checks):
        nearest = headline.closest_call(passing)
        detail = (f"closest: {escape(check_name(str(nearest.get('metric'))))} {_check_value(nearest)} on "
                  f"<code>{escape(str(nearest.get('output')))}</code> (needs &ge; {_check_value(nearest, 'threshold')}); "
                  "each in the Checks table below" if nearest else "each in the Checks table below")
        more = " more" if shown else ""  # beside the failing ones shown above it
        cards.append(_card(f"default · {len(passing)}{more} checks", '<span class="badge pass">all pass</span>', detail,
                           kind="default"))
    return (f'<div class="defaults"><h3>Default checks <span class="badge none">default</span></h3>'
            f'<p class="note">{note}</p><div class="cards">{"".join(cards)}</div></div>')


def _about_check(check: dict[str, Any]) -> str:
    """What a default check measures, whether it is the task's measure or a proxy for it, and how its
    floor was chosen (`tao_qc.evaluate.checks.DEFAULT_CHECKS`); empty for a check without that account."""
    if not check.get("measures"):
        return ""
    task = (f"a proxy for {escape(str(check['proxy_for']))}" if check.get("proxy_for")
            else "the task's own measure, FP32's output taken as the truth")
    return (f'<div class="about" data-check="{escape(str(check.get("metric")))}">Measures '
            f'{escape(str(check["measures"]))}. Is {task}. Floor: {escape(str(check.get("floor_basis")))}.</div>')


def _kernel_fidelity_section(section: dict[str, Any] | None) -> str:
    if not section:
        return ""
    here = (section.get("cpu") or {}).get("this_machine") or {}
    verdict = ('<span class="badge pass">PASSED</span>' if section.get("passed")
               else f'<span class="badge fail">FAILED</span> {escape(str(section.get("reason")))}')
    intro = (f'<h3>Kernel fidelity on this CPU ({escape(str(here.get("isa")))})</h3><p>{verdict}</p>'
             '<p class="note">The quantized model run with ONNX Runtime\'s fused integer kernels against the same graph '
             'run op by op (optimizations off: the Q/DQ arithmetic ONNX defines), on the comparison data. Kernel error: '
             '||kernels − graph|| over ||graph − FP32||, the deviation against the quantization error itself; the task '
             'measure is taken against FP32 through each.</p>')
    rows = []
    for output in section.get("outputs") or []:
        rows.append(f"<tr><td>{escape(str(output['name']))}</td><td class=\"num\">{output['kernel_error_ratio']:.3f}</td>"
                    f"<td class=\"num\">{_fixed(output.get('max_step_error'), 0)}</td>"
                    f"<td class=\"num\">{_fixed(output.get('quantization_step_error'), 0)}</td>"
                    f"<td>{escape(str(output['task_measure']))}</td><td class=\"num\">{_fixed(output.get('task_kernels'), 4)}</td>"
                    f"<td class=\"num\">{_fixed(output.get('task_graph'), 4)}</td></tr>")
    return intro + _table(["output", "kernel error", "max step error", "steps quantization moved", "measure", "kernels", "graph"],
                          rows, numeric_from=1)


# ---------------------------------------------------------------------------------------------
# Comparison


def _comparison_section(comparison: dict[str, Any] | None, *, defaults_decide: bool = True) -> str:
    """`defaults_decide`: whether the default checks decide the run (no accuracy metric measured)."""
    if not comparison:
        return '<p class="missing">No comparison was run (no data, or it was switched off).</p>'
    parts = [
        f'<p class="note">Reference <code>{escape(str(comparison.get("reference", "?")))}</code>, candidate '
        f'<code>{escape(str(comparison.get("candidate", "?")))}</code>, on {escape(str(comparison.get("runtime", "?")))}; '
        f'data: {escape(str(comparison.get("data", "?")))}.</p>'
    ]
    if comparison.get("data_is_random"):
        parts.append('<p><span class="badge warn">warning</span> compared on random inputs: these figures say little about real accuracy.</p>')
    outputs = comparison.get("outputs") or []
    has_tol = any(o.get("within_tolerance") is not None for o in outputs)
    header = ["output", "max abs", "mean abs", "p99 abs", "mean rel", "cosine", "lowest sample cosine", "top-1 agree",
              "top-1 FP32", "top-1 quant"]
    if has_tol:
        header.append("within tol")
    rows = []
    for o in outputs:
        cells = [f"<td><code>{escape(str(o.get('name')))}</code></td>"] + [
            f'<td class="num">{value}</td>' for value in (
                _num(o.get("max_abs_error")), _num(o.get("mean_abs_error")), _num(o.get("p99_abs_error")),
                _num(o.get("mean_rel_error")), _fixed(o.get("cosine"), 5), _fixed(o.get("min_cosine"), 5),
                _pct(o.get("top1_agreement")),
                _pct(o.get("reference_top1")), _pct(o.get("candidate_top1")),
                *([_pct(o.get("within_tolerance"))] if has_tol else []),
            )
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    parts.append(_table(header, rows, numeric_from=1))
    checks = comparison.get("checks") or []
    if checks:
        items = []
        for c in checks:
            default = headline.is_default_check(c)
            badge = ('<span class="badge pass">pass</span>' if c.get("passed") else
                     '<span class="badge fail">fail</span>' if defaults_decide or not default else
                     '<span class="badge warn">below</span>')  # a default that decides nothing fails nothing
            marked = ' <span class="badge none">default</span>' if default else ""
            items.append(f"<tr><td>{badge}{marked}</td><td><code>{escape(str(c.get('output')))}</code></td>"
                         f"<td>{escape(check_name(str(c.get('metric'))))}</td>"
                         f"<td class=\"num\">{_check_value(c)}</td><td class=\"num\">{_check_value(c, 'threshold')}</td>"
                         f"<td>{escape(str(c.get('why')))}{_about_check(c)}</td></tr>")
        parts.append("<h3>Checks</h3>" + _table(["", "output", "check", "value", "floor", "why"], items, numeric_from=None))
    failures = comparison.get("failures") or []
    if failures and defaults_decide:
        parts.append('<ul class="failures">' + "".join(f"<li>{escape(f)}</li>" for f in failures) + "</ul>")
    elif failures:
        # Said in the muted voice of a note: a default check below its threshold fails nothing once the
        # accuracy metric decides (the user's own checks still do, and are in the verdict above).
        parts.append('<p class="note">Below a check here: ' + "; ".join(escape(f) for f in failures)
                     + ". Default checks decide nothing once the accuracy target is measured; see the verdict above.</p>")
    figures = [
        f'<div class="figure">{histogram_svg(o.get("error_histogram") or {})}<div class="cap">|quantized − FP32| on '
        f'<code>{escape(str(o.get("name")))}</code>, log scale; {(o.get("error_histogram") or {}).get("zeros", 0)} exact matches '
        f'of {(o.get("error_histogram") or {}).get("total", 0)} values</div></div>'
        for o in outputs
    ]
    if figures:
        parts.append("<h3>Error distribution</h3>" + f'<div class="grid2">{"".join(figures)}</div>')
    return "\n".join(parts)


def _accuracy_section(section: dict[str, Any] | None) -> str:
    """What the accuracy target was, whether plain quantization met it, and what fallback did:
    clipped ranges, every node's sensitivity in graph order, the nodes kept float, the steps taken."""
    if not section:
        return ""
    badge = '<span class="badge pass">reached</span>' if section.get("reached") else '<span class="badge fail">missed</span>'
    parts = [f"<h3>Accuracy target {badge}</h3>",
             f'<p class="note">{escape(str(section.get("target")))} on {escape(str(section.get("data")))}; '
             + (f'every selected node quantized: {escape(str(section["quantized_in_words"]))}. '
                if section.get("quantized_in_words") else  # the checks as target: named, never their margin
                f'FP32 {_num(section.get("fp32"))}, every selected node quantized {_num(section.get("quantized"))}. '
                if section.get("fp32") is not None and section.get("metric") != "checks" else "")
             + f'Fallback: {escape(str(section.get("fallback")))}.</p>']
    if section.get("judged_on_calibration_data"):
        parts.append('<p><span class="badge warn">warning</span> judged on the calibration data: give '
                     'quantize.accuracy.data (held out) for figures you can trust.</p>')
    clipping = section.get("clipping")
    if clipping:
        tried = "; ".join(f"{escape(label)} {_num(value)}" for label, value in (clipping.get("tried") or {}).items())
        narrowed = f" ({clipping['ranges_clipped']} ranges narrowed)" if clipping.get("ranges_clipped") else ""
        parts.append("<p>Activation ranges, measured on the accuracy data against the calibrated ones"
                     + (" (tried though the target was met, as every default run does)" if clipping.get("while_met") else "")
                     + (f": {tried}. " if tried else ". ")
                     + f"Best: {escape(str(clipping.get('chosen')))}{narrowed}, "
                     f"{escape(str(clipping['in_words'])) if clipping.get('in_words') else _num(clipping['value'])}, target "
                     f"{'met' if clipping['met'] else 'missed'}; "
                     f"{'kept' if clipping.get('kept') else 'not kept (the calibrated ranges measured better)'}.</p>")

    parts.append(steps_html(section.get("steps")))
    search = section.get("search") or {}
    if search.get("sensitivity"):
        kept = {k["name"] for k in search.get("kept_float") or []}
        parts.append(f"<p>{len(kept)} of {search.get('candidates')} nodes kept in float (at most {search.get('limit')} "
                     f"allowed); {search['evaluations']['full']} evaluations of the accuracy data and "
                     f"{search['evaluations']['ranking_trials']} ranking trials on {search['sensitivity']['samples']} samples, "
                     f"{_num(search.get('seconds'))} s. Speed against FP32 in one timed pass of each model (the "
                     f"latency table's, not the headline's interleaved rounds): {_ratio(section.get('speed_before'))} "
                     f"with every node INT8, {_ratio(section.get('speed_after'))} with these kept float.</p>")
        if search.get("stopped_moving") is not None:
            parts.append(f"<p>No float set within the limit passes the checks, and each failing one is a proxy: the "
                         f"search kept the fewest nodes whose checks are within their noise (&plusmn;"
                         f"{search['proxy_noise']:.2g}, two standard deviations over resamples of the data) of the "
                         f"most it may keep, {search['stopped_moving']}. More would buy a proxy's value the samples "
                         "cannot tell from chance, at a cost in speed.</p>")
        nodes = search["sensitivity"]["nodes"]
        parts.append(f'<div class="figure">{sensitivity_svg(nodes, kept)}<div class="cap">Sensitivity per node in graph '
                     "order: up, what keeping it alone in float gives back; down, what quantizing it alone costs; "
                     "red: kept in float.</div></div>")
        rows = [f"<tr><td><code>{escape(k['name'])}</code></td><td class=\"num\">{k.get('rank', '-')}</td>"
                f"<td class=\"num\">{_num(k.get('gain'))}</td><td class=\"num\">{_num(k.get('damage'))}</td></tr>"
                for k in search.get("kept_float") or []]
        if rows:
            parts.append(_table(["kept in float", "rank", "gain (float alone)", "damage (quantized alone)"], rows, numeric_from=1))
        steps = [f"<tr><td>{escape(st['phase'])}</td><td class=\"num\">{st['float_nodes']}</td>"
                 f"<td class=\"num\">{escape(st['in_words']) if st.get('in_words') else _num(st['value'])}</td>"
                 f"<td>{'met' if st['met'] else 'missed'}</td></tr>"
                 for st in search.get("steps") or []]
        parts.append("<h3>Search steps (full evaluations)</h3>" + _table(["phase", "float nodes", "value", "target"], steps, numeric_from=1))
    final = section.get("final")
    if final:
        shown = (f"{escape(str(final['metric']))} {_num(final.get('value'))} (FP32 {_num(final.get('fp32'))}) on "
                 f"{escape(str(final.get('data')))}: {'met' if final.get('met') else 'missed'}" if "value" in final
                 else escape(str(final.get("error"))))
        if final.get("note"):
            shown += f" ({escape(str(final['note']))})"
        parts.append(f"<p>The saved model: {shown}.</p>")
    return "\n".join(parts)


def _corrections_section(report: dict[str, Any]) -> str:
    return corrections_html(report)


def _detection_section(section: dict[str, Any] | None) -> str:
    """mAP, AP per class, and both models' boxes drawn on a few samples side by side."""
    if not section:
        return ""
    threshold = section.get("score_threshold") or 0.0
    # A module:function decoder's boxes are compared as it returns them (no threshold of ours).
    as_decoded = section.get("candidate_score_threshold") is not None and threshold == 0
    which = "as the decoder returns them" if as_decoded else f"at score &ge; {threshold:g}"
    against = ("the annotations" + (f" (<code>{escape(Path(str(section['annotations'])).name)}</code>)" if section.get("annotations") else "")
               if section.get("against") == "annotations" else f"FP32's detections {which}")
    parts = ["<h2>Detections: quantized against FP32</h2>",
             f'<p class="note">Decoder <code>{escape(str(section.get("decoder")))}</code>; COCO mAP of the quantized model '
             f'against {against}, on {section.get("images")} images with {section.get("truth_boxes")} boxes to find.</p>']
    versus = section.get("vs_fp32") or {}
    if section.get("against") == "annotations":
        fp32 = section.get("fp32") or {}
        rows = [f"<tr><td>{name}</td><td class=\"num\">{_fixed(fp32.get(key), 4)}</td><td class=\"num\">"
                f"{_fixed(section.get(key), 4)}</td><td class=\"num\">{_fixed(versus.get(key), 4)}</td></tr>"
                for name, key in (("mAP@[.5:.95]", "map"), ("mAP@.5", "map50"))]
        parts.append(_table(["metric", "FP32", "quantized", "quantized against FP32's boxes"], rows, numeric_from=1))
    else:
        rows = [f"<tr><td>{name}</td><td class=\"num\">{_fixed(section.get(key), 4)}</td></tr>"
                for name, key in (("mAP@[.5:.95]", "map"), ("mAP@.5", "map50"))]
        parts.append(_table(["metric", "quantized against FP32's boxes (1.0: the same boxes)"], rows, numeric_from=1))
    if section.get("threshold_rule"):
        parts.append(f'<p class="note">Which boxes count: {escape(str(section["threshold_rule"]))}.</p>')
    if section.get("note"):
        parts.append(f'<p><span class="badge warn">note</span> {escape(str(section["note"]))}</p>')
    per_class = section.get("per_class") or []
    if per_class:
        with_fp32 = any("fp32_ap" in row for row in per_class)
        rows = [f"<tr><td>{escape(str(row.get('name')))}</td><td class=\"num\">{_fixed(row.get('ap'), 4)}</td>"
                f"<td class=\"num\">{_fixed(row.get('ap50'), 4)}</td>"
                + (f"<td class=\"num\">{_fixed(row.get('fp32_ap'), 4)}</td>" if with_fp32 else "") + "</tr>"
                for row in per_class]
        parts.append("<h3>AP per class</h3>" + _table(["class", "AP@[.5:.95]", "AP@.5"] + (["FP32 AP@[.5:.95]"] if with_fp32 else []),
                                                      rows, numeric_from=1))
    samples = section.get("samples") or []
    if samples:
        figures = []
        for sample in samples:
            panels = "".join(boxes_svg(sample, role) for role in ("fp32", "quantized"))
            figures.append(
                f'<div class="figure"><div class="pair">{panels}</div><div class="cap">sample {sample.get("index")}: '
                f'<span class="key-fp32">FP32 {len(sample.get("fp32") or [])} boxes</span>, '
                f'<span class="key-quant">quantized {len(sample.get("quantized") or [])} boxes</span>; '
                f'agreement F1 at IoU 0.5: {_fixed(sample.get("f1"), 2)}</div></div>')
        parts.append(f"<h3>Boxes {which}</h3>"
                     '<p class="note">The samples where the two models\' boxes differ most (lowest F1 first among them, '
                     "shown in data order); left FP32, right quantized. Hover a box for its score and class.</p>"
                     f'<div class="grid2">{"".join(figures)}</div>')
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Latency


def _latency_section(latency: dict[str, Any] | None) -> str:
    if not latency:
        return '<p class="missing">Latency was not measured.</p>'
    settings = latency.get("settings") or {}
    rows = latency.get("rows") or []
    note = (f'<p class="note">{escape(str(latency.get("runtime", "?")))} on {escape(str(settings.get("device", "?")))}, '
            f'{escape(str(settings.get("threads", "?")))} threads; median of the timed runs per batch. '
            'Ratio: the first model\'s median over each model\'s (above 1: faster).</p>')
    timed = [r for r in rows if r.get("median_ms")]
    peak = max((r["median_ms"] for r in timed), default=1.0) or 1.0
    bars, table_rows = [], []
    for row in rows:
        name = Path(str(row.get("model", "?"))).name
        if not row.get("median_ms"):
            table_rows.append(f"<tr><td>{escape(name)}</td><td class=\"num\">{row.get('batch_size')}</td>"
                              f"<td colspan=\"4\" class=\"note\">skipped: {escape(str(row.get('note') or 'not timed'))}</td></tr>")
            continue
        table_rows.append(
            f"<tr><td>{escape(name)}</td><td class=\"num\">{row.get('batch_size')}</td><td class=\"num\">{row['median_ms']:.3f}</td>"
            f"<td class=\"num\">{_fixed(row.get('p90_ms'), 3)}</td><td class=\"num\">{_fixed(row.get('throughput'), 1)}</td>"
            f"<td class=\"num\">{_ratio(row.get('ratio'))}</td></tr>")
        bars.append((f"{name} · batch {row.get('batch_size')}", row["median_ms"], row.get("ratio")))
    table = _table(["model", "batch", "median ms", "p90 ms", "samples/s", "ratio"], table_rows, numeric_from=1)
    return note + (bars_svg(bars, peak) if bars else "") + table


# ---------------------------------------------------------------------------------------------
# Decisions, engine layers, passes, spec


def _dtype(value: Any) -> str:
    text = str(value) if value is not None else "native"
    return f'<span class="dt dt-{escape(text)}">{escape(text)}</span>'


def _runs_quantized(decision: dict[str, Any]) -> bool:
    """Selected by the spec and not left in float by the backend."""
    return bool(decision.get("quantized")) and not decision.get("declined_by_backend")


# Up to this many compute nodes every group of decisions opens by itself; above, the groups start
# folded so a 500-node model reads as its handful of rules, each a click away.
_OPEN_GROUPS_UP_TO = 60


def _decisions_section(decisions: list[dict[str, Any]] | None) -> str:
    """Decisions grouped by the rule that made them: each group says its dtypes and rule once (the
    weights' and activations' rule once where they are the same), then lists its nodes, with a note
    only where a node has something of its own to say (why the backend or fallback left it float)."""
    if not decisions:
        return '<p class="missing">No per-node decisions recorded.</p>'
    quantized = sum(1 for d in decisions if _runs_quantized(d))
    declined = sum(1 for d in decisions if d.get("declined_by_backend"))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for decision in decisions:
        groups.setdefault(_decision_group(decision), []).append(decision)
    # Quantized groups first, largest first; then the float ones, largest first.
    ordered = sorted(groups.items(), key=lambda item: (not _runs_quantized(item[1][0]), -len(item[1])))
    opened = " open" if len(decisions) <= _OPEN_GROUPS_UP_TO else ""
    blocks = []
    for _, members in ordered:
        if any(_decision_note(d) for d in members):  # a table where nodes have notes of their own
            rows = [f'<tr class="{"q" if _runs_quantized(d) else ""}"><td><code>{escape(str(d.get("name")))}</code></td>'
                    f"<td>{escape(str(d.get('type')))}</td><td>{escape(_decision_note(d))}</td></tr>" for d in members]
            listing = _table(["node", "op", "note"], rows, numeric_from=None)
        else:  # else the names flow as a compact list (one row per node made 500 nodes 40 screens)
            listing = '<p class="nodes">' + " ".join(
                f'<code class="node{" q" if _runs_quantized(d) else ""}" title="{escape(str(d.get("type")))}">'
                f'{escape(str(d.get("name")))}</code>' for d in members) + "</p>"
        ops = ", ".join(f"{n} {escape(op)}" for op, n in Counter(str(d.get("type")) for d in members).most_common())
        blocks.append(f'<details class="group"{opened}><summary>'
                      f'<span class="count">{len(members)} node{"s" if len(members) != 1 else ""}</span> · '
                      f"{_group_title(members[0])} <span class=\"note\">({ops})</span></summary>{listing}</details>")
    left = f", {declined} selected but left in float by the backend" if declined else ""
    return (f'<p class="note">{quantized} of {len(decisions)} compute nodes quantized (highlighted){left}, in '
            f"{len(groups)} group{'s' if len(groups) != 1 else ''} by the rule that decided them. The rule is the spec entry "
            "that set each dtype; later entries override earlier ones, skip_names wins.</p>" + "".join(blocks))


def _rules(decision: dict[str, Any]) -> str:
    """The deciding rule, said once where weights and activations share it."""
    weights, activations = decision.get("weights_rule"), decision.get("activations_rule")
    if weights == activations or not activations:
        return str(weights or "-")
    return f"weights: {weights}; activations: {activations}"


def _decision_group(decision: dict[str, Any]) -> tuple:
    """Nodes that read the same at group level: same dtypes and rule (fallback's per-node ranks and the
    backend's per-node reasons go to the node's note, so they do not split groups)."""
    if decision.get("declined_by_backend"):
        return ("declined", str(decision.get("weights")), str(decision.get("activations")), _rules(decision),
                "left in float by the backend")
    if str(decision.get("weights_rule") or "").startswith("accuracy fallback"):
        return ("fallback", "accuracy fallback")
    if decision.get("skipped_by"):
        return ("skipped", "skip_names")
    return ("rule", str(decision.get("weights")), str(decision.get("activations")), _rules(decision))


def _group_title(decision: dict[str, Any]) -> str:
    kind = _decision_group(decision)[0]
    if kind == "declined":
        return (f"{_dtype(decision.get('weights'))} weights, {_dtype(decision.get('activations'))} activations asked by "
                f"{escape(_rules(decision))}, but <span class=\"badge warn\">float</span>: left in float by the backend")
    if kind == "fallback":
        return ('<span class="badge warn">float</span> kept in float by the accuracy fallback '
                "(the most sensitive nodes, until the target held)")
    if kind == "skipped":
        return '<span class="badge none">float</span> skipped by skip_names (which entry: per node)'
    if not _runs_quantized(decision):
        return f'<span class="badge none">float</span> {escape(_rules(decision))}'
    weights, activations = decision.get("weights"), decision.get("activations")
    dtypes = (f"{_dtype(weights)} weights and activations" if weights == activations
              else f"{_dtype(weights)} weights, {_dtype(activations)} activations")
    return f"{dtypes}: {escape(_rules(decision))}"


def _decision_note(decision: dict[str, Any]) -> str:
    """What a node adds to its group's title: the backend's reason, fallback's rank, the skip_names
    entry; else nothing."""
    if decision.get("declined_by_backend"):
        return f"selected, but {decision['declined_by_backend']}"
    if decision.get("skipped_by"):
        return str(decision["skipped_by"])
    rule = str(decision.get("weights_rule") or "")
    if rule.startswith("accuracy fallback"):
        return rule.removeprefix("accuracy fallback").lstrip(": ")
    return ""


def _warnings_section(warnings: list[Any] | None) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(str(w))}</li>" for w in warnings)
    return f'<h2>Warnings</h2><ul class="warnings">{items}</ul>'


def _engine_section(comparison: dict[str, Any] | None) -> str:
    engines = (comparison or {}).get("engines") or {}
    blocks = []
    for role, info in engines.items():
        layers = info.get("layers") or []
        if not layers:
            continue
        rows = [f"<tr><td><code>{escape(str(r.get('name')))}</code></td><td>{escape(str(r.get('type')))}</td>"
                f"<td>{escape(', '.join(r.get('inputs') or []))}</td><td>{escape(', '.join(r.get('outputs') or []))}</td>"
                f"<td>{escape(str(r.get('weights') or '-'))}</td><td><b>{escape(str(r.get('runs_in')))}</b></td></tr>" for r in layers]
        blocks.append(f"<details><summary>{escape(role)}: {len(layers)} TensorRT layers</summary>"
                      + _table(["layer", "type", "inputs", "outputs", "weights", "runs in"], rows, numeric_from=None) + "</details>")
    if not blocks:
        return ""
    return "<h2>TensorRT layers</h2>" + "".join(blocks)


_LISTED_NOTES = 5


def _passes_section(passes: list[dict[str, Any]] | None) -> str:
    if not passes:
        return '<p class="missing">No pass summary recorded.</p>'
    keys: list[str] = []
    for row in passes:
        for key in row:
            if key not in keys:
                keys.append(key)
    rows = []
    for row in passes:
        cells = []
        for key in keys:
            value = row.get(key)
            if isinstance(value, float):
                cells.append(f'<td class="num">{value:.4g}</td>')
            elif isinstance(value, int) and not isinstance(value, bool):
                cells.append(f'<td class="num">{value}</td>')
            elif isinstance(value, list) and len(value) > _LISTED_NOTES:
                # match-layers notes every node's decision: the decisions section groups them; here the
                # first few, the rest folded, so a 500-node model's page does not say each one twice.
                shown = escape(json.dumps(value[:_LISTED_NOTES]))
                rest = escape(json.dumps(value[_LISTED_NOTES:]))
                cells.append(f'<td class="mono">{shown}<details><summary>{len(value) - _LISTED_NOTES} more</summary>'
                             f"{rest}</details></td>")
            elif isinstance(value, (dict, list)):
                cells.append(f"<td class=\"mono\">{escape(json.dumps(value, sort_keys=True))}</td>")
            else:
                cells.append(f"<td>{escape('' if value is None else str(value))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return _table(keys, rows, numeric_from=None)


def _spec_section(spec: dict[str, Any] | None, versions: dict[str, str] | None) -> str:
    parts = []
    if versions:
        items = versions.items() if isinstance(versions, dict) else []
        parts.append('<p class="note">' + " · ".join(f"{escape(str(k))} <code>{escape(str(v))}</code>" for k, v in items) + "</p>")
    if spec:
        parts.append(f"<details><summary>the spec as applied</summary><pre>{escape(json.dumps(spec, indent=2, default=str))}</pre></details>")
    return "".join(parts) or '<p class="missing">No spec or versions recorded.</p>'


# ---------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[str], numeric_from: int | None) -> str:
    heads = "".join(
        f'<th class="{"num" if numeric_from is not None and i >= numeric_from else ""}">{escape(h)}</th>' for i, h in enumerate(header)
    )
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return escape(str(value))
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}" if 1e-3 <= abs(value) < 1e5 else f"{value:.3e}"


def _fixed(value: Any, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}×"


def steps_html(steps: list[dict[str, Any]] | None) -> str:
    """The accuracy steps before float fallback, each with the metric after it (report.html)."""
    if not steps:
        return ""
    def measured(step: dict[str, Any]) -> str:
        if step.get("in_words"):  # the checks as target: each named, before -> after, with its floor
            return f'<td colspan="2">{escape(str(step["in_words"]))}</td>'
        return f"<td class=\"num\">{_num(step.get('before'))}</td><td class=\"num\">{_num(step.get('value'))}</td>"

    rows = [f"<tr><td>{escape(_step_name(s))}</td>{measured(s)}<td>{'met' if s.get('met') else 'missed'}</td>"
            f"<td>{'kept' if s.get('kept') else 'not kept'}</td><td class=\"num\">{_num(s.get('seconds'))}</td></tr>"
            for s in steps]
    return ("<p>Steps before any node is kept in float (every node INT8), in order; each is kept where it "
            "measures better:</p>" + _table(["step", "before", "after", "target", "", "seconds"], rows, numeric_from=1))


def _step_name(step: dict[str, Any]) -> str:
    """The step, and what it did with the corrections the graph carried: fitted them again on its new
    ranges, dropped them where they measured worse once fitted, or never fitted them where the new
    ranges met the target alone. The clip step names the best of the range choices it measured."""
    name = f"{step['step']}: {step['chosen']}" if step.get("chosen") else step["step"]
    if step.get("corrections_refitted"):
        return f"{name} (then {', '.join(step['corrections_refitted'])} fitted again)"
    if step.get("corrections_dropped"):
        methods = ", ".join(step["corrections_dropped"])
        if step.get("with_corrections") is None:
            return f"{name} (without {methods}: not needed, {_num(step.get('without_corrections'))} without)"
        return (f"{name} (without {methods}: {_num(step.get('without_corrections'))} without, "
                f"{_num(step['with_corrections'])} with)")
    return name


def corrections_html(report: dict[str, Any]) -> str:
    """What `algorithm: auto` chose and what each correction did per node (report.html)."""
    parts = []
    ranges = report.get("ranges")
    if ranges:
        chosen = ", ".join(f"{escape(m)} {n}" for m, n in ranges["chosen"].items())
        rows = [f"<tr><td><code>{escape(t['tensor'])}</code></td><td>{escape(t['method'])}</td>"
                f"<td class=\"num\">{_num(t['max'])}</td><td class=\"num\">{_num(t['amax'])}</td>"
                f"<td class=\"num\">{_num(t['errors'].get('max'))}</td>"
                f"<td class=\"num\">{_num(t['errors'].get(t['method']))}</td></tr>" for t in ranges["tensors"]]
        parts.append(f"<h3>Activation ranges chosen per tensor</h3><p>{chosen}; scored by the relative error at "
                     "the consumers' outputs.</p>"
                     + _table(["tensor", "chosen", "max range", "chosen range", "error at max", "error chosen"], rows,
                              numeric_from=2))
    for correction in report.get("corrections") or []:
        if correction["method"] == "bias":
            rows = [f"<tr><td><code>{escape(n['node'])}</code></td><td class=\"num\">{_num(n.get('systematic_error_before'))}</td>"
                    f"<td class=\"num\">{_num(n.get('systematic_error_after'))}</td></tr>" for n in correction["nodes"]]
            head = ["node", "systematic error before", "after"]
        else:
            rows = [f"<tr><td><code>{escape(n['node'])}</code></td><td class=\"num\">{_num(n.get('output_error_nearest'))}</td>"
                    f"<td class=\"num\">{_num(n.get('output_error_after'))}</td>"
                    f"<td class=\"num\">{_num(n.get('iterations'))}</td></tr>" for n in correction["nodes"]]
            head = ["node", "output error, nearest rounding", "after AdaRound", "iterations"]
        # Layers placement narrows for a CPU without VNNI are fitted and measured on those weights.
        bits = [n["weight_bits"] for n in correction["nodes"] if n.get("weight_bits")]
        narrow_note = (f" {len(bits)} of them on the {min(bits)}-bit weights placement stores for a CPU without VNNI."
                       if bits else "")
        parts.append(f"<h3>Correction: {escape(correction['method'])}</h3><p>{len(correction['nodes'])} nodes, "
                     f"{correction.get('samples')} calibration samples, {_num(correction.get('seconds'))} s.{narrow_note}</p>"
                     + _table(head, rows, numeric_from=1))
    return "".join(parts)


def speed_html(section: dict[str, Any] | None) -> str:
    """The speed check on the target CPU (tao_qc/speed): the quantized model against FP32, each class
    of units tried in float with its measured gain, and where the time goes when it is slower."""
    if not section:
        return ""

    def at(ratios: dict[str, float]) -> str:
        return ", ".join(f"{_ratio(r)} at batch {b}" for b, r in ratios.items())

    parts = ['<h3 id="speed">Speed on this CPU</h3>',
             f"<p>Timed on {escape(str(section.get('cpu')))} with {section.get('threads')} threads, FP32 and the quantized "
             f"model taking turns in each round: the quantized model runs at {at(section.get('int8_vs_fp32') or {})} "
             "FP32's speed (median of the per-round ratios).</p>"]
    trials = section.get("trials") or []
    if section.get("search_reason"):  # speed: auto
        parts.append(f"<p><code>speed: auto</code> {escape(section['search_reason'])}.</p>")
    if section.get("searched"):
        rows = [f"<tr><td>{escape(t['label'])}</td><td class=\"num\">{len(t['nodes'])}</td>"
                f"<td class=\"num\">{at(t.get('speedup') or {})}</td>"
                f"<td>{'kept in float' if t.get('kept_float') else 'stays INT8'}</td></tr>" for t in trials]
        parts.append("<p>Each class of quantized unit in float against the model kept so far (above 1: faster in float):</p>"
                     + _table(["class", "nodes", "speed in float", "decision"], rows, numeric_from=1))
        if section.get("confirmation"):
            parts.append(f"<p>The classes kept float, all together, timed again against the all-INT8 model: "
                         f"{at(section['confirmation'])} "
                         + ("(confirmed: they stay float).</p>" if section.get("confirmed") else
                            "(not confirmed: every class stays INT8).</p>"))
        if section.get("nodes_kept_float"):
            parts.append(f"<p>With {section['nodes_kept_float']} nodes in float the model runs at "
                         f"{at(section.get('final_vs_fp32') or {})} FP32's speed.</p>")
    elif section.get("mode") == "check":
        parts.append('<p class="note">Classes of units in float were not tried (<code>quantize.onnxruntime.speed: search</code> '
                     "tries them; <code>auto</code>, the default, where INT8 is not clearly faster).</p>")
    if section.get("why_slower"):
        parts.append(f'<p><span class="badge warn">slower than FP32</span> {escape(section["why_slower"])}</p>')
    profile = section.get("profile")
    if profile:
        ops = list(dict.fromkeys([*list(profile["int8"])[:8], *list(profile["fp32"])[:8]]))
        rows = [f"<tr><td>{escape(op)}</td><td class=\"num\">{_fixed(profile['fp32'].get(op), 3)}</td>"
                f"<td class=\"num\">{_fixed(profile['int8'].get(op), 3)}</td></tr>" for op in ops]
        parts.append("<p>Milliseconds per run by op type as ORT executes each model (its profiler, batch 1):</p>"
                     + _table(["op type", "FP32", "quantized"], rows, numeric_from=1))
    return "".join(parts)
