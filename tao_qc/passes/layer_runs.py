"""What the range and weight corrections read: the calibrated graph's quantized layers, the float graph
behind its Q/DQ, and runs of either over a fixed part of the calibration data.

Shared by `choose-ranges`, `correct-bias` and `round-weights` (passes/), which all work on the one
calibrated Q/DQ graph modelopt wrote (weights as float initializers behind a per-channel
QuantizeLinear/DequantizeLinear pair, activations behind scalar int8 pairs), before placement: what
they change (a scale, a bias, a weight) is read by the finishing passes of both targets.

Runs are in ONNX Runtime on the CPU at the basic optimization level, one thread: the graph's own Q/DQ
arithmetic (no fused integer kernels), the same numbers on every machine and in every run. The
samples are the first `samples` of the calibration data in its order: no randomness, so two runs
choose the same ranges and the same corrections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import onnx_ir as ir

from tao_qc.passes.clip_ranges import _look_through_qdq
from tao_qc.passes.qdq import unique_initializer_name, weight_grid
from tao_qc.passes.verify_quantization import FEEDABLE_WEIGHTS
from tao_qc.pipeline import constant_array, light_proto_and_weights
from tao_qc.runtimes.onnxruntime import with_exact_fp16_quantize
from tao_qc.spec.cpu import CpuTarget



@dataclass
class Layer:
    """A quantized Conv/Gemm/MatMul of the calibrated graph whose weight is a constant behind Q/DQ."""

    node: ir.Node
    weight: ir.Value  # the float initializer the weight QuantizeLinear reads
    weight_q: ir.Node
    x: ir.Value  # the activation input as the op reads it (a DequantizeLinear's output)
    output: ir.Value  # the op's output
    bias: ir.Value | None  # the constant bias (Conv/Gemm input 2, or the constant of a MatMul's Add)
    biased: ir.Value  # the tensor the bias is part of (the op's output, or the MatMul's Add output)
    channel_axis: int  # of the output

    @property
    def name(self) -> str:
        return self.node.name or self.output.name


def _producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def quantized_layers(model: ir.Model) -> list[Layer]:
    """Graph order. A MatMul's bias is the constant of the one Add that alone reads its output."""
    layers = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
            continue
        w_dq = _producer(node.inputs[1], "DequantizeLinear")
        w_q = _producer(w_dq.inputs[0] if w_dq is not None else None, "QuantizeLinear")
        x_dq = _producer(node.inputs[0], "DequantizeLinear")
        if w_q is None or x_dq is None or not w_q.inputs[0].is_initializer() or constant_array(w_q.inputs[0]) is None:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.as_int() for a in node.attributes.values()):
            continue
        out = node.outputs[0]
        bias, biased, axis = None, out, 1
        if node.op_type in ("Conv", "Gemm"):
            if len(node.inputs) > 2 and node.inputs[2] is not None and constant_array(node.inputs[2]) is not None:
                bias = node.inputs[2]
        else:
            axis = -1
            uses = list(out.uses())
            if len(uses) == 1 and uses[0].node.op_type == "Add" and not out.is_graph_output():
                add = uses[0].node
                other = add.inputs[1 - uses[0].idx]
                array = constant_array(other)
                columns = constant_array(w_q.inputs[0]).shape[-1]
                if other is not None and other.is_initializer() and array is not None and array.size == columns \
                        and array.shape[-1:] == (columns,):
                    bias, biased = other, add.outputs[0]
        layers.append(Layer(node, w_q.inputs[0], w_q, node.inputs[0], out, bias, biased, axis))
    return layers


def ensure_bias(model: ir.Model, layer: Layer) -> bool:
    """Give a Conv or Gemm without a bias a zero one (a correction needs somewhere to go); False for a
    MatMul without a bias Add (nothing is added to the graph for it)."""
    if layer.bias is not None:
        return True
    if layer.node.op_type == "MatMul":
        return False
    weight = constant_array(layer.weight)
    transposed = layer.node.op_type == "Gemm" and any(a.name == "transB" and a.as_int() for a in layer.node.attributes.values())
    channels = weight.shape[0] if layer.node.op_type == "Conv" or transposed else weight.shape[-1]
    value = ir.Value(name=unique_initializer_name(model.graph, f"{layer.name}_bias"),
                     const_value=ir.tensor(np.zeros(channels, dtype=weight.dtype)))
    value.const_value.name = value.name
    model.graph.register_initializer(value)
    if len(layer.node.inputs) == 2:
        layer.node.resize_inputs(3)
    layer.node.replace_input_with(2, value)
    layer.bias = value
    return True


def set_initializer(graph: ir.Graph, value: ir.Value, array: np.ndarray) -> None:
    """Replace an initializer's tensor (its dtype and shape kept)."""
    old = constant_array(value)
    tensor = ir.tensor(np.asarray(array, dtype=old.dtype).reshape(old.shape))
    tensor.name = value.name
    value.const_value = tensor


def sample_feeds(calibration: Any, samples: int) -> list[dict[str, np.ndarray]]:
    """The first `samples` calibration samples (in the data's order), in the data's own batches (a
    model with a fixed batch size takes only those)."""
    feeds: list[dict[str, np.ndarray]] = []
    taken = 0
    for batch in calibration:
        count = len(next(iter(batch.values())))
        keep = min(count, samples - taken)
        feeds.append({name: np.asarray(array)[:keep] if keep < count else np.asarray(array) for name, array in batch.items()})
        taken += keep
        if taken >= samples:
            break
    if not feeds:
        raise ValueError("no calibration samples to correct the model on")
    return feeds


class GraphRunner:
    """One ORT session over a graph (the quantized one, or the float one behind its Q/DQ) with any of
    its tensors as outputs; `feedable` initializers become inputs, so they can change between runs
    without a new session. `replace`: initializers to run with other values (the float graph runs
    with the weights as they were before `round-weights` rounded them: `float_weights(ctx)`).
    `stored`: weights to run as placement stores them (`narrowed_weights`)."""

    def __init__(self, model: ir.Model, outputs: Iterable[str], *, look_through_qdq: bool = False,
                 feedable: Iterable[str] = (), replace: dict[str, np.ndarray] | None = None,
                 stored: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        import onnxruntime as ort
        from onnx import ValueInfoProto, helper


        proto, weights = light_proto_and_weights(model, 1024, FEEDABLE_WEIGHTS)
        if look_through_qdq:
            _look_through_qdq(proto)
        self.weights = {name: tensor.numpy() for name, tensor in weights.items()}
        if stored:
            self.weights.update(_read_stored(proto, stored))
        replace = {k: v for k, v in (replace or {}).items() if k in {i.name for i in proto.graph.initializer} | set(self.weights)}
        feedable = (set(feedable) | set(replace)) - set(self.weights)
        if feedable:
            keep = []
            for init in proto.graph.initializer:
                if init.name in feedable:
                    self.weights[init.name] = __import__("onnx").numpy_helper.to_array(init)
                    proto.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
                else:
                    keep.append(init)
            del proto.graph.initializer[:]
            proto.graph.initializer.extend(keep)
            if proto.ir_version < 4:
                proto.ir_version = 4
        self.weights.update(replace)
        known = {o.name for o in proto.graph.output}
        self.outputs = list(dict.fromkeys(outputs))
        graph_inputs = {i.name for i in proto.graph.input}
        for name in self.outputs:
            if name not in known and name not in graph_inputs:
                proto.graph.output.append(ValueInfoProto(name=name))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

        # fp16 QuantizeLinear (a TensorRT graph's fp16 float part) rounded as ONNX defines it, not as ORT's CPU kernel does
        self.session = ort.InferenceSession(with_exact_fp16_quantize(proto).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray], names: list[str] | None = None,
            overrides: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        names = names or self.outputs
        given = {**self.weights, **(overrides or {}), **feeds}
        computed = [n for n in names if n not in given]  # a graph input is not an output of the session
        values = dict(zip(computed, self.session.run(computed, {k: v for k, v in given.items() if k in self.inputs})))
        return {n: values[n] if n in values else given[n] for n in names}


def channel_means(array: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Sum over every axis but `axis`, and how many values each channel's sum holds."""
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return flat.sum(axis=0), flat.shape[0]


def layer_levels(model: ir.Model, layers: list[Layer]) -> list[list[Layer]]:
    """Layers grouped by how many quantized layers lie upstream of them: the layers of one level
    depend on none of each other, so a sequential correction can do a level per run."""
    by_node = {id(layer.node): layer for layer in layers}
    depth: dict[int, int] = {}  # id(value) -> quantized layers upstream, through it
    level_of: dict[int, int] = {}
    for node in model.graph:
        upstream = max((depth.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        layer = by_node.get(id(node))
        if layer is not None:
            level_of[id(node)] = upstream
            upstream += 1
        for out in node.outputs:
            depth[id(out)] = upstream
    levels: dict[int, list[Layer]] = {}
    for layer in layers:
        levels.setdefault(level_of[id(layer.node)], []).append(layer)
    return [levels[k] for k in sorted(levels)]


def float_weights(facts: dict[str, Any]) -> dict[str, np.ndarray]:
    """The float weights corrections replaced (by initializer name): the float graph's own values."""
    return facts.get("float_weights") or {}


def narrowed_weights(model: ir.Model, cpu: CpuTarget | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The weights placement for `cpu` stores on a coarser grid than their QuantizeLinear's (`qdq.weight_grid`:
    7 bits where the CPU's U8S8 kernels saturate 8-bit pairs), as it stores them: the QuantizeLinear's
    output name -> (the integers, their scale). Empty for every other CPU and for TensorRT (`cpu` None)."""
    found = {}
    if cpu is None or not cpu.pairs_saturate:
        return found
    for q in model.graph:
        if q.op_type != "QuantizeLinear" or not q.inputs[0].is_initializer():
            continue
        weight, grid = constant_array(q.inputs[0]), weight_grid(q, cpu)
        if weight is not None and grid is not None and grid.narrowed:
            found[q.outputs[0].name] = (grid.integers(weight, q.attributes.get_int("axis", 1)), grid.scale)
    return found


def _read_stored(proto: Any, stored: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every DequantizeLinear of a QuantizeLinear output in `stored` reads those integers and scale instead,
    as graph inputs (the QuantizeLinear goes): the graph's Q/DQ arithmetic on the weights placement
    stores. Returns the inputs' values by name."""
    from onnx import helper

    taken = {i.name for i in proto.graph.initializer} | {i.name for i in proto.graph.input} | {
        name for node in proto.graph.node for name in node.output}

    def unique(base: str) -> str:
        name, count = base, 0
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        return name

    feeds = {}
    for q_output, (integers, scale) in stored.items():
        names = unique(f"{q_output}_stored"), unique(f"{q_output}_stored_scale")
        for name, array in zip(names, (integers, scale)):
            proto.graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                                                   list(array.shape)))
            feeds[name] = array
        for node in proto.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] == q_output:
                node.input[0], node.input[1] = names
    outputs = {o.name for o in proto.graph.output}
    read = {name for node in proto.graph.node for name in node.input}
    keep = [n for n in proto.graph.node if not (n.op_type == "QuantizeLinear" and n.output[0] in stored
                                                 and n.output[0] not in read and n.output[0] not in outputs)]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    if feeds and proto.ir_version < 4:
        proto.ir_version = 4
    return feeds
