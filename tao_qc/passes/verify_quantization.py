"""Check the quantized graph against the decisions, and run it once in ONNX Runtime.

- every node match-layers selected (and modelopt did not decline, see quantize-modelopt) reads its
  activation input, and its weight input, through a DequantizeLinear (Casts in between allowed), of
  the dtype its decision names (int8: int8 or uint8; fp8_e4m3fn: float8e4m3fn; fp8_e5m2: float8e5m2);
- no node kept in float reads a quantized weight; it may read a quantized activation only where
  that activation is shared with a quantized node or is a quantized node's output (modelopt and
  ONNX Runtime quantize a tensor once for all its readers; TensorRT and ORT still run the float
  node in float, on the rounded values);
- no orphan Q/DQ: a QuantizeLinear feeds only DequantizeLinear nodes, a DequantizeLinear is used
  (or is a graph output) and reads a QuantizeLinear or a constant; ops that move integers without
  computing on them may sit between the two (Transpose, Reshape: space-to-depth-stem; Pad with the
  zero point, Split, Slice, Concat: fit-ort-integer-kernels; Expand: upsample-on-uint8; Gather,
  Squeeze, Unsqueeze, Flatten, MaxPool: move-on-uint8; a Cast and a Gather from a 256-entry uint8
  table, which maps grid values to grid values: tabulate-activation-chains);
- the graph runs in ONNX Runtime (CPU) on the first calibration batch, with finite outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.errors import TaoQcError
from tao_qc.passes.tabulate_activation_chains import is_table_lookup
from tao_qc.pipeline import PassContext, PassResult, light_proto_and_weights

log = logging.getLogger("tao_qc.verify")


class VerificationError(TaoQcError):
    """The quantized graph does not match what the spec decided."""


@dataclass
class VerifyQuantization:
    name: str = "verify-quantization"
    run_onnxruntime: bool = True

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        decisions = ctx.facts.get("decisions") or []
        declined = ctx.facts.get("declined") or {}
        conflicts = ctx.facts.get("dtype_conflicts") or {}
        nodes = {node.name: node for node in model.graph}
        problems: list[str] = []
        checked = shared = 0
        quantized_names = {d.unit.name for d in decisions if d.quantized and d.unit.name not in declined}
        # Elementwise nodes modelopt measured for an ONNX Runtime target quantize their tensors too.
        quantized_names |= set(ctx.facts.get("measured_elementwise") or ())
        for decision in decisions:
            name = decision.unit.name
            node = nodes.get(name)
            if node is None:
                problems.append(f"{name}: node is gone from the quantized graph")
                continue
            inputs = [node.inputs[i] for i in (0, 1) if len(node.inputs) > i and node.inputs[i] is not None]
            through = [_through_dq(v) for v in inputs]
            if decision.quantized and name not in declined:
                checked += 1
                missing = [label for label, ok in zip(("activation", "weight"), through) if not ok]
                if missing:
                    problems.append(f"{name}: selected ({decision.reason}) but its {' and '.join(missing)} input has no Q/DQ")
                elif name not in conflicts:
                    for label, value, dtype in zip(("activation", "weight"), inputs, (decision.activations, decision.weights)):
                        found = _dq_type(value)
                        if found is not None and found not in QDQ_TYPES_OF[dtype]:
                            problems.append(f"{name}: asked for {dtype} ({decision.reason}) but its {label} Q/DQ is {found.name.lower()}")
            elif not decision.quantized and any(through):
                if len(through) > 1 and through[1]:
                    problems.append(f"{name}: kept in float ({decision.reason}) but its weight input has Q/DQ")
                elif _shared_with_quantized(inputs[0], quantized_names):
                    shared += 1
                else:
                    problems.append(f"{name}: kept in float ({decision.reason}) but its activation input has a "
                                    "Q/DQ no quantized node needs")
        problems.extend(orphan_qdq(model))
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise VerificationError("quantized graph check failed: " + "; ".join(problems[:3]) + more)
        notes = [f"{checked} quantized nodes read Q/DQ on their activation and weight inputs; "
                 f"{sum(1 for d in decisions if not d.quantized)} float nodes read no quantized weight; no orphan Q/DQ"]
        if shared:
            notes.append(f"{shared} float nodes read an activation quantized for a quantized neighbour (same tensor)")
        if declined:
            notes.append(f"{len(declined)} selected nodes were left in float by modelopt: {', '.join(sorted(declined))}")
        stats = {"nodes_checked": checked, "float_nodes_on_shared_qdq": shared}
        if self.run_onnxruntime:
            if ctx.calibration is None:
                notes.append("not run in ONNX Runtime: no sample data")
            else:
                try:
                    outputs = run_once(model, ctx.calibration.first())
                except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                    if ctx.facts.get("quantize_mode") not in ("fp8", "mixed") or "float8" not in str(exc):
                        raise
                    # FP8 Q/DQ graphs are made for TensorRT; ORT's CPU provider lacks float8 kernels
                    # for ops modelopt moves Q/DQ across (Transpose, Reshape in attention).
                    reason = str(exc).strip().splitlines()[0][:200]
                    log.warning("the FP8 graph was not run in ONNX Runtime (CPU has no float8 kernel here): %s", reason)
                    notes.append(f"warning: not run in ONNX Runtime: its CPU provider cannot run this FP8 graph ({reason})")
                    return PassResult(model, changed=False, stats=stats, notes=notes)
                bad = [name for name, value in outputs.items() if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value))]
                if bad:
                    raise VerificationError(f"the quantized graph gives NaN/Inf in {', '.join(bad)} on the first calibration batch")
                notes.append("runs in ONNX Runtime (CPU) on the first calibration batch: outputs "
                             + ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()))
                stats["onnxruntime_runs"] = 1
        return PassResult(model, changed=False, stats=stats, notes=notes)


def _through_dq(value: ir.Value) -> bool:
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


# What a decision's dtype may look like in the graph (placement shifts int8 activations to uint8).
QDQ_TYPES_OF = {
    "int8": (ir.DataType.INT8, ir.DataType.UINT8),
    "fp8_e4m3fn": (ir.DataType.FLOAT8E4M3FN,),
    "fp8_e5m2": (ir.DataType.FLOAT8E5M2,),
}


def _dq_type(value: ir.Value) -> ir.DataType | None:
    """The quantized type the DequantizeLinear feeding `value` (through Casts) reads."""
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None:
        producer = producer.inputs[0].producer()
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    source = producer.inputs[2] if len(producer.inputs) > 2 and producer.inputs[2] is not None else producer.inputs[0]
    return source.const_value.dtype if source.const_value is not None else source.dtype


def _shared_with_quantized(value: ir.Value, quantized: set[str]) -> bool:
    """Whether the DequantizeLinear feeding `value` also feeds a quantized node, or dequantizes
    the output of one."""
    dq = value.producer()
    while dq is not None and dq.op_type == "Cast":
        dq = dq.inputs[0].producer()
    if dq is None:
        return False
    readers = {user.name for user, _ in dq.outputs[0].uses()}
    if readers & quantized:
        return True
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    source = q.inputs[0].producer() if q is not None and q.op_type == "QuantizeLinear" and q.inputs[0] is not None else None
    if source is not None and source.name in quantized:
        return True
    # the same float tensor may be quantized by several Q/DQ pairs, one per reader
    original = q.inputs[0] if q is not None and q.op_type == "QuantizeLinear" else None
    if original is not None:
        for user, _ in original.uses():
            if user.op_type == "QuantizeLinear":
                for dq2, _ in user.outputs[0].uses():
                    if {u.name for u, _ in dq2.outputs[0].uses()} & quantized:
                        return True
    return False


# Ops that only move (or, MaxPool, select) a quantized tensor's integers, allowed between Q and DQ.
LAYOUT_OPS = ("Transpose", "Reshape", "Pad", "Split", "Slice", "Concat", "Expand", "Gather", "Squeeze", "Unsqueeze",
              "Flatten", "MaxPool", "DepthToSpace", "SpaceToDepth")


def _indexes_a_table(node: ir.Node) -> bool:
    """A Cast whose every reader looks its integers up in a table (tabulate-activation-chains)."""
    return node.op_type == "Cast" and bool(node.outputs[0].uses()) and all(
        is_table_lookup(user) and index == 1 for user, index in node.outputs[0].uses())


def _readers_through_layout(value: ir.Value) -> list[ir.Node]:
    readers = []
    for user, _ in value.uses():
        if user.op_type in LAYOUT_OPS or _indexes_a_table(user):
            for output in user.outputs:
                readers.extend(_readers_through_layout(output))
        elif user.op_type != "Shape":  # reads the dims, not the integers (upsample-on-uint8's repeat)
            readers.append(user)
    return readers


def orphan_qdq(model: ir.Model) -> list[str]:
    problems = []
    for node in model.graph:
        if node.op_type == "QuantizeLinear":
            users = [user.op_type for user in _readers_through_layout(node.outputs[0])]
            if not users and not node.outputs[0].is_graph_output():
                problems.append(f"{node.name}: QuantizeLinear whose output nobody reads")
            elif any(op != "DequantizeLinear" for op in users):
                problems.append(f"{node.name}: QuantizeLinear feeds {sorted(set(users))}, not only DequantizeLinear")
        elif node.op_type == "DequantizeLinear":
            out = node.outputs[0]
            if not out.uses() and not out.is_graph_output():
                problems.append(f"{node.name}: DequantizeLinear whose output nobody reads")
            source = node.inputs[0]
            producer = source.producer() if source is not None else None
            while producer is not None and (producer.op_type in LAYOUT_OPS or _indexes_a_table(producer)):
                source = producer.inputs[1 if is_table_lookup(producer) else 0]  # a table's: the integers looked up
                producer = source.producer() if source is not None else None
            constant = source is not None and (source.const_value is not None or source.is_initializer())
            if not constant and (producer is None or producer.op_type not in ("QuantizeLinear", "Constant")):
                problems.append(f"{node.name}: DequantizeLinear reads {producer.op_type if producer else 'a graph input'}, "
                                "not a QuantizeLinear or a constant")
    return problems


# Weights of these dtypes are handed to ORT as numpy arrays rather than serialized into the model
# (ORT's Python API takes no float8/int4 arrays: those stay initializers).
FEEDABLE_WEIGHTS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8,
                              ir.DataType.UINT8, ir.DataType.INT32, ir.DataType.INT64})


def run_once(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model` in ORT (CPU) on `feeds`.

    The large weights go in as extra graph inputs fed with the tensors in memory: serializing
    them, and ORT parsing them back, cost several times the run itself (0.2 s against 0.03 s on
    ResNet-18), and where a value comes from does not change whether the graph runs or what it
    computes. The saved model runs whole in the comparison that ends compile.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure is raised as an exception and reported once, by the caller
    # Whether the graph runs and what it computes do not depend on ORT's fusions; the optimized
    # session is built once, by the comparison that ends compile.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    proto, weights = light_proto_and_weights(model, 1024, FEEDABLE_WEIGHTS)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {**{k: v.numpy() for k, v in weights.items()}, **feeds})))
