"""Keep chosen nodes of a calibrated Q/DQ graph in float: the step accuracy-driven fallback repeats.

Calibration happens once (quantize-modelopt); keeping a node float afterwards is graph surgery on
the calibrated graph, never a new calibration. For each node named in `ctx.facts["keep_float"]`
(`{node name: reason}`):

- its weight input reads the float weight again (the weight's Q/DQ goes where nothing else reads it);
- its activation input reads the float tensor again, unless the Q/DQ pair it reads also serves a
  quantized node (a neighbour reading the same tensor, or the output unit of the quantized op that
  produced it: ONNX Runtime fuses `DQ -> op -> Q` only when the op's output feeds the Q alone);
- the Q/DQ pairs on its output that no quantized node reads go (modelopt measures the outputs of
  quantized ops for ONNX Runtime's integer units; a float op has no such unit).

Later passes (place-for-onnxruntime, verify-quantization) see an ordinary graph with fewer
quantized nodes: the decisions in `ctx.facts["decisions"]` are updated to say which nodes stay float
and why. An empty set changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# Ops that only move a quantized tensor's values around: a Q/DQ pair seen through them still serves its readers.
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class KeepFloat:
    name: str = "keep-float"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        chosen: dict[str, str] = dict(ctx.facts.get("keep_float") or {})
        if not chosen:
            return PassResult(model, changed=False, stats={"kept_float": 0})
        graph = model.graph
        nodes = {node.name: node for node in graph}
        unknown = sorted(name for name in chosen if name not in nodes)
        if unknown:
            raise ValueError(f"keep-float: no node named {', '.join(unknown)} in the graph")
        decisions = ctx.facts.get("decisions") or []
        quantized = {d.unit.name for d in decisions if d.quantized} - set(chosen)
        notes, rewired = [], 0
        for name, reason in chosen.items():
            node = nodes[name]
            for index in range(min(2, len(node.inputs))):
                rewired += _read_float_input(node, index, quantized)
            _drop_output_quantization(node, quantized)
            notes.append(f"{name}: kept in float ({reason})")
        removed = len(graph)
        RemoveUnusedNodesPass()(model)
        removed -= len(graph)
        ctx.facts["decisions"] = [
            replace(d, weights="native", activations="native", weights_rule=f"accuracy fallback: {chosen[d.unit.name]}",
                    activations_rule=f"accuracy fallback: {chosen[d.unit.name]}") if d.unit.name in chosen else d
            for d in decisions
        ]
        quantized_inputs = ctx.facts.get("quantized_inputs")
        if quantized_inputs is not None:
            ctx.facts["quantized_inputs"] = {k: v for k, v in quantized_inputs.items() if k not in chosen}
        return PassResult(model, changed=True, stats={"kept_float": len(chosen), "inputs_rewired": rewired,
                                                      "qdq_nodes_removed": removed}, notes=notes)


def _pair_of(value: ir.Value | None) -> tuple[ir.Node, ir.Node] | None:
    """The (QuantizeLinear, DequantizeLinear) that produce `value`, if it is a DQ of a Q."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    return (q, dq) if q is not None and q.op_type == "QuantizeLinear" else None


def _readers(value: ir.Value) -> list[ir.Node]:
    """The nodes reading `value`, looking through layout ops."""
    found = []
    for use in value.uses():
        node = use.node
        found.extend(_readers(node.outputs[0]) if node.op_type in LAYOUT_OPS and node.outputs else [node])
    return found


def _serves_quantized(q: ir.Node, dq: ir.Node, node: ir.Node, quantized: set[str]) -> bool:
    if any(reader is not node and reader.name in quantized for reader in _readers(dq.outputs[0])):
        return True
    producer = q.inputs[0].producer() if q.inputs[0] is not None else None
    return producer is not None and producer.op_type in COMPUTE_OPS and producer.name in quantized


def _read_float_input(node: ir.Node, index: int, quantized: set[str]) -> int:
    pair = _pair_of(node.inputs[index])
    if pair is None:
        return 0
    q, dq = pair
    weight = q.inputs[0] is not None and (q.inputs[0].is_initializer() or q.inputs[0].const_value is not None)
    if not weight and _serves_quantized(q, dq, node, quantized):
        return 0  # the pair stays for its quantized users; this node reads its dequantized values
    node.replace_input_with(index, q.inputs[0])
    return 1


def _drop_output_quantization(node: ir.Node, quantized: set[str]) -> None:
    output = node.outputs[0]
    for use in list(output.uses()):
        q = use.node
        if q.op_type != "QuantizeLinear":
            continue
        for dq_use in list(q.outputs[0].uses()):
            dq = dq_use.node
            if dq.op_type != "DequantizeLinear" or dq.outputs[0].is_graph_output():
                continue
            if any(reader.name in quantized for reader in _readers(dq.outputs[0])):
                continue
            dq.outputs[0].replace_all_uses_with(output)
