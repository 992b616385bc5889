"""Keep chosen nodes of a calibrated Q/DQ graph in float: the step accuracy-driven fallback repeats.

Calibration happens once (quantize-modelopt); keeping a node float afterwards is graph surgery on
the calibrated graph, never a new calibration. For each node named in `ctx.facts["keep_float"]`
(`{node name: reason}`, accuracy fallback's) or `ctx.facts["float_for_speed"]` (tao_qc/speed's):

- its weight and activation inputs read the float tensors again; a Q/DQ pair goes where nothing else
  reads it. That includes the output unit of a quantized op feeding it (modelopt measures the
  outputs of quantized ops for ONNX Runtime's `DQ -> op -> Q` units): the rounding to that op's
  output grid is often the very loss (one outlier channel flattening the rest), so a float node
  never reads it, and the op before it then runs with a float output where nothing else needs its Q;
- the Q/DQ pairs on its output go where no quantized compute node reads their grid (a float op has
  no integer unit); a pair is read by the compute ops its values reach before another Q.

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


@dataclass
class KeepFloat:
    name: str = "keep-float"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        # Each node's rule, as the report shows it: accuracy fallback's choice, or speed's (a class of
        # units measured faster in float on the target CPU, tao_qc/speed).
        chosen = {name: f"accuracy fallback: {why}" for name, why in (ctx.facts.get("keep_float") or {}).items()}
        for name, why in (ctx.facts.get("float_for_speed") or {}).items():
            chosen.setdefault(name, f"faster in float: {why}")
        if not chosen:
            return PassResult(model, changed=False, stats={"kept_float": 0})
        graph = model.graph
        nodes = {node.name: node for node in graph}
        unknown = sorted(name for name in chosen if name not in nodes)
        if unknown:
            raise ValueError(f"keep-float: no node named {', '.join(unknown)} in the graph")
        decisions = ctx.facts.get("decisions") or []
        quantized = {d.unit.name for d in decisions if d.quantized} - set(chosen)
        counts = run_in_float(model, [nodes[name] for name in chosen], quantized)
        notes = [f"{name}: kept in float ({rule})" for name, rule in chosen.items()]
        ctx.facts["decisions"] = [
            replace(d, weights="native", activations="native", weights_rule=chosen[d.unit.name],
                    activations_rule=chosen[d.unit.name]) if d.unit.name in chosen else d
            for d in decisions
        ]
        if ctx.facts.get("measured_elementwise"):
            ctx.facts["measured_elementwise"] = [n for n in ctx.facts["measured_elementwise"] if n not in chosen]
        quantized_inputs = ctx.facts.get("quantized_inputs")
        if quantized_inputs is not None:
            ctx.facts["quantized_inputs"] = {k: v for k, v in quantized_inputs.items() if k not in chosen}
        return PassResult(model, changed=True, stats={"kept_float": len(chosen), **counts}, notes=notes)


def run_in_float(model: ir.Model, nodes: list[ir.Node], quantized: set[str]) -> dict[str, int]:
    """Make `nodes` float nodes of the calibrated graph (their inputs float, the Q/DQ only they
    needed gone); `quantized` names the compute nodes that stay quantized. Shared with the spec's
    `native` nodes (assign-dtypes), so a node is float the same way whoever chose it."""
    graph = model.graph
    rewired = 0
    for node in nodes:
        for index in range(min(2, len(node.inputs))):
            rewired += _read_float_input(node, index)
    bypassed = drop_unneeded_pairs(graph, {node.name for node in nodes}, quantized)
    removed = len(graph)
    RemoveUnusedNodesPass()(model)
    removed -= len(graph)
    return {"inputs_rewired": rewired, "pairs_bypassed": bypassed, "qdq_nodes_removed": removed}


def _pair_of(value: ir.Value | None) -> tuple[ir.Node, ir.Node] | None:
    """The (QuantizeLinear, DequantizeLinear) that produce `value`, if it is a DQ of a Q."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    return (q, dq) if q is not None and q.op_type == "QuantizeLinear" else None


def _read_float_input(node: ir.Node, index: int) -> int:
    """Point `node`'s input at the float tensor its Q/DQ pair reads (the pair stays for other readers)."""
    pair = _pair_of(node.inputs[index])
    if pair is None:
        return 0
    node.replace_input_with(index, pair[0].inputs[0])
    return 1


def drop_unneeded_pairs(graph: ir.Graph, chosen: set[str], quantized: set[str]) -> int:
    """Bypass every activation Q/DQ pair that touches a node kept float (it reads the node's output,
    or its values reach the node) and reaches no quantized compute node: a pair only matters to the
    compute ops that read its grid before another Q re-grids it."""
    bypassed = 0
    for dq in [n for n in graph if n.op_type == "DequantizeLinear"]:
        pair = _pair_of(dq.outputs[0])
        if pair is None or _is_constant(pair[0].inputs[0]) or dq.outputs[0].is_graph_output():
            continue
        producer = pair[0].inputs[0].producer()
        reached = _computes_reached(dq.outputs[0])
        touches = bool(reached & chosen) or (producer is not None and producer.name in chosen)
        if touches and not reached & quantized:
            dq.outputs[0].replace_all_uses_with(pair[0].inputs[0])
            bypassed += 1
    return bypassed


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and (value.is_initializer() or value.const_value is not None)


def _computes_reached(value: ir.Value) -> set[str]:
    """Names of the compute nodes `value` reaches through ops that are neither compute nor a new Q."""
    reached: set[str] = set()
    seen: set[int] = set()
    stack = [value]
    while stack:
        for use in stack.pop().uses():
            node = use.node
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in COMPUTE_OPS:
                reached.add(node.name)
            elif node.op_type != "QuantizeLinear":
                stack.extend(node.outputs)
    return reached
