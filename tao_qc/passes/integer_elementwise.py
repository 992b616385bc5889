"""Keep activations uint8 across HardSwish, HardSigmoid and Sigmoid for ONNX Runtime's integer kernels.

Mobile networks (MobileNetV3, PP-LCNet, PP-OCR) put a HardSwish after nearly every Conv and a
HardSigmoid or Sigmoid gate in their squeeze-excite blocks. ONNX Runtime has no integer HardSwish
or HardSigmoid, so between two integer Convs it runs DequantizeLinear, HardSigmoid, Mul and
QuantizeLinear over float tensors: four passes over the activation, 30 bytes moved per element,
more than the integer Conv itself takes on these models. This pass rewrites them with integer
kernels ORT has, exactly or to within the output's quantization step:

- HardSigmoid(x) = clip(alpha*x + beta, 0, 1) is an affine map of x clipped to [0, 1], which is
  what requantization does: `x -> Q(scale 1/(255*alpha), zero point floor(255*beta))`, read with
  scale 1/255 and zero point 0, after adding the fraction of 255*beta the zero point cannot hold
  to x (1/2 step for beta 0.5). ORT runs it as one QLinearAdd of a constant on uint8 (2 bytes per
  element); 0 and 1 are exact, the rest rounds to 1/255.
- HardSwish(x) = x * HardSigmoid(x) with alpha 1/6, beta 1/2: the gate above, then a QLinearMul of
  x by the gate into the output's quantization (5 bytes per element in all).
- A scalar scale and shift after a HardSwish (PP-LCNetV3's learnable affine block before a padded
  Conv, which fold-conv-affine cannot fold) go into that QLinearMul's output scale and zero
  point; where the shift is not a whole number of steps, the output grid is widened (never
  narrowed) until it is, or, for shifts under one step, rounded to the nearest step.
- Sigmoid's output lies in (0, 1): its quantization becomes scale 1/255, zero point 0 (modelopt's
  symmetric range wastes half the grid there), and ORT runs it as QLinearSigmoid.

The other elementwise ops with integer kernels (Mul, Add, GlobalAveragePool, AveragePool) need
no rewriting: once modelopt has measured their inputs and outputs (`elementwise_to_measure`, which
quantize-modelopt asks for with target onnxruntime), their `DQ -> op -> Q` units are what ORT
fuses into QLinearMul, QLinearAdd, QLinearGlobalAveragePool and QLinearAveragePool. That holds
across ops that only move values too (a nearest Resize, a Concat, a Reshape): move-on-uint8 and
upsample-on-uint8 run them on uint8, so a squeeze-excite's `x + x * gate` that a feature pyramid
upsamples into a Concat (PP-OCRv5's detector neck) is measured like one a Conv reads directly.

The input of each rewritten op must be uint8 through a DequantizeLinear and its output read only
by QuantizeLinear nodes with one set of parameters (modelopt's measured range of the output);
anything else is left as it is. Ranges: modelopt's measured ones for inputs and outputs; the
gates' ranges are their functions' bounds, recorded in `ctx.facts["derived_ranges"]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.move_on_uint8 import VALUE_MOVING
from tao_qc.passes.name_activation_chains import chain_from
from tao_qc.passes.qdq import QdqBuilder, qparams, readers, requantize_biases, uint8_dequantize
from tao_qc.passes.tabulate_activation_chains import TABLE_COST, TABLE_MARGIN, float_cost
from tao_qc.passes.upsample_on_uint8 import nearest_resize
from tao_qc.pipeline import PassContext, PassResult, constant_array

# Ops ORT runs on uint8 once their inputs and output are quantized (directly, or as rewritten here).
INTEGER_ELEMENTWISE = frozenset({"HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "Mul", "Add", "GlobalAveragePool",
                                 "AveragePool"})
# Binary ops count only with two activation inputs: a constant operand is a scale or shift that
# fold-conv-affine or this pass folds away, or that stays float.
BINARY = frozenset({"Mul", "Add"})
HARDSWISH_ALPHA, HARDSWISH_BETA = 1.0 / 6.0, 0.5
AFFINE_STEPS = ("Mul", "Add", "Sub", "Div")


def elementwise_to_measure(model: ir.Model, quantized: set[str]) -> list[ir.Node]:
    """The elementwise nodes whose output range modelopt must measure for this pass and ORT to keep
    them on uint8: reachable from the quantized compute nodes (`quantized` names) through
    INTEGER_ELEMENTWISE ops with only quantized activation inputs (or the chains
    tabulate-activation-chains will run as tables), and read by a quantized compute node or another
    such node (a reader in a float region gains nothing from the range)."""
    graph = model.graph
    reachable: set[int] = set()  # ids of values that are (or will be) uint8
    candidates: list[ir.Node] = []
    passed: list[ir.Node] = []  # candidates and the value-moving ops between them, in graph order
    order = {id(node): index for index, node in enumerate(graph)}
    tabulated: set[int] = set()  # ids of nodes tabulate-activation-chains will run as a table

    def uint8(values) -> None:
        for value in values:
            reachable.add(id(value))
            tabulated.update(id(n) for n in _tabulated_chain(value, order))

    for node in graph:
        if id(node) in tabulated:
            reachable.update(id(v) for v in node.outputs)
            passed.append(node)
            continue
        if node.name in quantized:
            uint8(node.outputs)
            continue
        moved = _moved_inputs(node)
        if moved is not None:
            if moved and all(id(v) in reachable for v in moved):
                uint8(node.outputs)
                passed.append(node)
            continue
        if node.op_type not in INTEGER_ELEMENTWISE or node.domain not in ("", "ai.onnx"):
            continue
        inputs = [v for v in node.inputs if v is not None]
        if node.op_type in BINARY and any(constant_array(v) is not None for v in inputs):
            continue
        if inputs and all(id(v) in reachable for v in inputs):
            uint8(node.outputs[:1])
            candidates.append(node)
            passed.append(node)
    # A HardSwish reaching a quantized node only through scalar scale/shift steps is not measured:
    # IntegerElementwise folds the steps into its output quantization, the quantized node's input range.
    kept: set[str] = set()
    for node in reversed(passed):
        if any(r.name in quantized or r.name in kept for out in node.outputs for r in readers(out)):
            kept.add(node.name)
    return [node for node in candidates if node.name in kept]


def _tabulated_chain(value: ir.Value, order: dict[int, int]) -> list[ir.Node]:
    """The nodes of the chain reading `value` that tabulate-activation-chains will run as a table once
    `value` and their result are quantized: all but its integer-kernel ops (the chain's last Mul, as in
    Mish's `x * Tanh(Softplus(x))`, measured as any Mul of two uint8 tensors, its table's result one
    of them); none where a table would be slower than the float chain."""
    chain = chain_from(value, order)
    if chain is None or float_cost(chain[0]) < TABLE_MARGIN * TABLE_COST:
        return []
    return [node for node in chain[0] if node.op_type not in INTEGER_ELEMENTWISE]


def _moved_inputs(node: ir.Node) -> list[ir.Value] | None:
    """The activation inputs whose values `node` only moves, for the ops move-on-uint8 and
    upsample-on-uint8 keep on uint8 once those inputs are (Concat: all; a value-moving op, a MaxPool
    or a nearest Resize: its data input); None for any other node."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    if node.op_type == "Concat":
        return [v for v in node.inputs if v is not None and constant_array(v) is None]
    if node.op_type in VALUE_MOVING or node.op_type == "MaxPool" or (node.op_type == "Resize" and nearest_resize(node)):
        return [node.inputs[0]]
    return None


def _scalar_affine_chain(value: ir.Value) -> list[ir.Node]:
    """The Mul/Add/Sub/Div-by-a-scalar-constant nodes reading `value` one after another, each the
    single reader of the value before it (which is no graph output)."""
    chain: list[ir.Node] = []
    current = value
    while not current.is_graph_output():
        users = readers(current)
        if len(users) != 1 or users[0].op_type not in AFFINE_STEPS or _scalar_operand(users[0], current) is None:
            break
        chain.append(users[0])
        current = users[0].outputs[0]
    return chain


def _scalar_operand(step: ir.Node, value: ir.Value) -> float | None:
    """The scalar constant `step` combines `value` with (value first for Sub/Div), or None."""
    if len(step.inputs) != 2:
        return None
    other_index = 1 if step.inputs[0] is value else 0
    if step.inputs[1 - other_index] is not value:
        return None
    if step.op_type in ("Sub", "Div") and other_index != 1:
        return None
    constant = constant_array(step.inputs[other_index])
    if constant is None or constant.size != 1 or not np.issubdtype(constant.dtype, np.floating):
        return None
    value = float(constant.reshape(()))
    return None if step.op_type == "Div" and value == 0 else value


def _compose(chain: list[ir.Node], value: ir.Value) -> tuple[float, float]:
    """(a, b) with chain(v) = a*v + b."""
    a, b = 1.0, 0.0
    current = value
    for step in chain:
        c = _scalar_operand(step, current)
        if step.op_type == "Mul":
            a, b = a * c, b * c
        elif step.op_type == "Div":
            a, b = a / c, b / c
        elif step.op_type == "Add":
            b += c
        else:
            b -= c
        current = step.outputs[0]
    return a, b


@dataclass
class IntegerElementwise:
    # The op types to rewrite (all by default; fewer to measure what each costs or gains).
    ops: tuple[str, ...] = ("HardSwish", "HardSigmoid", "Sigmoid")
    name: str = "integer-elementwise"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        notes: list[str] = []
        derived: dict[str, str] = {}
        stats = {"hardswish_integer": 0, "hardsigmoid_integer": 0, "sigmoid_integer": 0, "affine_absorbed": 0}
        for node in [n for n in graph if n.op_type in self.ops and n.domain in ("", "ai.onnx")]:
            if uint8_dequantize(node.inputs[0]) is None:
                continue
            source = node.inputs[0]
            rewrite = {"Sigmoid": self._sigmoid, "HardSigmoid": self._hard_sigmoid, "HardSwish": self._hard_swish}[node.op_type]
            note = rewrite(graph, build, node, source, stats, derived)
            if note:
                notes.append(note)
        RemoveUnusedNodesPass()(model)
        ctx.facts.setdefault("derived_ranges", {}).update(derived)
        if not notes:
            notes.append("no HardSwish, HardSigmoid or Sigmoid on a uint8 input")
        return PassResult(model, changed=any(stats.values()), stats=stats, notes=notes)


    @staticmethod
    def _sigmoid(graph: ir.Graph, build: QdqBuilder, node: ir.Node, source: ir.Value, stats: dict, derived: dict) -> str | None:
        if not _requantize_readers(graph, build, node.outputs[0], 1.0 / 255, 0):
            return None
        stats["sigmoid_integer"] += 1
        derived[node.outputs[0].name] = "Sigmoid's output lies in (0, 1): scale 1/255, zero point 0"
        return f"{node.name}: quantized to its bounds (0, 1): ONNX Runtime's QLinearSigmoid"

    @staticmethod
    def _hard_sigmoid(graph: ir.Graph, build: QdqBuilder, node: ir.Node, source: ir.Value, stats: dict, derived: dict) -> str | None:
        alpha, beta = _hard_sigmoid_parameters(node)
        gate = _gate(build, source, alpha, beta, node.name)
        if gate is None:
            return f"{node.name}: left float (alpha {alpha:g}, beta {beta:g}: not a gate into [0, 1])"
        gate_nodes, gate_q, gate_scale = gate
        gate_dq = _dequantize(build, gate_q, gate_scale, 0, f"{node.name}_gate")
        graph.insert_after(node, [*gate_nodes, gate_dq])
        _replace_quantized_readers(node.outputs[0], gate_dq.outputs[0])
        stats["hardsigmoid_integer"] += 1
        derived[node.outputs[0].name] = (f"HardSigmoid's output lies in [0, 1]: computed as a requantization with scale "
                                         "1/255, zero point 0")
        return f"{node.name}: computed on uint8 as a requantization (QLinearAdd of a constant)"

    @staticmethod
    def _hard_swish(graph: ir.Graph, build: QdqBuilder, node: ir.Node, source: ir.Value, stats: dict, derived: dict) -> str | None:
        target = _output_quantization(node, source)
        if target is None:
            return (f"{node.name}: left float (its output is not read only by QuantizeLinear nodes of one range, "
                    "directly or through scalar scale/shift steps)")
        chain, quantizers, out_scale, out_zero, (grid_scale, grid_zero) = target
        gate_nodes, gate_q, gate_scale = _gate(build, source, HARDSWISH_ALPHA, HARDSWISH_BETA, node.name)
        gate_dq = _dequantize(build, gate_q, gate_scale, 0, f"{node.name}_gate")
        mul = build.node("Mul", [source, gate_dq.outputs[0]], f"{node.name}_times_gate")
        q = build.node("QuantizeLinear", [mul.outputs[0], build.initializer(f"{node.name}_output_scale", np.array(out_scale, np.float32)),
                                          build.initializer(f"{node.name}_output_zero_point", np.array(out_zero, np.uint8))],
                       f"{node.name}_QuantizeLinear")
        graph.insert_after(node, [*gate_nodes, gate_dq, mul, q])
        grid_scale_value = build.initializer(f"{node.name}_grid_scale", np.array(grid_scale, np.float32))
        grid_zero_value = build.initializer(f"{node.name}_grid_zero_point", np.array(grid_zero, np.uint8))
        for quantizer in quantizers:
            moved = (grid_scale, grid_zero) != _same_parameters([quantizer])
            for use in list(quantizer.outputs[0].uses()):
                reader = use.node
                if moved:  # every reader is a DequantizeLinear here (see _output_quantization)
                    reader.replace_input_with(1, grid_scale_value)
                    reader.replace_input_with(2, grid_zero_value)
                    requantize_biases(build, reader.outputs[0], grid_scale)
                reader.replace_input_with(use.idx, q.outputs[0])
        stats["hardswish_integer"] += 1
        stats["affine_absorbed"] += len(chain)
        derived[q.outputs[0].name] = (f"{node.outputs[0].name}'s grid redrawn from HardSwish's minimum to the measured "
                                      "maximum" + (f", with {len(chain)} scale/shift steps" if chain else ""))
        return (f"{node.name}: on uint8 as QLinearMul(x, gate)"
                + (f", with {', '.join(s.name for s in chain)} in its output quantization" if chain else ""))


def _dequantize(build: QdqBuilder, value: ir.Value, scale: float, zero: int, name: str) -> ir.Node:
    return build.node("DequantizeLinear", [value, build.initializer(f"{name}_scale", np.array(scale, np.float32)),
                                           build.initializer(f"{name}_zero_point", np.array(zero, np.uint8))],
                      f"{name}_DequantizeLinear")


def _hard_sigmoid_parameters(node: ir.Node) -> tuple[float, float]:
    if node.op_type == "HardSwish":
        return HARDSWISH_ALPHA, HARDSWISH_BETA
    return node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)


def _gate(build: QdqBuilder, source: ir.Value, alpha: float, beta: float, name: str):
    """uint8 clip(alpha*x + beta, 0, 1) of the dequantized `source` on the grid 1/255 (0 and 1
    exact), as a requantization: (nodes, the uint8 output, its scale); None for alpha <= 0 or beta
    outside [0, 1].

    `x -> Q(scale 1/(255*alpha), zero point k)` gives round(255*alpha*x) + k; with k the whole part
    of 255*beta, the rest of 255*beta is added to x first (QLinearAdd of a constant), or x is
    multiplied by 1 where there is no rest (QLinearMul): one integer op either way."""
    if not (alpha > 0 and 0 <= beta <= 1):
        return None
    whole = math.floor(255 * beta)
    rest = (255 * beta - whole) / (255 * alpha)  # in units of x
    op, operand = ("Add", rest) if rest > 0 else ("Mul", 1.0)
    constant = build.node("DequantizeLinear", [build.initializer(f"{name}_gate_operand", np.array(1, np.uint8)),
                                               build.initializer(f"{name}_gate_operand_scale", np.array(operand, np.float32)),
                                               build.initializer(f"{name}_gate_operand_zero_point", np.array(0, np.uint8))],
                          f"{name}_gate_operand_DequantizeLinear")
    step = build.node(op, [source, constant.outputs[0]], f"{name}_gate")
    q = build.node("QuantizeLinear", [step.outputs[0], build.initializer(f"{name}_gate_requant_scale", np.array(1 / (255 * alpha), np.float32)),
                                      build.initializer(f"{name}_gate_requant_zero_point", np.array(whole, np.uint8))],
                   f"{name}_gate_QuantizeLinear")
    return [constant, step, q], q.outputs[0], 1.0 / 255


def _same_parameters(quantizers: list[ir.Node]) -> tuple[float, int] | None:
    params = [qparams(q) for q in quantizers]
    if not params or any(p is None or p[0].size != 1 or p[1].dtype != np.uint8 for p in params):
        return None
    first = (float(params[0][0].reshape(())), int(params[0][1].reshape(())))
    if any((float(p[0].reshape(())), int(p[1].reshape(()))) != first for p in params[1:]):
        return None
    return first


def _hardswish(x: float) -> float:
    return x * min(1.0, max(0.0, x * HARDSWISH_ALPHA + HARDSWISH_BETA))


def _output_quantization(node: ir.Node, source: ir.Value):
    """Where a HardSwish's uint8 output goes: (the scalar steps after it, the QuantizeLinear nodes
    reading the end of them, the QLinearMul's output scale and zero point, the grid (scale, zero
    point) the readers of those quantizers use afterwards); None where that is not a set of uint8
    quantizers of one range.

    Where every reader of those quantizers is a DequantizeLinear, the grid is redrawn over the
    range the values can take: from HardSwish's minimum (-0.375, or its value at the input grid's
    lowest point) to the measured maximum, instead of modelopt's symmetric range around 0 (half of
    it below -0.375, unused): about twice as fine. A shift b in the steps must be a whole number of
    grid steps to go into the zero point: the grid is widened until it is (or, for a shift under
    one step, the shift is rounded to the nearest step)."""
    chain = _scalar_affine_chain(node.outputs[0])
    end = chain[-1].outputs[0] if chain else node.outputs[0]
    quantizers = readers(end)
    if end.is_graph_output() or not quantizers or any(q.op_type != "QuantizeLinear" or q.outputs[0].is_graph_output() for q in quantizers):
        return None
    params = _same_parameters(quantizers)
    if params is None:
        return None
    scale, zero = params
    a, b = _compose(chain, node.outputs[0])
    if a <= 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    regrid = all(r.op_type == "DequantizeLinear" and not r.outputs[0].is_graph_output()
                 for q in quantizers for r in readers(q.outputs[0]))
    if not regrid:
        if chain:
            return None  # a moved grid must reach every reader through its DequantizeLinear
        return chain, quantizers, scale, zero, (scale, zero)
    x_scale, x_zero = (float(v.reshape(())) for v in qparams(source.producer()))
    x_low, x_high = -x_zero * x_scale, (255 - x_zero) * x_scale
    low = a * _hardswish(min(max(-1.5, x_low), x_high)) + b  # HardSwish is lowest at -1.5
    high = min((255 - zero) * scale, a * max(_hardswish(x_low), _hardswish(x_high)) + b)
    if high <= low:
        return None
    grid = (high - low) / 254  # one step of slack for the whole-number zero point below
    if abs(b) >= grid:
        grid = abs(b) / math.floor(abs(b) / grid)
    grid_zero = min(255, max(0, math.ceil(-low / grid - 1e-6)))
    out_zero = grid_zero + round(b / grid)
    if not 0 <= out_zero <= 255:
        return None
    return chain, quantizers, grid / a, out_zero, (grid, grid_zero)


def _replace_quantized_readers(value: ir.Value, replacement: ir.Value) -> None:
    """Every reader of `value` reads `replacement`; readers that only re-quantize it (modelopt's
    measured Q -> DQ of the gate) are skipped over, so the gate keeps its exact grid."""
    for use in list(value.uses()):
        reader = use.node
        if reader.op_type == "QuantizeLinear":
            for dq_use in list(reader.outputs[0].uses()):
                if dq_use.node.op_type == "DequantizeLinear" and not dq_use.node.outputs[0].is_graph_output():
                    dq_use.node.outputs[0].replace_all_uses_with(replacement)
            if not list(reader.outputs[0].uses()) and not reader.outputs[0].is_graph_output():
                continue
            reader.replace_input_with(use.idx, replacement)
        else:
            reader.replace_input_with(use.idx, replacement)


def _requantize_readers(graph: ir.Graph, build: QdqBuilder, value: ir.Value, scale: float, zero: int) -> bool:
    """Give the QuantizeLinear nodes reading `value` (and the DequantizeLinear nodes reading them)
    the grid (scale, zero); False when `value` is read by anything else."""
    quantizers = readers(value)
    if not quantizers or value.is_graph_output() or any(q.op_type != "QuantizeLinear" for q in quantizers):
        return False
    users = [use.node for q in quantizers for use in q.outputs[0].uses()]
    if any(r.op_type != "DequantizeLinear" for r in users):
        return False
    s = build.initializer(f"{value.name}_bounds_scale", np.array(scale, np.float32))
    z = build.initializer(f"{value.name}_bounds_zero_point", np.array(zero, np.uint8))
    for node in [*quantizers, *users]:
        node.replace_input_with(1, s)
        node.replace_input_with(2, z)
    return True
