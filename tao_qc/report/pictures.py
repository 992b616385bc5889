"""report.html's pictures, each a self-contained SVG (no plotting library in a report that must open
anywhere): the sensitivity plot (per node in graph order, what keeping it float gives back and what
quantizing it alone costs), a sample's boxes, the error histogram and the latency bars."""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, HEIGHT, MARGIN = 900, 260, 40


def sensitivity_svg(nodes: list[dict[str, Any]], kept_float: set[str] = frozenset()) -> str:
    """`nodes`: `Sensitivity.to_dict()["nodes"]` (graph order). Nodes kept in float are drawn red."""
    if not nodes:
        return ""
    scale = max(max(abs(n["gain"]), abs(n["damage"])) for n in nodes) or 1.0
    step = (WIDTH - 2 * MARGIN) / len(nodes)
    middle = HEIGHT / 2
    half = middle - MARGIN / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
             f'aria-label="sensitivity per node in graph order">',
             f'<line x1="{MARGIN}" y1="{middle}" x2="{WIDTH - MARGIN}" y2="{middle}" stroke="#888"/>',
             f'<text x="4" y="{MARGIN / 2 + 10}" font-size="11">gain (float alone) {scale:.3g}</text>',
             f'<text x="4" y="{HEIGHT - 6}" font-size="11">damage (quantized alone) {scale:.3g}</text>']
    for index, node in enumerate(nodes):
        x = MARGIN + index * step
        width = max(step * 0.8, 1.0)
        kept = node["name"] in kept_float
        for value, up, color in ((node["gain"], True, "#d62728" if kept else "#1f77b4"),
                                 (node["damage"], False, "#d62728" if kept else "#ff7f0e")):
            height = abs(value) / scale * half
            y = middle - height if (value >= 0) == up else middle
            title = (f'{escape(node["name"])} ({escape(node["type"])}): rank {node.get("rank", "?")}, '
                     f'gain {node["gain"]:+.4g}, damage {node["damage"]:+.4g}{", kept in float" if kept else ""}')
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{max(height, 0.5):.1f}" '
                         f'fill="{color}"><title>{title}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def sensitivity_html(result: dict[str, Any], title: str) -> str:
    """A page of its own for `tao-qc sensitivity`: the plot and the ranked table."""
    ranked = sorted(result["nodes"], key=lambda n: n["rank"])
    rows = "".join(f"<tr><td>{n['rank']}</td><td>{escape(n['name'])}</td><td>{escape(n['type'])}</td>"
                   f"<td>{n['gain']:+.4g}</td><td>{n['damage']:+.4g}</td><td>{n['score']:+.4g}</td></tr>" for n in ranked)
    return (f"<!doctype html><meta charset='utf-8'><title>{escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}td:nth-child(2){text-align:left}</style>"
            f"<h1>{escape(title)}</h1><p>{escape(result['metric'])} on the {result['samples']} samples where the "
            f"fully quantized model strays furthest from FP32: every node quantized {result['quantized_value']:.4g}, "
            f"every node float {result['float_value']:.4g}.</p>{sensitivity_svg(result['nodes'])}"
            "<table><tr><th>rank</th><th>node</th><th>type</th><th>gain (float alone)</th>"
            f"<th>damage (quantized alone)</th><th>score</th></tr>{rows}</table>")


def boxes_svg(sample: dict[str, Any], role: str) -> str:
    width, height = (sample.get("size") or [1, 1])[:2]
    color = "#2f6fde" if role == "fp32" else "#d9480f"
    rects = []
    for det in sample.get(role) or []:
        x1, y1, x2, y2 = det["box"]
        rects.append(f'<rect x="{x1}" y="{y1}" width="{max(x2 - x1, 0):.1f}" height="{max(y2 - y1, 0):.1f}" fill="none" '
                     f'stroke="{color}" stroke-width="2" vector-effect="non-scaling-stroke">'
                     f'<title>{"FP32" if role == "fp32" else "quantized"}: class {det.get("label")}, score {det.get("score")}</title></rect>')
    label = "FP32" if role == "fp32" else "quantized"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{label} boxes on sample {sample.get("index")}">'
            f'<image href="{escape(str(sample.get("image") or ""))}" x="0" y="0" width="{width}" height="{height}" '
            f'preserveAspectRatio="none"/>{"".join(rects)}</svg>')


_TICK_FONT = 11
# A generous width per character of an 11-px sans-serif label ("1e-25" is about 28 px in Chromium),
# and the space kept clear between two labels.
_TICK_CHAR_WIDTH, _TICK_GAP = 7.0, 8.0


def _decade_step(powers: range, pixels_per_decade: float) -> int:
    """Label every 1st, 2nd, 5th, 10th, ... decade: the smallest step at which the widest label
    (plus a gap) fits between two labelled ticks."""
    widest = max((len(f"1e{power}") for power in powers), default=4) * _TICK_CHAR_WIDTH + _TICK_GAP
    for step in (1, 2, 5, 10, 20, 50, 100):
        if step * pixels_per_decade >= widest:
            return step
    return 100


def _count(value: int) -> str:
    """A count short enough for the histogram's 40-px left margin: 1576479 -> 1.6M."""
    for at_least, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if value >= at_least:
            return f"{value / unit:.3g}{suffix}"
    return str(value)


def histogram_svg(hist: dict[str, Any], width: int = 480, height: int = 180) -> str:
    counts = hist.get("counts") or []
    edges = hist.get("log10_edges") or []
    if not counts or len(edges) != len(counts) + 1:
        message = "no error: outputs identical" if hist.get("total") else "no histogram recorded"
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" role="img" aria-label="{message}">'
                f'<text x="10" y="35" font-size="13" fill="#5c6677">{message}</text></svg>')
    left, bottom, top, right = 46, 34, 10, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts) or 1
    bar_w = plot_w / len(counts)
    bars = []
    for index, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + index * bar_w
        label = f"10^{edges[index]:.2f} to 10^{edges[index + 1]:.2f}: {count}"
        bars.append(f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="#2f6fde"><title>{escape(label)}</title></rect>')
    ticks = []
    low, high = edges[0], edges[-1]
    powers = range(math.ceil(low), math.floor(high) + 1)
    step = _decade_step(powers, plot_w / (high - low))
    for power in powers:
        x = left + plot_w * (power - low) / (high - low)
        ticks.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#5c6677"/>')
        if power % step == 0:  # every decade gets a tick; only every `step`-th a label, so none overlap
            ticks.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="{_TICK_FONT}" text-anchor="middle" '
                         f'fill="#5c6677">1e{power}</text>')
    if not ticks:  # a range inside one decade: label the ends
        for value, anchor, x in ((low, "start", left), (high, "end", left + plot_w)):
            ticks.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="{anchor}" fill="#5c6677">{10 ** value:.2g}</text>')
    axis = (f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#5c6677"/>'
            f'<text x="{left - 6}" y="{top + 10}" font-size="11" text-anchor="end" fill="#5c6677">{_count(peak)}</text>'
            f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end" fill="#5c6677">0</text>'
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="11" text-anchor="middle" fill="#5c6677">absolute error</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'style="max-width:100%;height:auto" role="img" aria-label="error histogram">{"".join(bars)}{axis}{"".join(ticks)}</svg>')


def bars_svg(bars: list[tuple[str, float, float | None]], peak: float, width: int = 760) -> str:
    label_w, row_h, right = 260, 26, 150
    height = row_h * len(bars) + 10
    plot_w = width - label_w - right
    parts = []
    for index, (label, value, ratio) in enumerate(bars):
        y = 5 + index * row_h
        w = max(plot_w * value / peak, 1)
        color = "#2f6fde" if ratio is None or ratio == 1.0 else ("#1a7f37" if ratio > 1 else "#c62828")
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" font-size="12" text-anchor="end" fill="#1d2433">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" rx="3" fill="{color}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12" fill="#1d2433">{value:.2f} ms'
            f'{f"  ({ratio:.2f}×)" if ratio is not None else ""}</text>')
    return (f'<div class="figure"><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="median latency">{"".join(parts)}</svg><div class="cap">median latency per batch '
            '(green: faster than the first model, red: slower)</div></div>')
