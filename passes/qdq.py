"""Q/DQ helpers the ONNX Runtime placement passes share: a node's quantization parameters,
a builder for QuantizeLinear/DequantizeLinear pairs and integer tensors, and the dims a value keeps
through a Q/DQ pair."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tao_qc.pipeline import constant_array, mark_created


def qparams(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    zero = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
    if scale is None or zero is None:
        return None
    return scale, zero


def integer_qparams(node: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """`qparams` of an integer Q/DQ; None for FP8 ones, which ORT's integer kernels never take
    (an FP8 node runs as a float kernel on its dequantized inputs)."""
    params = qparams(node)
    return params if params is not None and np.issubdtype(params[1].dtype, np.integer) else None


def unique_initializer_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_N` with the first N no initializer of `graph` has."""
    name, count = base, 0
    while name in graph.initializers:
        count += 1
        name = f"{base}_{count}"
    return name


class QdqBuilder:
    """Creates initializers and Q/DQ nodes with unique names, marked as this pass's."""

    def __init__(self, graph: ir.Graph, pass_name: str):
        self.graph, self.pass_name = graph, pass_name
        self.count = 0

    def initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name = base
        while name in self.graph.initializers:
            self.count += 1
            name = f"{base}_{self.count}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def node(self, op: str, inputs: list[ir.Value], name: str, attributes: dict | None = None) -> ir.Node:
        node = ir.Node("", op, inputs, attributes=[ir.AttrInt64(k, v) for k, v in (attributes or {}).items()],
                       name=name, num_outputs=1)
        node.outputs[0].name = f"{name}_output"
        return mark_created(node, self.pass_name)


def dims_through_qdq(value: ir.Value | None) -> tuple | None:
    """A tensor's dims (ints, or names/None where dynamic), looking through Q/DQ (modelopt leaves
    their outputs without shapes)."""
    while value is not None:
        if value.shape is not None:
            return tuple(d if isinstance(d, int) else None for d in value.shape)
        producer = value.producer()
        if producer is None or producer.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return None
        value = producer.inputs[0]
    return None
