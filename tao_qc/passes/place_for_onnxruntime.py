"""Rewrite modelopt's TensorRT-style Q/DQ graph into units ONNX Runtime's CPU provider runs as integer kernels.

modelopt places Q/DQ on the inputs of quantized ops (TensorRT fuses from there). ONNX Runtime fuses
only whole `DQ -> op -> Q` units (into QLinearConv, QLinearMatMul, QGemm, QLinearAdd, ...), and on x86
prefers uint8 activations with int8 weights (U8S8). Left as modelopt writes it, the graph runs float
kernels between extra quantize/dequantize steps and is slower than FP32. This pass:

1. stores weights as int8 initializers behind a DequantizeLinear (instead of float + QuantizeLinear),
2. quantizes Conv/Gemm biases to int32 with scale = input scale x weight scale (what ORT's kernels take),
3. absorbs a Relu (or a Clip at 0, ReLU6) after a quantized op (or after a residual Add) into the op's output quantization:
   a uint8 Q with zero point 0 clamps at 0, so `op -> Q(u8, zp 0)` is exactly `op -> Relu -> Q`;
   a MaxPool between Relu and Q moves behind the new Q, running on uint8 as well, and any other
   reader of the Relu'd tensor (a feature pyramid's top-down Add, a ShuffleNet block's Concat) reads
   the uint8 output dequantized, its range then the op's measured one (upsample-on-uint8 and
   move-on-uint8 carry such readers onto uint8 too),
4. an activation read only by an average pooling (ResNet's last residual Add -> Relu, MobileNet's
   last Conv -> ReLU6) gets a uint8 output range too, so the op runs as an integer kernel and the
   pooling as QLinearGlobalAveragePool,
5. leaves a MatMul's output float where only float ops read it and ORT then runs MatMulIntegerToFloat
   (no requantize + dequantize round trip),
6. turns every remaining int8 activation Q/DQ into uint8: by default the same grid shifted to zero
   point 128 (no accuracy change); with `onnxruntime.activation_ranges: asymmetric`, over the data's
   own bounds (the smallest and largest value measure-activation-bounds saw over the calibration
   data) within modelopt's (or the clipped) symmetric range, with the zero point that puts 0 on the
   grid: a HardSwish's [-0.375, 6] gets a step of 6.375/255 where the symmetric grid had 6/127.

Calibration stays modelopt's: every range is one modelopt measured. The quantize pass asks modelopt
to quantize the outputs of quantized ops too (`op_types_needing_output_quant`), so an op's output
range is measured, not guessed. Two kinds of range are derived: a Relu's output range carried to the op
before it when a MaxPool sits between (max pooling cannot raise the maximum), and the sum of an Add's
input ranges for an Add -> Relu only averaged after (the average's measured range would clip the tensor
before it). Both are recorded in `ctx.facts["derived_ranges"]` and the notes; every uint8 range the pass
places is added to `ctx.facts["ranges"]` with its source ("measured: ..." or "derived: ...").

On the plain modelopt graph (no output ranges measured), ops whose output range is unknown stay float
kernels, each named in the notes and counted in `float_compute_left`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.qdq import QdqBuilder, dims_through_qdq, integer_qparams, qparams, readers, uint8_grid_over, weight_grid  # noqa: F401 - shared with the other placement passes
from tao_qc.pipeline import PassContext, PassResult, constant_array
from tao_qc.spec.cpu import CpuTarget, this_machine

ABSORBING_OPS = {"Conv", "Gemm", "MatMul", "Add"}


def _only_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


INT32_LIMIT = 2**31 - 1


def _widen_weight_scales_for(bias: np.ndarray, input_scale: np.ndarray, w_dq: ir.Node, build: "QdqBuilder") -> bool:
    """Where a channel's bias, in steps of input scale x weight scale, passes the int32 range (its
    weights all but vanish, so its weight scale is tiny), widen that channel's weight scale until the
    bias fits and requantize its int8 weights to it: the channel's output is then its bias, right,
    instead of a bias clipped at 2**31 - 1 steps. True when the weights changed."""
    weights, scales = constant_array(w_dq.inputs[0]), constant_array(w_dq.inputs[1])
    zero = constant_array(w_dq.inputs[2]) if len(w_dq.inputs) > 2 and w_dq.inputs[2] is not None else None
    if weights is None or scales is None or scales.size != bias.size or (zero is not None and zero.any()):
        return False
    if len(w_dq.inputs[0].uses()) + len(w_dq.inputs[1].uses()) > 2 or len(w_dq.outputs[0].uses()) > 1:
        return False  # shared weights: another node reads the same grid
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * INT32_LIMIT)
    wider = needed > scales.reshape(-1).astype(np.float64)
    if not wider.any():
        return False
    new_scales = scales.reshape(-1).astype(np.float32).copy()
    # float32 rounding of the new scale must not leave the bias one step past the range: round up.
    new_scales[wider] = np.nextafter(needed[wider].astype(np.float32), np.float32(np.inf))
    ratio = (scales.reshape(-1).astype(np.float64) / new_scales.astype(np.float64)).reshape((-1,) + (1,) * (weights.ndim - 1))
    requantized = np.where(wider.reshape(ratio.shape), np.clip(np.rint(weights * ratio), -127, 127), weights).astype(weights.dtype)
    base = w_dq.inputs[0].name or "weight"
    w_dq.replace_input_with(0, build.initializer(f"{base}_widened", requantized))
    w_dq.replace_input_with(1, build.initializer(f"{w_dq.inputs[1].name or base}_widened", new_scales.reshape(scales.shape)))
    return True


@dataclass
class PlaceForOnnxRuntime:
    name: str = "place-for-onnxruntime"
    # The instruction set the integer kernels run on (default: this machine's): on avx2/avx512
    # without VNNI, weights get 7 bits (tao_qc/spec/cpu.py).
    cpu: CpuTarget = field(default_factory=this_machine)

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        notes: list[str] = []
        derived: dict[str, str] = {}
        stored, narrowed = self._store_weights(graph, build, self.cpu)
        stats = {"weights_stored_int8": stored}
        if self.cpu.pairs_saturate:
            stats["weights_7bit"] = narrowed
            notes.append(f"weights of {narrowed} of {stored} quantized nodes stored with 7 bits (|w| <= "
                         f"{self.cpu.weight_magnitude}): ONNX Runtime's uint8 x int8 kernels on {self.cpu.isa} add "
                         "weight pairs in saturating int16; depthwise Convs, whose kernel does not, keep 8 bits")
        placed: dict[str, dict] = {}
        absorbed, through_pool = self._absorb_relus(graph, build, notes, derived, placed)
        stats["relu_absorbed"] = absorbed
        stats["maxpool_moved_behind_q"] = through_pool
        integer_to_float: set[str] = set()
        stats["matmul_outputs_float"] = self._float_outputs_for_float_consumers(graph, notes, integer_to_float)
        RemoveUnusedNodesPass()(model)  # the int8 Q/DQ a Relu's absorption left: not to be placed again
        bounds = ctx.facts.get("activation_bounds") or {}
        stats["activations_uint8"], from_data = self._activations_to_uint8(
            graph, build, bounds, ctx.facts.get("activation_bounds_widened") or {}, placed)
        if bounds:
            stats["zero_points_from_data"] = from_data
        RemoveUnusedNodesPass()(model)
        # Last: a bias's scale is input scale x weight scale, and absorbing a Relu changes input scales.
        stats["biases_int32"] = self._quantize_biases(graph, build)
        RemoveUnusedNodesPass()(model)  # the float biases the int32 ones replaced (ORT warns about each)
        stats["float_compute_left"] = sum(
            1 for n in graph
            if n.op_type in ("Conv", "Gemm", "MatMul") and not _fusable(n) and n.name not in integer_to_float
        )
        for node in graph:
            if node.name in integer_to_float:
                continue
            if node.op_type in ("Conv", "Gemm", "MatMul") and not _fusable(node):
                notes.append(f"{node.name}: stays a float kernel in ONNX Runtime (its inputs or output are not all quantized)")
        ctx.facts.setdefault("derived_ranges", {}).update(derived)
        # The uint8 ranges this pass placed, beside modelopt's: "measured" (modelopt's amax of the same
        # tensor's Relu'd value) or "derived: <why>".
        ranges = ctx.facts.setdefault("ranges", {})
        for tensor, entry in placed.items():
            ranges[f"{tensor} (uint8, place-for-onnxruntime)"] = entry
        changed = any(v for k, v in stats.items() if k != "float_compute_left")
        return PassResult(model, changed=changed, stats=stats, notes=notes)

    # -- 1. weights -------------------------------------------------------------------------

    @staticmethod
    def _store_weights(graph: ir.Graph, build: QdqBuilder, cpu: CpuTarget | None = None) -> tuple[int, int]:
        """Weights as integer initializers, on the grid `qdq.weight_grid` gives for `cpu`: where its
        kernels saturate 8-bit pairs, symmetric int8 weights of nodes that run those kernels are
        requantized to +-`cpu.weight_magnitude` (the same range, coarser steps; the weight corrections
        fitted them on that grid already). Returns (stored, narrowed)."""
        count = narrowed = 0
        for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
            weight = constant_array(q.inputs[0])
            grid = weight_grid(q, cpu)
            if weight is None or grid is None:
                continue
            if grid.narrowed:
                narrow = build.initializer(f"{q.inputs[0].name}_scale_{grid.high}", grid.scale)
                for dq in [use.node for use in q.outputs[0].uses() if use.node.op_type == "DequantizeLinear"]:
                    dq.replace_input_with(1, narrow)
                narrowed += 1
            quantized = grid.integers(weight, q.attributes.get_int("axis", 1))
            stored = build.initializer(f"{q.inputs[0].name}_quantized", quantized)
            q.outputs[0].replace_all_uses_with(stored)
            graph.remove(q, safe=True)
            count += 1
        return count, narrowed

    # -- 2. biases --------------------------------------------------------------------------

    @staticmethod
    def _quantize_biases(graph: ir.Graph, build: QdqBuilder) -> int:
        count = 0
        for node in [n for n in graph if n.op_type in ("Conv", "Gemm")]:
            if len(node.inputs) < 3 or node.inputs[2] is None:
                continue
            if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 1:
                continue
            bias = constant_array(node.inputs[2])
            x_dq, w_dq = (v.producer() if v is not None else None for v in node.inputs[:2])
            if bias is None or bias.dtype != np.float32 or x_dq is None or w_dq is None:
                continue
            if x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
                continue
            x_params, w_params = integer_qparams(x_dq), integer_qparams(w_dq)
            if x_params is None or w_params is None or x_params[0].size != 1 or bias.ndim != 1:
                continue
            scale = (x_params[0].reshape(()) * w_params[0].reshape(-1)).astype(np.float32)
            scale = np.broadcast_to(scale, bias.shape).copy()
            if np.any(scale == 0):
                continue
            if _widen_weight_scales_for(bias, x_params[0].reshape(()), w_dq, build):
                w_params = integer_qparams(w_dq)
                scale = np.broadcast_to((x_params[0].reshape(()) * w_params[0].reshape(-1)).astype(np.float32), bias.shape).copy()
            # In float64: float32 cannot hold 2**31 - 1, so a bias saturating the int32 range (a channel
            # whose weights all but vanish) would round past it and wrap.
            quantized = np.clip(np.rint(bias.astype(np.float64) / scale), -(2**31), INT32_LIMIT).astype(np.int32)
            base = node.inputs[2].name or f"{node.name}_bias"
            dq = build.node(
                "DequantizeLinear",
                [build.initializer(f"{base}_quantized", quantized), build.initializer(f"{base}_scale", scale),
                 build.initializer(f"{base}_zero_point", np.zeros_like(quantized))],
                f"{base}_DequantizeLinear",
                {"axis": 0},
            )
            graph.insert_before(node, dq)
            node.replace_input_with(2, dq.outputs[0])
            count += 1
        return count

    # -- 3. relu absorption -----------------------------------------------------------------

    def _absorb_relus(self, graph: ir.Graph, build: QdqBuilder, notes: list[str], derived: dict[str, str],
                      placed: dict[str, dict]) -> tuple[int, int]:
        absorbed = through_pool = 0
        for relu in [n for n in graph if n.op_type == "Relu" or _clips_at_zero(n)]:
            source = self._quantized_source(relu.inputs[0])
            if source is None:
                continue
            producer_output = source
            out = relu.outputs[0]
            if out.is_graph_output():
                continue
            targets = [use.node for use in out.uses()]
            if _averaged_then_quantized(targets):
                # An activation only averaged next (the last block before the classifier): the average's
                # measured range would clip the tensor before it, so the range comes from the op.
                op = producer_output.producer()
                if op.op_type == "Add":
                    # A residual Add (ResNet's last block): modelopt measured no range here; the sum of the
                    # Add's input ranges bounds it.
                    amax = _sum_of_input_ranges(op)
                    why = f"sum of the ranges of {op.name}'s inputs (the sum cannot exceed them); its Relu'd output is only averaged"
                else:
                    # A Conv/Gemm/MatMul whose output modelopt measured (its own Q/DQ): that range,
                    # cut at the Clip's upper bound (ReLU6), holds the activation's output.
                    amax = _measured_amax(relu.inputs[0])
                    why = None
                if amax is None or amax <= 0:
                    continue
                amax = min(amax, _clip_upper_bound(relu))
                q_scale, q_zero = (build.initializer(f"{out.name}_u8_scale", np.array(amax / 255, np.float32)),
                                   build.initializer(f"{out.name}_u8_zero_point", np.array(0, np.uint8)))
                q = build.node("QuantizeLinear", [producer_output, q_scale, q_zero], f"{out.name}_u8_QuantizeLinear")
                dq = build.node("DequantizeLinear", [q.outputs[0], q_scale, q_zero], f"{out.name}_u8_DequantizeLinear")
                graph.insert_after(op, [q, dq])
                out.replace_all_uses_with(dq.outputs[0])
                for average in targets:
                    _quantize_before_flatten(graph, build, average)
                if why is not None:
                    derived[producer_output.name] = why
                source = f"derived: {why}" if why is not None else f"measured: modelopt's range of {producer_output.name}"
                placed[producer_output.name] = {
                    "scale": [amax / 255], "zero_point": [0.0], "dtype": "uint8", "amax": [amax], "axis": None,
                    "quantize_node": q.name, "source": source,
                }
                notes.append(f"{relu.name}: absorbed into the u8 output of {op.name} (range {source}); "
                             f"{', '.join(t.name for t in targets)} runs on uint8")
                absorbed += 1
                continue
            quantizers, pools, others = _relu_readers(targets)
            pool_quantizers = {pool.name: readers(pool.outputs[0]) for pool in pools}
            params = [integer_qparams(q) for q in quantizers + [q for qs in pool_quantizers.values() for q in qs]]
            if any(p is None or p[0].size != 1 for p in params):
                continue
            ranges = [float(p[0].reshape(())) * (127 if p[1].dtype == np.int8 else 255) for p in params]
            if others:
                # Another op reads the Relu'd tensor as well (a feature pyramid's top-down Add, a
                # channel Concat): the op's measured output range, on the side the Relu keeps, holds
                # what it reads, on a grid twice as fine as the int8 one it read before.
                measured = _measured_amax(relu.inputs[0])
                if measured is None:
                    continue
                ranges.append(measured)
            # A ReLU6's bound: the uint8 grid then saturates where the Clip did.
            amax = min(max(ranges, default=0.0), _clip_upper_bound(relu))
            if amax <= 0:
                continue
            scale = np.array(amax / 255, np.float32)
            zero = np.array(0, np.uint8)
            base = out.name
            op_name = producer_output.producer().name
            q_scale, q_zero = build.initializer(f"{base}_u8_scale", scale), build.initializer(f"{base}_u8_zero_point", zero)
            q = build.node("QuantizeLinear", [producer_output, q_scale, q_zero], f"{base}_u8_QuantizeLinear")
            dq = build.node("DequantizeLinear", [q.outputs[0], q_scale, q_zero], f"{base}_u8_DequantizeLinear")
            graph.insert_after(producer_output.producer(), [q, dq])
            _read_quantized_instead(quantizers, q, dq)
            read_by = []
            for pool in pools:
                # MaxPool now pools the quantized tensor; its own Q/DQ keep it uint8 for ORT.
                pool.replace_input_with(0, dq.outputs[0])
                q2 = build.node("QuantizeLinear", [pool.outputs[0], q_scale, q_zero], f"{pool.name}_u8_QuantizeLinear")
                dq2 = build.node("DequantizeLinear", [q2.outputs[0], q_scale, q_zero], f"{pool.name}_u8_DequantizeLinear")
                graph.insert_after(pool, [q2, dq2])
                _read_quantized_instead(pool_quantizers[pool.name], q2, dq2)
                through_pool += 1
                if not others:
                    derived[producer_output.name] = (
                        f"range of {pool.outputs[0].name} (measured after {pool.name}) used before it: max pooling cannot raise the maximum"
                    )
                read_by.append(f"{pool.name} runs on uint8" + (" (range derived from its output)" if not others else ""))
            for reader in others:
                for index, value in enumerate(list(reader.inputs)):
                    if value is out:
                        reader.replace_input_with(index, dq.outputs[0])
                read_by.append(f"{reader.name} reads it on uint8")
            notes.append(f"{relu.name}: absorbed into the u8 output of {op_name}" + "".join(f"; {r}" for r in read_by))
            placed[producer_output.name] = {
                "scale": [float(scale)], "zero_point": [0.0], "dtype": "uint8", "amax": [amax], "axis": None,
                "quantize_node": q.name,
                "source": f"derived: {derived[producer_output.name]}" if producer_output.name in derived
                else f"measured: modelopt's range of {out.name}" if not others
                else f"measured: modelopt's range of {producer_output.name} and of the tensors read after {relu.name}",
            }
            absorbed += 1  # the old Relu, Q and DQ are now unused and go with RemoveUnusedNodesPass
        return absorbed, through_pool

    @staticmethod
    def _quantized_source(value: ir.Value | None) -> ir.Value | None:
        """The float output of an absorbing op feeding `value`, directly or through its own Q/DQ pair."""
        if value is None:
            return None
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "DequantizeLinear":
            quantizer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
            if quantizer is None or quantizer.op_type != "QuantizeLinear" or _only_use(value) is None:
                return None
            if _only_use(quantizer.outputs[0]) is None:
                return None
            op_output = quantizer.inputs[0]
            op = op_output.producer() if op_output is not None else None
            if op is None or op.op_type not in ABSORBING_OPS or _only_use(op_output) is None:
                return None
            return op_output
        if producer.op_type in ABSORBING_OPS and _only_use(value) is not None:
            return value
        return None

    # -- 3b. MatMul/Gemm outputs only float ops read ------------------------------------------

    @staticmethod
    def _float_outputs_for_float_consumers(graph: ir.Graph, notes: list[str], names: set[str]) -> int:
        """`DQ, DQ -> MatMul -> Q -> DQ -> (bias Add, Softmax, LayerNorm, GELU ...)`: requantizing the
        output only to dequantize it for a float op costs two passes over the tensor. Without the Q, ORT
        runs the unit as MatMulIntegerToFloat, bias Add fused in."""
        count = 0
        for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
            op = q.inputs[0].producer() if q.inputs[0] is not None else None
            if op is None or op.op_type != "MatMul" or not _fusable(op):
                continue
            users = [use.node for use in q.outputs[0].uses()]
            if not users or any(r.op_type != "DequantizeLinear" for r in users):
                continue
            consumers = [use.node for r in users for use in r.outputs[0].uses()]
            if not consumers or any(r.outputs[0].is_graph_output() for r in users):
                continue
            if not all(_float_only(c) for c in consumers):
                continue
            shape = dims_through_qdq(op.inputs[0])
            static = shape is not None and all(isinstance(d, int) for d in shape)
            if any(c.op_type == "Add" for c in consumers) and (shape is None or len(shape) == 2 or static):
                # ORT fuses MatMul + bias Add into a float Gemm first (a 2-D input, or any input with a
                # static shape, which it reshapes): keep the QLinearMatMul unit there.
                continue
            for reader in users:
                reader.outputs[0].replace_all_uses_with(q.inputs[0])
            notes.append(f"{op.name}: output left float (only float ops read it): ONNX Runtime's MatMulIntegerToFloat")
            names.add(op.name)
            count += 1
        return count

    # -- 4. uint8 activations ---------------------------------------------------------------

    @staticmethod
    def _activations_to_uint8(graph: ir.Graph, build: QdqBuilder, bounds: dict[str, list[float]],
                              widened: dict[str, list[float]], placed: dict[str, dict]) -> tuple[int, int]:
        """Every int8 activation QuantizeLinear, and the DequantizeLinear nodes reading it, on a uint8
        grid: over the tensor's measured `bounds` within its int8 range, else that range shifted to
        zero point 128. Returns (activations made uint8, of them on the data's bounds)."""
        grids: dict[tuple, tuple[ir.Value, ir.Value]] = {}
        count = from_data = 0
        for q in [n for n in graph if n.op_type == "QuantizeLinear"]:
            params = integer_qparams(q)
            if params is None or params[1].dtype != np.int8 or constant_array(q.inputs[0]) is not None:
                continue
            scale, zero = params
            tensor = q.inputs[0].name
            measured = bounds.get(tensor) if scale.size == 1 and not zero.any() else None
            amax = float(scale.reshape(-1)[0]) * 127
            grid = uint8_grid_over(*measured, amax) if measured else None
            key = (tensor, float(scale.reshape(()))) if grid is not None else (q.inputs[1].name, q.inputs[2].name)
            if key not in grids:
                if grid is not None:
                    grids[key] = (build.initializer(f"{tensor}_u8_scale", np.array(grid[0], np.float32).reshape(scale.shape)),
                                  build.initializer(f"{tensor}_u8_zero_point", np.array(grid[1], np.uint8).reshape(zero.shape)))
                else:
                    grids[key] = (q.inputs[1], build.initializer(f"{q.inputs[2].name}_u8",
                                                                 (zero.astype(np.int16) + 128).astype(np.uint8)))
            new_scale, new_zero = grids[key]
            for node in [q, *(use.node for use in q.outputs[0].uses() if use.node.op_type == "DequantizeLinear")]:
                node.replace_input_with(1, new_scale)
                node.replace_input_with(2, new_zero)
            count += 1
            if grid is not None:
                from_data += 1
                placed[tensor] = {
                    "scale": [float(grid[0])], "zero_point": [float(grid[1])], "dtype": "uint8",
                    "amax": [amax], "axis": None, "quantize_node": q.name,
                    "source": f"measured: [{measured[0]:.4g}, {measured[1]:.4g}] over the calibration data"
                              + (f" (its data [{widened[tensor][0]:.4g}, {widened[tensor][1]:.4g}], the smaller side "
                                 "widened to a quarter of the larger)" if tensor in widened else "")
                              + f", within the int8 range +-{amax:.4g}"}
        return count, from_data


def _relu_readers(targets: list[ir.Node]) -> tuple[list[ir.Node], list[ir.Node], list[ir.Node]]:
    """A Relu's readers sorted by how they take its uint8 output: (its QuantizeLinear nodes, the
    MaxPools read only by QuantizeLinear nodes, which then pool uint8, and the others, which read the
    uint8 output dequantized: an Add ORT then runs as QLinearAdd, a Concat, a float op)."""
    quantizers, pools, others = [], [], []
    for node in targets:
        if node.op_type == "QuantizeLinear":
            quantizers.append(node)
        elif (node.op_type == "MaxPool" and len(node.outputs) == 1 and not node.outputs[0].is_graph_output()
              and readers(node.outputs[0]) and all(r.op_type == "QuantizeLinear" for r in readers(node.outputs[0]))):
            pools.append(node)
        else:
            others.append(node)
    return quantizers, pools, others


def _read_quantized_instead(quantizers: list[ir.Node], q: ir.Node, dq: ir.Node) -> None:
    """Point the readers of each old QuantizeLinear (and of its DequantizeLinear) at the new pair."""
    for quantizer in quantizers:
        for use in list(quantizer.outputs[0].uses()):
            if use.node.op_type == "DequantizeLinear":
                use.node.outputs[0].replace_all_uses_with(dq.outputs[0])
            else:
                use.node.replace_input_with(use.idx, q.outputs[0])


def _clip_upper_bound(node: ir.Node) -> float:
    """A Clip's upper bound (inf for a Relu or a Clip without one)."""
    if node.op_type != "Clip":
        return float("inf")
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        high = constant_array(node.inputs[2])
        return float(high.reshape(())) if high is not None and high.size == 1 else float("inf")
    attribute = node.attributes.get("max")  # opset < 11
    return attribute.as_float() if attribute is not None else float("inf")


def _measured_amax(value: ir.Value | None) -> float | None:
    """The largest positive value a per-tensor DQ(Q(x)) feeding `value` represents: modelopt's
    measured range of x, on the side a Relu keeps."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    params = integer_qparams(dq)
    if params is None or params[0].size != 1:
        return None
    scale, zero = params
    return float(scale.reshape(())) * (np.iinfo(zero.dtype).max - float(zero.reshape(())))


def _clips_at_zero(node: ir.Node) -> bool:
    """A Clip whose lower bound is 0 (ReLU6): a u8 Q with zero point 0 clamps there, and its upper
    bound is at least the measured maximum of its output, where the Q saturates anyway."""
    if node.op_type != "Clip":
        return False
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        low = constant_array(node.inputs[1])
        return low is not None and low.size == 1 and float(low.reshape(())) == 0.0
    attribute = node.attributes.get("min")  # opset < 11
    return attribute is not None and attribute.as_float() == 0.0


def _fusable(node: ir.Node) -> bool:
    """Whether ORT's QDQ selectors see a whole unit: DQ on the data inputs and a Q on the output."""
    inputs = [v for v in node.inputs[:2] if v is not None]
    if not all(v.producer() is not None and v.producer().op_type == "DequantizeLinear" for v in inputs):
        return False
    uses = list(node.outputs[0].uses())
    return bool(uses) and all(u.node.op_type == "QuantizeLinear" for u in uses)


AVERAGING_OPS = {"GlobalAveragePool", "AveragePool"}


def _averaged_then_quantized(targets: list[ir.Node]) -> bool:
    """Every consumer averages, and each average is quantized next (through a Flatten/Reshape at most):
    then `DQ -> average -> Q` is a unit ORT runs on uint8 (QLinearGlobalAveragePool / QLinearAveragePool)."""
    if not targets:
        return False
    for node in targets:
        if node.op_type not in AVERAGING_OPS or node.outputs[0].is_graph_output():
            return False
        after = _only_use(node.outputs[0])
        if after is not None and after.op_type in ("Flatten", "Reshape"):
            after = _only_use(after.outputs[0])
        if after is None or after.op_type != "QuantizeLinear":
            return False
    return True


def _sum_of_input_ranges(add: ir.Node) -> float | None:
    """An upper bound of an Add's output from its dequantized inputs' ranges: sum of their maxima."""
    maxima = [_measured_amax(value) for value in add.inputs]
    return None if any(m is None for m in maxima) else sum(maxima)


def _quantize_before_flatten(graph: ir.Graph, build: QdqBuilder, average: ir.Node) -> None:
    """`average -> Flatten -> Q`: repeat that Q (the same measured range: flattening keeps the values)
    right after the average, which ORT needs to see `DQ -> average -> Q` as one unit."""
    after = _only_use(average.outputs[0])
    if after is None or after.op_type == "QuantizeLinear":
        return
    quantizer = _only_use(after.outputs[0])
    q = build.node("QuantizeLinear", [average.outputs[0], *quantizer.inputs[1:]], f"{average.name}_QuantizeLinear")
    dq = build.node("DequantizeLinear", [q.outputs[0], *quantizer.inputs[1:]], f"{average.name}_DequantizeLinear")
    graph.insert_after(average, [q, dq])
    after.replace_input_with(0, dq.outputs[0])


FLOAT_ONLY_OPS = {"Softmax", "LayerNormalization", "Gelu", "Erf", "Div", "Mul", "Sigmoid", "Tanh", "Sqrt", "Pow",
                  "ReduceMean", "Sub"}


def _float_only(node: ir.Node) -> bool:
    """An op ONNX Runtime runs in float whatever its input: elementwise math, normalizations, and a bias
    Add (the other input a constant)."""
    if node.op_type in FLOAT_ONLY_OPS:
        return True
    if node.op_type == "Add":
        return any(constant_array(v) is not None for v in node.inputs)
    return False
