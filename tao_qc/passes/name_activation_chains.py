"""Name each chain of elementwise ops that computes one activation function as that function's op.

Exporters write activations in pieces: paddle2onnx writes every HardSwish as `x * Clip(x + 3, 0, 6)
/ 6` (a PicoDet detector holds 94 of them), others write `Relu6(x + 3) / 6` for a HardSigmoid or
`Max(x, 0.1 * x)` for a LeakyReLU. ONNX Runtime has integer kernels for the whole functions
(integer-elementwise runs a HardSwish as QLinearAdd + QLinearMul, ORT fuses a quantized LeakyRelu
into QLinearLeakyRelu) and none for the pieces: between two integer Convs a decomposed HardSwish runs
DequantizeLinear, four float ops and QuantizeLinear, and the model ran slower than FP32 (0.92-1.01x
on a real AVX2 EPYC, where ORT's own quantizer got 1.11-1.21x).

A chain here is every node reachable from one tensor `x` through elementwise ops whose other inputs
are scalar constants or values of the chain itself (`x * Sigmoid(x)` counts), with one value read
outside it. Which function it computes is not matched by pattern, so it holds however the exporter
wrote it: the chain is evaluated in float64 on a dense grid over [-GRID_SPAN, GRID_SPAN] with the
ops' own definitions and compared with each function below; one that agrees everywhere (within
float32 rounding) replaces the chain:

- HardSwish: `x * max(0, min(1, x / 6 + 1/2))` (one HardSwish from opset 14; before it,
  `x * HardSigmoid(x)`, which integer-elementwise runs the same way);
- HardSigmoid(alpha, beta): `max(0, min(1, alpha * x + beta))`;
- LeakyRelu(alpha): `x` for x >= 0, `alpha * x` below;
- Sigmoid: `1 / (1 + exp(-x))` (which integer-elementwise runs as QLinearSigmoid).

The FP32 model computes the same function (every test compares it on all 256 inputs of a uint8
grid). Chains of other functions (SiLU as `x * Sigmoid(x)`, GELU, Mish) are left as they are: SiLU's
Sigmoid and Mul each have an integer kernel already (on a uint8 [1, 64, 80, 80] the pair,
QLinearSigmoid + QLinearMul, took 0.12 ms where a 256-entry table took 0.78 ms); for GELU and Mish ONNX
Runtime has none, and tabulate-activation-chains runs them as a table on uint8 where that is faster
than the float chain (Mish; not GELU, which ORT fuses). Named before fold-conv-affine in each
canonicalization round: it would fold a chain's last step (paddle2onnx's `/ 6`) into the next Conv and
leave `6 x HardSwish`, which matches none of the functions above.

Runs in canonicalization for `target: onnxruntime`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created

log = logging.getLogger("tao_qc.quantize")

GRID_SPAN = 16.0
GRID = np.linspace(-GRID_SPAN, GRID_SPAN, 6401)  # steps of 1/200: every kink of the functions below lies on it
HARDSWISH_OPSET = 14


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _clip(node: ir.Node, x: np.ndarray, low: np.ndarray | None, high: np.ndarray | None) -> np.ndarray:
    low = float(low) if low is not None else node.attributes.get_float("min", -np.inf)
    high = float(high) if high is not None else node.attributes.get_float("max", np.inf)
    return np.clip(x, low, high)


def _hard_sigmoid_of(node: ir.Node, x: np.ndarray) -> np.ndarray:
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    return np.clip(alpha * x + beta, 0.0, 1.0)


# Each op's float64 definition (ONNX's), with its inputs as given (None where absent).
UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Relu": lambda n, x: np.maximum(x, 0.0),
    "Sigmoid": lambda n, x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": lambda n, x: np.tanh(x),
    "Erf": lambda n, x: _erf(x),
    "Exp": lambda n, x: np.exp(x),
    "Log": lambda n, x: np.log(x),
    "Softplus": lambda n, x: np.logaddexp(0.0, x),
    "Abs": lambda n, x: np.abs(x),
    "Neg": lambda n, x: -x,
    "Reciprocal": lambda n, x: 1.0 / x,
    "HardSigmoid": _hard_sigmoid_of,
    "HardSwish": lambda n, x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "LeakyRelu": lambda n, x: np.where(x >= 0, x, n.attributes.get_float("alpha", 0.01) * x),
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Max": np.maximum, "Min": np.minimum,
    "Pow": np.power,
}


@dataclass
class NameActivationChains:
    name: str = "name-activation-chains"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", 1)
        named: dict[str, int] = {}
        notes: list[str] = []
        order = {id(node): index for index, node in enumerate(graph)}
        removed: set[int] = set()  # nodes of chains already replaced (their values still list them as users)
        for source in list(_float_values(graph)):
            if source.producer() is not None and id(source.producer()) in removed:
                continue
            chain = chain_from(source, order)
            if chain is None or any(id(node) in removed for node in chain[0]):
                continue
            nodes, exit_value = chain
            values = evaluate_chain(nodes, source, exit_value)
            if values is None:
                continue
            function = _function_of(values)
            if function is None:
                continue
            kind, attributes = function
            replacement = _write(kind, attributes, source, opset, f"{exit_value.name or nodes[-1].name}_{kind}")
            for node in replacement:
                mark_created(node, self.name)
            graph.insert_after(nodes[-1], replacement)
            exit_value.replace_all_uses_with(replacement[-1].outputs[0], replace_graph_outputs=True)
            replacement[-1].outputs[0].name = exit_value.name
            replacement[-1].outputs[0].dtype, replacement[-1].outputs[0].shape = exit_value.dtype, exit_value.shape
            graph.remove(nodes, safe=True)  # safe: also detaches them from the values they read
            removed.update(id(node) for node in nodes)
            named[kind] = named.get(kind, 0) + 1
            notes.append(f"{', '.join(n.name for n in nodes)}: {kind}"
                         + (f"({', '.join(f'{k}={v:g}' for k, v in attributes.items())})" if attributes else ""))
        RemoveUnusedNodesPass()(model)
        if not notes:
            notes.append("no elementwise chain computing HardSwish, HardSigmoid, LeakyRelu or Sigmoid")
        return PassResult(model, changed=bool(named),
                          stats={"hardswish_named": named.get("HardSwish", 0), "hardsigmoid_named": named.get("HardSigmoid", 0),
                                 "leakyrelu_named": named.get("LeakyRelu", 0), "relu_named": named.get("Relu", 0),
                                 "sigmoid_named": named.get("Sigmoid", 0)},
                          notes=notes)


def _float_values(graph: ir.Graph):
    for value in graph.inputs:
        yield value
    for node in graph:
        yield from node.outputs


def _scalar(value: ir.Value | None) -> np.ndarray | None:
    array = constant_array(value) if value is not None else None
    if array is None or array.size != 1 or not np.issubdtype(array.dtype, np.floating):
        return None
    return array.astype(np.float64).reshape(())


def chain_from(source: ir.Value, order: dict[int, int]) -> tuple[list[ir.Node], ir.Value] | None:
    """The elementwise nodes computing from `source` alone (scalar constants aside), in graph order,
    and the one value of theirs read elsewhere; None where there is no such chain of two or more."""
    if source.dtype is not None and source.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
        return None
    inside: set[int] = {id(source)}
    nodes: list[ir.Node] = []
    frontier = [source]
    while frontier:
        value = frontier.pop()
        for use in list(value.uses()):
            node = use.node
            if node in nodes or not _elementwise(node, inside):
                continue
            nodes.append(node)
            inside.update(id(v) for v in node.outputs)
            frontier.extend(node.outputs)
    if len(nodes) < 2:
        return None
    # Each node's non-constant inputs must all lie inside (a node reached before its other input was).
    if any(not _elementwise(node, inside) for node in nodes):
        return None
    exits = [v for node in nodes for v in node.outputs
             if v.is_graph_output() or any(id(u.node) not in {id(n) for n in nodes} for u in v.uses())]
    if len(exits) != 1:
        return None
    nodes.sort(key=lambda n: order.get(id(n), 0))
    return nodes, exits[0]


def _elementwise(node: ir.Node, inside: set[int]) -> bool:
    if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return False
    if node.op_type in UNARY:
        return node.inputs[0] is not None and id(node.inputs[0]) in inside and len(node.inputs) == 1
    if node.op_type == "Clip":
        return (node.inputs[0] is not None and id(node.inputs[0]) in inside
                and all(v is None or _scalar(v) is not None for v in node.inputs[1:]))
    if node.op_type in BINARY and len(node.inputs) == 2:
        ours = [v is not None and id(v) in inside for v in node.inputs]
        return any(ours) and all(o or _scalar(v) is not None for o, v in zip(ours, node.inputs))
    return False


def evaluate_chain(nodes: list[ir.Node], source: ir.Value, exit_value: ir.Value,
                   inputs: np.ndarray = GRID) -> np.ndarray | None:
    """The chain's output, in float64 by each op's ONNX definition, at each of `inputs` for `source`;
    None where it is not finite everywhere or a node reads a value computed after it."""
    known: dict[int, np.ndarray] = {id(source): inputs}

    def value_of(v: ir.Value) -> np.ndarray:
        return known[id(v)] if id(v) in known else _scalar(v)

    with np.errstate(all="ignore"):
        for node in nodes:
            if any(v is not None and id(v) not in known and _scalar(v) is None for v in node.inputs):
                return None  # an input computed by a node not yet evaluated: not a chain in graph order
            if node.op_type == "Clip":
                out = _clip(node, value_of(node.inputs[0]), *[value_of(v) if v is not None else None
                                                              for v in (list(node.inputs[1:]) + [None, None])[:2]])
            elif node.op_type in UNARY:
                out = UNARY[node.op_type](node, value_of(node.inputs[0]))
            else:
                out = BINARY[node.op_type](value_of(node.inputs[0]), value_of(node.inputs[1]))
            known[id(node.outputs[0])] = np.broadcast_to(out, inputs.shape).astype(np.float64)
    result = known.get(id(exit_value))
    return result if result is not None and np.all(np.isfinite(result)) else None


def _agrees(values: np.ndarray, expected: np.ndarray) -> bool:
    return bool(np.all(np.abs(values - expected) <= 1e-6 * (1.0 + np.abs(expected))))


def _function_of(values: np.ndarray) -> tuple[str, dict[str, float]] | None:
    if _agrees(values, UNARY["HardSwish"](None, GRID)):
        return "HardSwish", {}
    if _agrees(values, UNARY["Sigmoid"](None, GRID)):
        return "Sigmoid", {}
    inside = (values > 1e-9) & (values < 1 - 1e-9)
    if inside.sum() >= 2 and np.all(values >= -1e-9) and np.all(values <= 1 + 1e-9):
        alpha, beta = np.polyfit(GRID[inside], values[inside], 1)
        if alpha > 0 and _agrees(values, np.clip(alpha * GRID + beta, 0.0, 1.0)):
            return "HardSigmoid", {"alpha": float(alpha), "beta": float(beta)}
    positive = GRID > 0
    if _agrees(values[positive], GRID[positive]):
        alpha = float(values[0] / GRID[0])
        if 0 <= alpha < 1 and _agrees(values, np.where(GRID >= 0, GRID, alpha * GRID)):
            return ("LeakyRelu", {"alpha": alpha}) if alpha > 0 else ("Relu", {})
    return None


def _write(kind: str, attributes: dict[str, float], source: ir.Value, opset: int, name: str) -> list[ir.Node]:
    if kind == "HardSwish" and opset < HARDSWISH_OPSET:
        gate = ir.node("HardSigmoid", [source], {"alpha": 1.0 / 6.0, "beta": 0.5}, name=f"{name}_gate")
        return [gate, ir.node("Mul", [source, gate.outputs[0]], name=name)]
    return [ir.node(kind, [source], {k: float(v) for k, v in attributes.items()}, name=name)]
