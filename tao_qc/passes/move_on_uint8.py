"""Keep tensors uint8 through the ops that only move values: a ShuffleNet block's channel shuffle.

ShuffleNetV2 blocks (FastestDet's backbone, many mobile detectors) join two branches with a Concat
and shuffle the channels with Reshape -> Transpose -> Reshape -> Gather (or Split/Squeeze). modelopt
quantizes the Convs' inputs and outputs, not these ops, so ONNX Runtime runs each block's join and
shuffle in float, with a DequantizeLinear before, a QuantizeLinear after and a layout Transpose
around each, four times the bytes of the uint8 tensor: on FastestDet more time than its Convs gain.
This pass, for `target: onnxruntime`, after place-for-onnxruntime:

1. quantizes the output of a Concat whose inputs all come through per-tensor uint8
   DequantizeLinear nodes with zero point 0 (ReLU'd tensors, place-for-onnxruntime's) onto the
   coarsest of their grids: the Concat holds no value its inputs do not, so that grid covers it,
   and ORT runs `DQ, DQ -> Concat -> Q` as QLinearConcat. The finer inputs are rounded to it (at
   most half of its step), the one error this pass adds, and only where their steps are at most
   `MAX_COARSENING` times finer;
2. quantizes the output of an average pooling of a quantized tensor on that tensor's grid: an
   average lies within the range of what it averages (zero padding included: 0 is on a uint8
   grid), and ORT runs it as QLinearAveragePool. Rounding to that grid is the error it adds;
3. moves a per-tensor DequantizeLinear behind the value-moving ops that read it (Reshape,
   Transpose, Squeeze, Unsqueeze, Flatten, Gather, Split, Slice, DepthToSpace, SpaceToDepth, and
   MaxPool, which commutes with a dequantization's increasing map): the op then moves the
   integers, and a DequantizeLinear with the same parameters follows each of its outputs. Exact;
4. drops a DequantizeLinear -> QuantizeLinear pair with the same parameters that 3. leaves (a
   MaxPool place-for-onnxruntime had wrapped). One with different parameters (a shuffled half
   feeding a Conv whose input modelopt measured apart) goes too where only Conv, Gemm and MatMul
   units read it: they take the integers on the grid they lie on (one rounding fewer, their int32
   biases rescaled). Any other runs as a one-input QLinearConcat: ORT would run both in float.

Repeated until nothing changes, as a Concat's inputs become DequantizeLinear outputs only once the
shuffle before it has been moved onto uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.qdq import (QdqBuilder, biases_fit, integer_qparams, readers, requantize_biases, same_grid,
                               uint8_dequantize)
from tao_qc.pipeline import PassContext, PassResult, constant_array

VALUE_MOVING = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "Split", "Slice",
                          "DepthToSpace", "SpaceToDepth"})
# ONNX allows uint8 MaxPool from opset 12.
MAXPOOL_UINT8_OPSET = 12
MAX_ROUNDS = 64
# A Concat's output takes its coarsest input's grid; an input whose step is more than this many times
# finer would lose most of its precision (FastestDet's last block joins a 0.0067 step and a 0.029 one:
# quantized together, mAP against FP32's boxes fell from 0.77 to 0.73 and the kernels and the graph's
# arithmetic parted by 0.14), so such a Concat stays float.
MAX_COARSENING = 2.0


@dataclass
class MoveOnUint8:
    name: str = "move-on-uint8"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        movable = VALUE_MOVING | ({"MaxPool"} if model.opset_imports.get("", 1) >= MAXPOOL_UINT8_OPSET else set())
        notes: list[str] = []
        concats = moved = 0
        for _ in range(MAX_ROUNDS):
            joined = _quantize_concats(graph, build, notes) + _quantize_averages(graph, build, notes)
            shifted = _move_dequantizes(graph, build, movable)
            concats, moved = concats + joined, moved + shifted
            if not joined and not shifted:
                break
        cancelled, adopted, requantized = _requantize_on_uint8(graph, build)
        if moved:
            notes.append(f"{moved} value-moving ops run on uint8 (their DequantizeLinear moved behind them)")
        RemoveUnusedNodesPass()(model)
        if adopted:
            notes.append(f"{adopted} requantization(s) before a Conv/Gemm/MatMul dropped: it reads the integers on the "
                         "grid they lie on (its int32 bias rescaled)")
        return PassResult(model, changed=bool(concats or moved or cancelled or adopted or requantized),
                          stats={"outputs_quantized": concats, "ops_moved_onto_uint8": moved, "dq_q_pairs_dropped": cancelled,
                                 "grids_adopted": adopted, "requantized_on_uint8": requantized},
                          notes=notes)


def _reaches_integer_op(value: ir.Value) -> bool:
    """Whether a QuantizeLinear or a Concat (which this pass quantizes in turn) reads `value`,
    directly or through value-moving ops, MaxPools and Resizes (upsample-on-uint8 quantizes a
    nearest one)."""
    seen, frontier = set(), [value]
    while frontier:
        current = frontier.pop()
        for reader in readers(current):
            if reader.op_type in ("QuantizeLinear", "Concat"):
                return True
            if reader.op_type in VALUE_MOVING | {"MaxPool", "Resize"} and id(reader) not in seen:
                seen.add(id(reader))
                frontier.extend(reader.outputs)
    return False


def _quantize_concats(graph: ir.Graph, build: QdqBuilder, notes: list[str]) -> int:
    count = 0
    said = set(notes)
    for concat in [n for n in graph if n.op_type == "Concat"]:
        out = concat.outputs[0]
        users = readers(out)
        if out.is_graph_output() or not users or all(r.op_type == "QuantizeLinear" for r in users):
            continue  # nothing reads it, or ORT fuses it already
        if not _reaches_integer_op(out):
            continue  # only float ops read it: quantizing would only round it
        sources = [uint8_dequantize(v) for v in concat.inputs]
        if any(dq is None for dq in sources):
            continue
        params = [integer_qparams(dq) for dq in sources]
        if any(int(zero.reshape(())) != 0 for _, zero in params):
            continue
        scales = [float(scale.reshape(())) for scale, _ in params]
        if max(scales) > MAX_COARSENING * min(scales):
            note = (f"{concat.name}: stays float: its inputs' steps differ {max(scales) / min(scales):.1f}x, and one "
                    f"grid for both would coarsen the finer (at most {MAX_COARSENING:g}x)")
            if note not in said:  # the rounds look at it again
                notes.append(note)
                said.add(note)
            continue
        coarsest = max(range(len(sources)), key=lambda i: float(params[i][0].reshape(())))
        build.quantize_output(concat, *sources[coarsest].inputs[1:3], f"{concat.name}_u8")
        finer = sum(1 for i in range(len(sources)) if float(params[i][0].reshape(())) < float(params[coarsest][0].reshape(())))
        notes.append(f"{concat.name}: output quantized on its coarsest input's grid (scale "
                     f"{float(params[coarsest][0].reshape(())):.4g}); ORT runs it as QLinearConcat"
                     + (f", rounding {finer} finer input(s) to that grid" if finer else ""))
        count += 1
    return count


def _quantize_averages(graph: ir.Graph, build: QdqBuilder, notes: list[str]) -> int:
    count = 0
    for pool in [n for n in graph if n.op_type in ("AveragePool", "GlobalAveragePool")]:
        out = pool.outputs[0]
        users = readers(out)
        if out.is_graph_output() or not users or all(r.op_type == "QuantizeLinear" for r in users):
            continue
        source = uint8_dequantize(pool.inputs[0])
        if source is None or not _reaches_integer_op(out):
            continue
        build.quantize_output(pool, *source.inputs[1:3], f"{pool.name}_u8")
        notes.append(f"{pool.name}: output quantized on its input's grid (an average stays within what it averages); "
                     f"ORT runs it as QLinear{pool.op_type}")
        count += 1
    return count


def _requantize_on_uint8(graph: ir.Graph, build: QdqBuilder) -> tuple[int, int, int]:
    """`DQ -> Q` on per-tensor uint8 grids, which 3. leaves where a shuffled half feeds a Conv whose
    input modelopt measured apart, or a ReLU'd Conv output reaches the next Conv through a
    DepthToSpace: dropped where the grids are the same (ORT would run both in float). Else, where
    only Conv, Gemm and MatMul units read the requantized tensor, they read the integers as they
    are, on the grid they already lie on: requantizing adds a second rounding (and a clip) and no
    information, so this is the closer to FP32 of the two; their int32 biases follow the new input
    scale. Otherwise the Q reads a one-input Concat, which ORT runs as a QLinearConcat: the
    requantization on uint8 in one pass (FastestDet: 1.38x -> 1.42x FP32). Returns (dropped,
    adopted, requantized)."""
    dropped = adopted = requantized = 0
    for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
        dq = uint8_dequantize(q.inputs[0])
        params = integer_qparams(q)
        if dq is None or params is None or params[0].size != 1 or params[1].dtype != np.uint8:
            continue
        if q.outputs[0].is_graph_output() or constant_array(dq.inputs[0]) is not None:
            continue
        if same_grid(integer_qparams(dq), params):
            q.outputs[0].replace_all_uses_with(dq.inputs[0])
            dropped += 1
            continue
        consumers = _compute_input_dequantizes(q)
        scale = float(integer_qparams(dq)[0].reshape(()))
        if consumers and all(biases_fit(reader.outputs[0], scale) for reader in consumers):
            for reader in consumers:
                for index in range(3):
                    reader.replace_input_with(index, dq.inputs[index])
                requantize_biases(build, reader.outputs[0], scale)
            adopted += 1
            continue
        join = build.node("Concat", [dq.outputs[0]], f"{q.name}_requantize", {"axis": 0})
        graph.insert_before(q, join)
        q.replace_input_with(0, join.outputs[0])
        requantized += 1
    return dropped, adopted, requantized


def _compute_input_dequantizes(q: ir.Node) -> list[ir.Node]:
    """The DequantizeLinear nodes reading `q`, where each is read only as the activation input of
    Conv, Gemm or MatMul nodes; [] otherwise."""
    dequantizes = readers(q.outputs[0])
    for dq in dequantizes:
        if dq.op_type != "DequantizeLinear" or dq.outputs[0].is_graph_output():
            return []
        uses = list(dq.outputs[0].uses())
        if not uses or any(u.node.op_type not in ("Conv", "Gemm", "MatMul") or u.idx != 0 for u in uses):
            return []
    return dequantizes


def _moves_values(node: ir.Node, movable: frozenset | set) -> bool:
    if node.op_type not in movable or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Gather":
        return constant_array(node.inputs[1]) is not None  # indices known: a selection, not a lookup
    if node.op_type == "MaxPool":
        return len(node.outputs) == 1  # not with its Indices output
    return True


def _move_dequantizes(graph: ir.Graph, build: QdqBuilder, movable: frozenset | set) -> int:
    count = 0
    for dq in [n for n in graph if n.op_type == "DequantizeLinear"]:
        params = integer_qparams(dq)
        if params is None or params[0].size != 1 or constant_array(dq.inputs[0]) is not None:
            continue  # per-channel, FP8 or a weight
        for op in [r for r in readers(dq.outputs[0]) if _moves_values(r, movable)]:
            if op.inputs[0] is not dq.outputs[0] or any(v is dq.outputs[0] for v in op.inputs[1:]):
                continue  # the tensor is not (only) the op's data input
            if any(o.is_graph_output() for o in op.outputs):
                continue
            op.replace_input_with(0, dq.inputs[0])
            for index, value in enumerate(op.outputs):
                after = build.node("DequantizeLinear", [value, *dq.inputs[1:]], f"{op.name}_{index}_DequantizeLinear")
                graph.insert_after(op, after)
                for use in list(value.uses()):
                    if use.node is not after:
                        use.node.replace_input_with(use.idx, after.outputs[0])
                value.dtype = ir.DataType.from_numpy(params[1].dtype)  # the integers' type now
            count += 1
    return count
