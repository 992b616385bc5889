"""Ranges and weight corrections as accuracy steps: what fallback tries before keeping nodes in float,
and what the report shows of them.

    ranges      -> tao_qc/passes/choose_ranges.py (each activation's range chosen by its consumers' error)
    corrections -> tao_qc/passes/round_weights.py (AdaRound on the worst layers), tao_qc/passes/correct_bias.py

Both work from the one calibrated graph (never a new calibration) and need no data beyond the
calibration data; what they change (scales, weights, biases) is read by the finishing passes of
either target.
"""

from __future__ import annotations

from typing import Any

from tao_qc.passes.layer_runs import quantized_layers, set_initializer
from tao_qc.pipeline import PassResult
from tao_qc.spec.schema import CorrectionSpec, QuantizeSpec

# What fallback's `corrections` step runs where the spec lists none: AdaRound on the layers with the
# largest output error, then bias correction of every layer (which also takes back the mean shift
# AdaRound's rounding leaves).
DEFAULT_CORRECTIONS = [{"method": "adaround"}, {"method": "bias"}]


def correction_specs(spec: QuantizeSpec) -> list[Any]:
    """The corrections fallback's `corrections` step runs: the spec's list, else the defaults."""
    return list(spec.calibration.corrections) or [CorrectionSpec(**c) for c in DEFAULT_CORRECTIONS]


class RestoreFloatWeights:
    """The float weights and biases of the nodes fallback keeps in float (or of every node), as they
    were before any correction (a correction fits a node's weights to its quantization; in float, or
    under other ranges, they would only be off)."""

    name = "restore-float-weights"

    def __init__(self, nodes: set[str] | frozenset[str] | None = None):
        self.nodes = set(nodes) if nodes is not None else None  # None: every node a correction changed

    def run(self, model: Any, ctx: Any) -> Any:
        originals = ctx.facts.get("float_weights") or {}
        restored = 0
        for layer in quantized_layers(model):
            if self.nodes is not None and layer.name not in self.nodes:
                continue
            for value in (layer.weight, layer.bias):
                if value is not None and value.name in originals:
                    set_initializer(model.graph, value, originals[value.name])
                    restored += 1
        return PassResult(model, changed=bool(restored), stats={"tensors_restored": restored})
