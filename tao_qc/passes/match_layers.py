"""Match the spec's `layers` and `skip_names` patterns to the graph's Conv/Gemm/MatMul nodes.

The matching itself is `tao_qc.spec.selection.decide` (one matcher for PyTorch and ONNX). This pass adds
what is particular to the ONNX graph:

- A MatMul whose inputs are both activations (attention's Q x K^T, scores x V) has no weight and
  came from no `Linear`; quantizing it puts 8-bit rounding on the softmax's input and output.
  modelopt treats these "MHA" MatMuls specially too. Here such a node is quantized only when a
  `layers` entry selects it (both inputs then get the activation dtype); under the empty-`layers`
  default it stays in float, and a note says so.
- Facts for later passes: `ctx.facts["decisions"]` (a `Decision` per quantizable node, graph
  order), `ctx.facts["activation_matmuls"]` (names of activation x activation MatMuls).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx_ir as ir

from tao_qc.errors import InputError
from tao_qc.pipeline import PassContext, PassResult
from tao_qc.spec.selection import Decision, decide, onnx_units

QUANTIZABLE_TYPES = ("Conv", "Gemm", "MatMul")

ATTENTION_DEFAULT_RULE = (
    "default: attention-style MatMul (both inputs are activations) stays in float unless a layers entry selects it"
)


def activation_matmuls(model: ir.Model) -> list[str]:
    """MatMul nodes neither of whose inputs is a constant (initializer or folded constant)."""
    names = []
    for node in model.graph:
        if node.op_type == "MatMul" and all(v is not None and not _is_constant(v) for v in node.inputs[:2]):
            names.append(node.name)
    return names


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type == "Constant":
        return True
    inputs = [v for v in producer.inputs if v is not None]
    return bool(inputs) and producer.op_type in ("Transpose", "Cast", "Reshape", "DequantizeLinear") and all(
        _is_constant(v) for v in inputs)


@dataclass
class MatchLayers:
    name: str = "match-layers"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        spec = ctx.spec
        units = onnx_units(model)
        present = sorted({u.type for u in units if u.type in QUANTIZABLE_TYPES})
        if not present:
            raise InputError(
                f"{_model_name(ctx)} has no Conv, Gemm or MatMul node: nothing to quantize "
                f"(its ops: {', '.join(sorted({u.type for u in units})) or 'none'})"
            )
        result = decide(units, spec.layers, spec.skip_names, static=True, quantizable_types=QUANTIZABLE_TYPES)
        attention = set(activation_matmuls(model))
        decisions: list[Decision] = []
        notes: list[str] = []
        for decision in result.decisions:
            if decision.unit.name in attention:
                if decision.quantized and decision.weights_rule.startswith("default:"):
                    decision = replace(decision, weights="native", activations="native",
                                       weights_rule=ATTENTION_DEFAULT_RULE, activations_rule=ATTENTION_DEFAULT_RULE)
                elif decision.quantized:
                    # Both inputs are activations: the second one gets the activation dtype as well.
                    decision = replace(decision, weights=decision.activations,
                                       weights_rule=f"{decision.activations_rule} (attention-style MatMul: its second "
                                                    "input is an activation too)")
            decisions.append(decision)
            notes.append(f"{decision.unit.name} [{decision.unit.type}]: {decision.reason}")
        for item in result.unmatched:
            notes.append(f"warning: pattern {item} matches nothing")
        for item in result.only_other_types:
            notes.append(f"warning: pattern {item} matches only nodes that cannot be quantized "
                         f"(valid types: {', '.join(QUANTIZABLE_TYPES)})")
        quantized = [d for d in decisions if d.quantized]
        if not quantized:
            hint = ("; these patterns select nothing: " + ", ".join(result.unmatched + result.only_other_types)
                    if result.unmatched or result.only_other_types else "")
            raise InputError(
                f"quantize.layers/skip_names select no Conv/Gemm/MatMul node of {_model_name(ctx)} "
                f"({len(decisions)} candidates, all kept in float){hint}"
            )
        ctx.facts["decisions"] = decisions
        ctx.facts["activation_matmuls"] = sorted(attention)
        ctx.facts["unmatched_patterns"] = list(result.unmatched)
        ctx.facts["patterns_only_other_types"] = list(result.only_other_types)
        by_dtype: dict[str, int] = {}
        for d in quantized:
            by_dtype[d.activations if d.activations != "native" else d.weights] = by_dtype.get(
                d.activations if d.activations != "native" else d.weights, 0) + 1
        stats = {"candidates": len(decisions), "selected": len(quantized), "kept_float": len(decisions) - len(quantized),
                 "unmatched_patterns": len(result.unmatched) + len(result.only_other_types)}
        stats.update({f"selected_{dtype}": n for dtype, n in sorted(by_dtype.items())})
        return PassResult(model, changed=False, stats=stats, notes=notes)


def _model_name(ctx: PassContext) -> str:
    return f"model {ctx.source_path.name}" if ctx.source_path else "the model"
