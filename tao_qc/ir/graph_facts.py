"""What an ONNX graph shows about its quantization, read from the graph alone.

A compute node (Conv, ConvTranspose, Gemm, MatMul) is quantized when both its activation (input 0)
and its weight (input 1) arrive through DequantizeLinear, possibly via layout-only ops (a weight
Transpose/Reshape); an integer op (QLinearConv, ConvInteger, MatMulInteger, ...) is quantized by
construction. `inspect`, the report and the verifier share these facts so they never disagree.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx
from onnx import TensorProto

from tao_qc.ir.textform import op_counts, op_key, value_types

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "MatMulInteger",
        "QLinearMatMul",
        "com.microsoft::QLinearConv",
        "com.microsoft::QGemm",
        "com.microsoft::QLinearMatMul",
        "com.microsoft::MatMulIntegerToFloat",
        "com.microsoft::DynamicQuantizeMatMul",
        "com.microsoft::QAttention",
    }
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "com.microsoft::QuantizeLinear", "com.microsoft::DequantizeLinear"})
# Ops that move or re-view a tensor without computing on it: a DequantizeLinear behind them still
# feeds the compute node quantized data (modelopt may transpose a Gemm weight after its DQ).
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
_MAX_LAYOUT_HOPS = 4


def dtype_label(data_type: int) -> str:
    """`int8`, `uint8`, `float8e4m3fn`, `float` ... (ONNX's own names, lower-case)."""
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"dtype{data_type}"


class _Graph:
    def __init__(self, proto: onnx.ModelProto):
        graph = proto.graph
        self.nodes = list(graph.node)
        self.producer = {name: node for node in self.nodes for name in node.output if name}
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input} - set(self.initializers)
        self.types = value_types(proto, infer=False)

    def elem_type(self, name: str) -> int | None:
        if name in self.initializers:
            return self.initializers[name].data_type
        type_proto = self.types.get(name)
        if type_proto is not None and type_proto.HasField("tensor_type") and type_proto.tensor_type.elem_type:
            return type_proto.tensor_type.elem_type
        return None

    def numel(self, name: str) -> int | None:
        if name in self.initializers:
            total = 1
            for dim in self.initializers[name].dims:
                total *= dim
            return total
        type_proto = self.types.get(name)
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            return None
        total = 1
        for dim in type_proto.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                return None
            total *= dim.dim_value
        return total

    def quantized_dtype(self, node: onnx.NodeProto) -> str:
        """The integer/fp8 type a Q produces or a DQ consumes."""
        kind = node.op_type
        if kind == "QuantizeLinear":
            for attr in node.attribute:
                if attr.name == "output_dtype" and attr.i:
                    return dtype_label(attr.i)
        else:
            elem = self.elem_type(node.input[0])
            if elem is None:
                producer = self.producer.get(node.input[0])
                if producer is not None and producer.op_type == "QuantizeLinear":
                    return self.quantized_dtype(producer)
            else:
                return dtype_label(elem)
        if len(node.input) > 2 and node.input[2]:
            elem = self.elem_type(node.input[2])
            if elem is not None:
                return dtype_label(elem)
        return "uint8" if kind == "QuantizeLinear" else "unknown"

    def granularity(self, dq: onnx.NodeProto) -> str:
        numel = self.numel(dq.input[1]) if len(dq.input) > 1 else None
        if numel is None:
            return "unknown granularity"
        if numel <= 1:
            return "per-tensor"
        axis = next((attr.i for attr in dq.attribute if attr.name == "axis"), 1)
        blocked = next((attr.i for attr in dq.attribute if attr.name == "block_size"), 0)
        return f"blocked (axis {axis}, block {blocked})" if blocked else f"per-channel (axis {axis})"

    def trace(self, name: str) -> tuple[onnx.NodeProto | None, str]:
        """(the DequantizeLinear feeding `name`, or None; where `name` comes from, in words)."""
        current = name
        for _ in range(_MAX_LAYOUT_HOPS + 1):
            node = self.producer.get(current)
            if node is None:
                break
            if node.op_type == "DequantizeLinear":
                return node, node.name or "an unnamed DequantizeLinear"
            if node.op_type not in LAYOUT_OPS or not node.input:
                break
            current = node.input[0]
        return None, self.source(name)

    def source(self, name: str) -> str:
        if not name:
            return "absent"
        if name in self.initializers:
            tensor = self.initializers[name]
            shape = ",".join(str(d) for d in tensor.dims)
            return f"{dtype_label(tensor.data_type)} initializer [{shape}]"
        if name in self.graph_inputs:
            return f"graph input {name}"
        node = self.producer.get(name)
        if node is None:
            return f"undefined value {name}"
        return f"{node.op_type} {node.name}".rstrip()


def _compute_fact(graph: _Graph, node: onnx.NodeProto, index: int) -> dict[str, Any]:
    key = op_key(node)
    # An unnamed node is named by its op and position so facts about it still line up in a table.
    fact: dict[str, Any] = {"name": node.name or f"{key}#{index}", "op_type": key}
    if key in INTEGER_OPS:
        fact.update(
            status="quantized",
            activation=_integer_input_dtype(graph, node, 0),
            weights=_integer_input_dtype(graph, node, 3 if "QLinear" in key else 1),
            evidence=f"integer op {key}",
        )
        return fact
    activation_name = node.input[0] if node.input else ""
    weight_name = node.input[1] if len(node.input) > 1 else ""
    act_dq, act_source = graph.trace(activation_name)
    weight_dq, weight_source = graph.trace(weight_name)
    fact["activation"] = graph.quantized_dtype(act_dq) if act_dq else "float"
    fact["weights"] = graph.quantized_dtype(weight_dq) if weight_dq else "float"
    if weight_dq is not None:
        fact["weights_granularity"] = graph.granularity(weight_dq)
    if act_dq is not None and weight_dq is not None:
        fact["status"] = "quantized"
    elif act_dq is not None or weight_dq is not None:
        fact["status"] = "partial"
    else:
        fact["status"] = "float"
    if act_dq is not None and weight_dq is not None:
        fact["evidence"] = f"both inputs via DequantizeLinear ({act_source}; {weight_source})"
    elif act_dq is None and weight_dq is None:
        fact["evidence"] = f"no DequantizeLinear on either input (activation from {act_source}; weights from {weight_source})"
    else:
        act_text = f"activation via {act_source}" if act_dq else f"activation float from {act_source}"
        weight_text = f"weights via {weight_source}" if weight_dq else f"weights float from {weight_source}"
        fact["evidence"] = f"{act_text}; {weight_text}"
    return fact


def _integer_input_dtype(graph: _Graph, node: onnx.NodeProto, index: int) -> str:
    if len(node.input) <= index or not node.input[index]:
        return "unknown"
    elem = graph.elem_type(node.input[index])
    return dtype_label(elem) if elem is not None else "unknown"


def quantization_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Facts about the main graph's quantization, as plain JSON-ready data.

    Keys: `nodes` (count), `op_counts`, `qdq` ({"QuantizeLinear": n, "DequantizeLinear": n}),
    `qdq_dtypes` ({"int8": n, ...} over all Q and DQ nodes), `compute` ({"total", "quantized",
    "partial", "float"}), `compute_nodes` (per node, graph order: name, op_type, status
    quantized|partial|float, activation and weights dtype or "float", weights_granularity, evidence).
    """
    graph = _Graph(model)
    counts = op_counts(model)
    qdq = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    qdq_dtypes: Counter[str] = Counter()
    compute_nodes = []
    for index, node in enumerate(graph.nodes):
        key = op_key(node)
        if key in QDQ_OPS:
            qdq[node.op_type] += 1
            qdq_dtypes[graph.quantized_dtype(node)] += 1
        elif key in COMPUTE_OPS or key in INTEGER_OPS:
            compute_nodes.append(_compute_fact(graph, node, index))
    statuses = Counter(fact["status"] for fact in compute_nodes)
    return {
        "nodes": len(graph.nodes),
        "op_counts": counts,
        "qdq": qdq,
        "qdq_dtypes": dict(sorted(qdq_dtypes.items())),
        "compute": {
            "total": len(compute_nodes),
            "quantized": statuses["quantized"],
            "partial": statuses["partial"],
            "float": statuses["float"],
        },
        "compute_nodes": compute_nodes,
    }


def quantized_node_names(model: onnx.ModelProto) -> set[str]:
    """Names of the compute nodes the graph runs quantized (both inputs via DQ, or integer ops)."""
    return {fact["name"] for fact in quantization_summary(model)["compute_nodes"] if fact["status"] == "quantized"}
