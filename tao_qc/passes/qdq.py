"""Q/DQ helpers the ONNX Runtime placement passes share: a node's quantization parameters,
a builder for QuantizeLinear/DequantizeLinear pairs and integer tensors, the dims a value keeps
through a Q/DQ pair, and the grid a weight's integers are stored on (`weight_grid`: the one rule
placement and the weight corrections share, so the corrections fit the integers that ship)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.pipeline import constant_array, mark_created
from tao_qc.spec.cpu import FULL_WEIGHT_MAGNITUDE, CpuTarget


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

    def quantize_output(self, producer: ir.Node, scale: ir.Value, zero: ir.Value, name: str) -> ir.Node:
        """Put a Q/DQ pair (`scale`, `zero`) after `producer`'s first output and make every reader of
        that output read the pair's DequantizeLinear instead. Returns the DequantizeLinear."""
        out = producer.outputs[0]
        uses = [(use.node, use.idx) for use in out.uses()]
        q = self.node("QuantizeLinear", [out, scale, zero], f"{name}_QuantizeLinear")
        dq = self.node("DequantizeLinear", [q.outputs[0], scale, zero], f"{name}_DequantizeLinear")
        self.graph.insert_after(producer, [q, dq])
        for reader, index in uses:
            reader.replace_input_with(index, dq.outputs[0])
        return dq


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


def readers(value: ir.Value) -> list[ir.Node]:
    """The nodes that read `value` (once per input slot they read it in)."""
    return [use.node for use in value.uses()]


def uint8_dequantize(value: ir.Value | None) -> ir.Node | None:
    """The per-tensor uint8 DequantizeLinear producing `value`, if that is what produces it."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    params = integer_qparams(dq)
    if params is None or params[0].size != 1 or params[1].dtype != np.uint8:
        return None
    return dq


def uint8_grid_over(low: float, high: float, amax: float) -> tuple[np.float32, np.uint8] | None:
    """(scale, zero point) of the uint8 grid over the data's bounds [low, high] within the symmetric
    range [-amax, amax] calibration gave: 0 exactly on the grid (a whole zero point; padding and ReLU
    read it), both ends held (the step is the larger of the two the rounded zero point leaves; an end
    within half a step of 0 may round onto it). None where that leaves nothing to span (a tensor that
    was always 0)."""
    lo = min(max(float(low), -amax), 0.0)
    hi = max(min(float(high), amax), 0.0)
    if not hi - lo > 0:
        return None
    zero = int(np.clip(np.rint(-lo * 255 / (hi - lo)), 0, 255))
    scale = max(hi / (255 - zero) if zero < 255 else 0.0, -lo / zero if zero > 0 else 0.0)
    # float32 rounding must not pull either end one step inside the grid: round the step up.
    return np.nextafter(np.float32(scale), np.float32(np.inf)), np.uint8(zero)


def same_grid(a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray] | None) -> bool:
    """Whether two per-tensor `qparams` are one grid: the same scale, zero point and integer type."""
    return (a is not None and b is not None and a[0].size == 1 and b[0].size == 1 and a[1].dtype == b[1].dtype
            and float(a[0].reshape(())) == float(b[0].reshape(())) and int(a[1].reshape(())) == int(b[1].reshape(())))


def runs_u8s8_gemm(dq: ir.Node) -> bool:
    """Whether a weight DequantizeLinear feeds an op ORT runs on its U8S8 GEMM or direct convolution
    (a Gemm, a MatMul, a Conv that is not depthwise): the kernels whose pairs saturate without VNNI.
    A depthwise Conv (one input and one output channel per group) runs ORT's depthwise kernel, which
    multiplies in int32 and is exact with 8-bit weights on every CPU (measured in emulation of AVX2:
    the same integers as AVX-512 VNNI); elementwise ops take no U8S8 weights. The weight's shape is
    read through its Q/DQ (modelopt leaves their outputs without shapes: read from them alone, every
    depthwise Conv of a calibrated graph looked like a full one and got 7 bits)."""
    shape = dims_through_qdq(dq.outputs[0])
    for use in dq.outputs[0].uses():
        node = use.node
        if node.op_type in ("Gemm", "MatMul"):
            return True
        if node.op_type == "Conv":
            group = node.attributes.get_int("group", 1)
            depthwise = group > 1 and shape is not None and len(shape) == 4 and shape[1] == 1 and shape[0] == group
            if not depthwise:
                return True
    return False


@dataclass(frozen=True)
class WeightGrid:
    """The grid a weight's integers are stored on: steps of `scale` (the QuantizeLinear's shape) around
    `zero`, within [low, high]. `narrowed`: coarser than the QuantizeLinear's own grid."""

    scale: np.ndarray
    zero: np.ndarray
    low: int
    high: int
    narrowed: bool = False

    def integers(self, weight: np.ndarray, axis: int) -> np.ndarray:
        """`weight` on this grid, as the integers placement stores (per channel along `axis`)."""
        shape = [1] * weight.ndim
        if self.scale.ndim == 1 and self.scale.size > 1:
            shape[axis] = -1
        zero = self.zero.reshape(shape if self.zero.ndim else ())
        return np.clip(np.rint(weight / self.scale.reshape(shape)) + zero, self.low, self.high).astype(self.zero.dtype)


def weight_grid(q: ir.Node, cpu: CpuTarget | None) -> WeightGrid | None:
    """The grid `place-for-onnxruntime` stores the weight a QuantizeLinear reads on, for `cpu` (None:
    no placement narrows anything, as for TensorRT). The QuantizeLinear's own grid, except on a CPU
    whose U8S8 kernels saturate 8-bit weight pairs (tao_qc/spec/cpu.py): there the symmetric int8
    weights of nodes that run those kernels (`runs_u8s8_gemm`) get +-`cpu.weight_magnitude` steps of
    scale x 127 / magnitude (the same range, coarser steps: 7 bits). None for a QuantizeLinear without
    integer parameters (FP8, or no zero point). Placement stores these integers, and the weight
    corrections (AdaRound, bias correction) fit and measure on the same grid, so what they choose is
    what ships."""
    params = integer_qparams(q)
    if params is None:
        return None
    scale, zero = params
    if cpu is not None and cpu.pairs_saturate and zero.dtype == np.int8 and not zero.any() and any(
            runs_u8s8_gemm(use.node) for use in q.outputs[0].uses() if use.node.op_type == "DequantizeLinear"):
        magnitude = cpu.weight_magnitude
        narrow = (scale.astype(np.float64) * (FULL_WEIGHT_MAGNITUDE / magnitude)).astype(np.float32)
        return WeightGrid(narrow, zero, -magnitude, magnitude, narrowed=True)
    info = np.iinfo(zero.dtype)
    return WeightGrid(scale, zero, int(info.min), int(info.max))


def _int32_biases(activation: ir.Value, input_scale: float):
    """(bias DequantizeLinear, the biases in float64, their scale for `input_scale`) of each
    Conv/Gemm unit reading `activation` with an int32 bias."""
    for use in list(activation.uses()):
        node = use.node
        if node.op_type not in ("Conv", "Gemm") or use.idx != 0 or len(node.inputs) < 3 or node.inputs[2] is None:
            continue
        bias_dq, weight_dq = node.inputs[2].producer(), node.inputs[1].producer()
        if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or weight_dq is None or weight_dq.op_type != "DequantizeLinear":
            continue
        bias_params, weight_params = qparams(bias_dq), qparams(weight_dq)
        quantized = constant_array(bias_dq.inputs[0])
        if bias_params is None or weight_params is None or quantized is None or quantized.dtype != np.int32:
            continue
        real = (quantized.astype(np.float64) - bias_params[1].astype(np.float64)) * bias_params[0].astype(np.float64)
        scale = np.broadcast_to((np.float32(input_scale) * weight_params[0].astype(np.float32)).reshape(-1), real.shape).astype(np.float32)
        yield node, bias_dq, real, scale


def biases_fit(activation: ir.Value, input_scale: float) -> bool:
    """Whether the int32 biases of the units reading `activation` hold their values at `input_scale`."""
    return all(np.all(np.abs(np.rint(real / scale)) <= 2**31 - 1) for _, _, real, scale in _int32_biases(activation, input_scale))


def requantize_biases(build: QdqBuilder, activation: ir.Value, input_scale: float) -> None:
    """The int32 biases of the Conv/Gemm units reading `activation` for its new scale: ORT's integer
    kernels take a bias in units of input scale x weight scale, whatever its DequantizeLinear says."""
    for node, bias_dq, real, scale in list(_int32_biases(activation, input_scale)):
        requantized = np.clip(np.rint(real / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = f"{node.name}_bias_regrid"
        old = list(bias_dq.inputs)
        bias_dq.replace_input_with(0, build.initializer(f"{base}_quantized", requantized))
        bias_dq.replace_input_with(1, build.initializer(f"{base}_scale", scale))
        bias_dq.replace_input_with(2, build.initializer(f"{base}_zero_point", np.zeros_like(requantized)))
        for value in old:
            if value is not None and value.name in build.graph.initializers and not list(value.uses()):
                del build.graph.initializers[value.name]
