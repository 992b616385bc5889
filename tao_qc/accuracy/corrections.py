"""Ranges and weight corrections as accuracy steps: what fallback tries before keeping nodes in float,
and what the report shows of them.

    ranges      -> passes/choose_ranges.py (each activation's range chosen by its consumers' error)
    corrections -> passes/round_weights.py (AdaRound on the worst layers), passes/correct_bias.py

Both work from the one calibrated graph (never a new calibration) and need no data beyond the
calibration data; what they change (scales, weights, biases) is read by the finishing passes of
either target.
"""

from __future__ import annotations

from typing import Any

# What fallback's `corrections` step runs where the spec lists none: AdaRound on the layers with the
# largest output error, then bias correction of every layer (which also takes back the mean shift
# AdaRound's rounding leaves).
DEFAULT_CORRECTIONS = [{"method": "adaround"}, {"method": "bias"}]


def corrections_report(facts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    choices = facts.get("range_choices")
    if choices:
        out["ranges"] = {
            "chosen": {method: sum(1 for c in choices.values() if c["method"] == method)
                       for method in dict.fromkeys(c["method"] for c in choices.values())},
            "tensors": [{"tensor": name, **choice} for name, choice in choices.items()],
        }
    if facts.get("corrections"):
        out["corrections"] = facts["corrections"]
    return out


def correction_specs(spec: Any) -> list[Any]:
    """The corrections fallback's `corrections` step runs: the spec's list, else the defaults."""
    from tao_qc.spec import CorrectionSpec

    return list(spec.calibration.corrections) or [CorrectionSpec(**c) for c in DEFAULT_CORRECTIONS]


def steps_html(steps: list[dict[str, Any]] | None) -> str:
    """The accuracy steps before float fallback, each with the metric after it (report.html)."""
    if not steps:
        return ""
    from html import escape

    from tao_qc.report_html import _num, _table

    rows = [f"<tr><td>{escape(s['step'])}</td><td class=\"num\">{_num(s.get('before'))}</td>"
            f"<td class=\"num\">{_num(s.get('value'))}</td><td>{'met' if s.get('met') else 'missed'}</td>"
            f"<td>{'kept' if s.get('kept') else 'not kept'}</td><td class=\"num\">{_num(s.get('seconds'))}</td></tr>"
            for s in steps]
    return ("<p>Steps before any node is kept in float (every node INT8), in order; each is kept where it "
            "measures better:</p>" + _table(["step", "before", "after", "target", "", "seconds"], rows, numeric_from=1))


def corrections_html(report: dict[str, Any]) -> str:
    """What `algorithm: auto` chose and what each correction did per node (report.html)."""
    from html import escape

    from tao_qc.report_html import _num, _table

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
        parts.append(f"<h3>Correction: {escape(correction['method'])}</h3><p>{len(correction['nodes'])} nodes, "
                     f"{correction.get('samples')} calibration samples, {_num(correction.get('seconds'))} s.</p>"
                     + _table(head, rows, numeric_from=1))
    return "".join(parts)


class RestoreFloatWeights:
    """The float weights and biases of the nodes fallback keeps in float, as they were before any
    correction (a correction fits a node's weights to its quantization; in float they would only be off)."""

    name = "restore-float-weights"

    def __init__(self, nodes: set[str] | frozenset[str]):
        self.nodes = set(nodes)

    def run(self, model: Any, ctx: Any) -> Any:
        from tao_qc.accuracy.layer_runs import quantized_layers, set_initializer
        from tao_qc.pipeline import PassResult

        originals = ctx.facts.get("float_weights") or {}
        restored = 0
        for layer in quantized_layers(model):
            if layer.name not in self.nodes:
                continue
            for value in (layer.weight, layer.bias):
                if value is not None and value.name in originals:
                    set_initializer(model.graph, value, originals[value.name])
                    restored += 1
        return PassResult(model, changed=bool(restored), stats={"tensors_restored": restored})
