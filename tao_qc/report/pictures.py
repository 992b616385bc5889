"""The sensitivity plot: per node in graph order, what keeping it float gives back (gain, up) and
what quantizing it alone costs (damage, down), as a self-contained SVG (no plotting library in a
report that must open anywhere)."""

from __future__ import annotations

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
