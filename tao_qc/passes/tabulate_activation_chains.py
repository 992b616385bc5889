"""Run an activation ONNX Runtime has no integer kernel for as a 256-entry table on uint8.

Between two integer Convs, a chain of elementwise ops on one tensor (Mish as `x * Tanh(Softplus(x))`,
and any chain name-activation-chains could not name) runs as DequantizeLinear, each op over float
tensors, and QuantizeLinear. Its input holds one of 256 values, so its quantized output is a function
of those 256: the table `T[k] = Q_out(chain(DQ_in(k)))`, computed here in float64 from the chain's own
ops, is what the float path computes, rounded once instead of at every op. ORT runs a table as `Cast`
to int32 and `Gather` from a uint8 constant, its only general lookup.

A table is not always faster: ORT's Gather copies element by element, where most float ops stream.
Measured on a [1, 64, 80, 80] tensor (AVX-512 VNNI EPYC, 2 threads, median of 60 interleaved runs):
Cast + Gather 0.89 ms; DequantizeLinear 0.09 ms, QuantizeLinear 0.06 ms, most elementwise float ops
(Add, Mul, Div, Max, Min, Clip, Relu, Sigmoid, Tanh, Exp, Abs, Neg, Reciprocal, HardSigmoid,
LeakyRelu) 0.08-0.09 ms, Pow 0.12 ms, Erf and HardSwish 0.18 ms, Log 0.36 ms and Softplus 2.2 ms.
RELATIVE_COST holds those in units of one streaming op. A chain becomes a table where its float path
(DequantizeLinear, its ops, QuantizeLinear) costs at least TABLE_MARGIN times the table: Mish as
`x * Tanh(Softplus(x))` (measured whole: 2.7 ms in float, 0.69 ms as a table), not SiLU (0.23 ms,
ORT fuses it), GELU in either form (0.50-0.60 ms, fused), HardSwish in pieces (0.26 ms) nor Mish
written with Exp and Log (0.60 ms). The margin keeps a choice the per-op sum gets nearly right (it
ignores ORT's fusions, which only make the float path cheaper) off the table. (SiLU, HardSwish,
HardSigmoid, LeakyRelu and Sigmoid run on integer kernels anyway: name-activation-chains and
integer-elementwise give them those.)

Where a chain ends in an op with an integer kernel (Mish's last Mul, `x * t`), quantize-modelopt has
measured that op like any Mul of two uint8 tensors (integer-elementwise's `elementwise_to_measure`
asks for it), so the table computes `t = Tanh(Softplus(x))` and ORT runs the product as QLinearMul;
the Mul's output grid is what lets a Split, Concat or residual Add after it stay on uint8 too.

A unit qualifies when its input is a per-tensor uint8 DequantizeLinear, the chain computes from that
value alone (scalar constants aside), and every reader of the chain's result is a QuantizeLinear to
one per-tensor uint8 grid. The DequantizeLinear stays where something else reads it.

Runs in placement for `target: onnxruntime`, after the passes that give ops integer kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.name_activation_chains import chain_from, evaluate_chain
from tao_qc.passes.qdq import QdqBuilder, integer_qparams, readers, same_grid, uint8_dequantize
from tao_qc.pipeline import PassContext, PassResult, constant_array

TABLE_SIZE = 256
# Time per element, in units of one streaming float op (measured as the module docstring says).
RELATIVE_COST = {"Softplus": 27.0, "Log": 4.5, "Erf": 2.2, "HardSwish": 2.2, "Pow": 1.5}
DEQUANTIZE_COST, QUANTIZE_COST, TABLE_COST = 1.1, 0.7, 11.0
TABLE_MARGIN = 1.5


@dataclass
class TabulateActivationChains:
    name: str = "tabulate-activation-chains"
    # Tests build every chain's table to check it is exact; compile takes the measured rule above.
    every_chain: bool = False

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        order = {id(node): index for index, node in enumerate(graph)}
        notes: list[str] = []
        tables = 0
        for dq in [node for node in graph if node.op_type == "DequantizeLinear"]:
            unit = _unit_after(dq, order)
            if unit is None:
                continue
            nodes, exit_value, quantizers = unit
            if not self.every_chain and float_cost(nodes) < TABLE_MARGIN * TABLE_COST:
                continue
            table = _table(dq, nodes, exit_value, quantizers[0])
            if table is None:
                continue
            label = exit_value.name or nodes[-1].name
            values = build.initializer(f"{label}_table", table)
            index = build.node("Cast", [dq.inputs[0]], f"{label}_table_index", {"to": ir.DataType.INT32.value})
            lookup = build.node("Gather", [values, index.outputs[0]], f"{label}_table", {"axis": 0})
            graph.insert_after(dq, [index, lookup])  # before every reader of the chain's quantized result
            lookup.outputs[0].dtype = ir.DataType.UINT8
            lookup.outputs[0].shape = quantizers[0].outputs[0].shape
            for q in quantizers:
                q.outputs[0].replace_all_uses_with(lookup.outputs[0], replace_graph_outputs=True)
            graph.remove([*nodes, *quantizers], safe=True)
            if not dq.outputs[0].uses() and not dq.outputs[0].is_graph_output():
                graph.remove(dq, safe=True)
            tables += 1
            notes.append(f"{', '.join(n.name for n in nodes)}: a {TABLE_SIZE}-entry uint8 table "
                         f"({', '.join(n.op_type for n in nodes)}; in float about {float_cost(nodes) / TABLE_COST:.1f}x the table's time)")
        RemoveUnusedNodesPass()(model)
        if not notes:
            notes.append("no chain between uint8 grids that a table computes faster")
        return PassResult(model, changed=bool(tables), stats={"tables": tables}, notes=notes)


def float_cost(nodes: list[ir.Node]) -> float:
    """What DequantizeLinear, the chain's ops and QuantizeLinear cost per element, in RELATIVE_COST's units."""
    return DEQUANTIZE_COST + QUANTIZE_COST + sum(RELATIVE_COST.get(node.op_type, 1.0) for node in nodes)


def is_table_lookup(node: ir.Node) -> bool:
    """A Gather from a 256-entry uint8 constant (this pass's table): it maps uint8 grid values to grid values."""
    if node.op_type != "Gather" or len(node.inputs) != 2 or node.inputs[0] is None:
        return False
    table = constant_array(node.inputs[0])
    return table is not None and table.dtype == np.uint8 and table.shape == (TABLE_SIZE,)


def _unit_after(dq: ir.Node, order: dict[int, int]) -> tuple[list[ir.Node], ir.Value, list[ir.Node]] | None:
    """The chain reading `dq`'s output, its result, and the QuantizeLinear nodes reading that result
    (all to one per-tensor uint8 grid); None where `dq` does not start such a unit."""
    if uint8_dequantize(dq.outputs[0]) is None:
        return None
    chain = chain_from(dq.outputs[0], order)
    if chain is None:
        return None
    nodes, exit_value = chain
    quantizers = readers(exit_value)
    if not quantizers or exit_value.is_graph_output() or any(q.op_type != "QuantizeLinear" for q in quantizers):
        return None
    first, *others = (integer_qparams(q) for q in quantizers)
    if first is None or first[0].size != 1 or first[1].dtype != np.uint8 or not all(same_grid(first, g) for g in others):
        return None
    return nodes, exit_value, quantizers


def _table(dq: ir.Node, nodes: list[ir.Node], exit_value: ir.Value, q: ir.Node) -> np.ndarray | None:
    """T[k] for k in 0..255: k dequantized as ORT does (float32 scale), the chain in float64, then
    quantized as QuantizeLinear does (round half to even, saturate)."""
    in_scale, in_zero = (np.asarray(a).reshape(()) for a in integer_qparams(dq))
    out_scale, out_zero = (np.asarray(a).reshape(()) for a in integer_qparams(q))
    levels = np.arange(TABLE_SIZE, dtype=np.float64)
    dequantized = (levels - float(in_zero)) * float(np.float32(in_scale))
    result = evaluate_chain(nodes, dq.outputs[0], exit_value, dequantized)
    if result is None:
        return None
    return np.clip(np.rint(result / float(np.float32(out_scale))) + int(out_zero), 0, 255).astype(np.uint8)
