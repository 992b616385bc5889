"""Clip activation ranges at a percentile of the calibration data's magnitudes.

modelopt.onnx calibrates activations with `max` or `entropy` only. Max takes the largest magnitude
ever seen, so one outlier stretches the int8 grid over a range the bulk of the values never reaches:
on PaddleOCR's PP-OCRv5 recognizer (PP-LCNet blocks whose squeeze-excitation and affine outputs are
heavy-tailed), plain INT8 reads nothing (CER 98%), while the same Q/DQ with every activation range
clipped at the 99.9th percentile of |x| reads almost as FP32 does (CER 2.3% against 0.6%).

The ranges come from one pass of the float model over the calibration data (the graph with its Q/DQ
looked through, every quantized activation a graph output), accumulated as a histogram of |x| per
tensor, so memory stays at one batch. Weights keep modelopt's per-channel ranges. Only ever narrows a
range: a percentile above modelopt's amax keeps the amax.

Runs when `calibration` asks for it (`algorithm: percentile`) or when accuracy fallback tries it
(`ctx.facts["clip_percentile"]`), before placement, so every later pass sees the clipped ranges.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.qdq import unique_initializer_name
from tao_qc.passes.verify_quantization import FEEDABLE_WEIGHTS
from tao_qc.pipeline import (
    PassContext,
    PassResult,
    constant_array,
    light_proto_and_weights,
)

log = logging.getLogger("tao_qc.quantize")

BINS = 4096


@dataclass
class ClipRanges:
    name: str = "clip-ranges"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        percentile = ctx.facts.get("clip_percentile")
        if percentile is None and ctx.spec.calibration_algorithm == "percentile":
            percentile = ctx.spec.calibration.percentile
        if percentile is None:
            return PassResult(model, changed=False, stats={"ranges_clipped": 0})
        if ctx.calibration is None:
            raise ValueError("clip-ranges needs the calibration data")
        quantizers = activation_quantizers(model)
        if not quantizers:
            return PassResult(model, changed=False, stats={"ranges_clipped": 0}, notes=["no activation Q/DQ"])
        amax = {name: _amax(q) for name, qs in quantizers.items() for q in qs[:1]}
        histograms = _histograms(model, amax, ctx.calibration)
        clipped, notes = 0, []
        ranges = ctx.facts.setdefault("ranges", {})
        for tensor, nodes in quantizers.items():
            limit = _percentile(histograms[tensor], amax[tensor], percentile)
            if not 0 < limit < amax[tensor]:
                continue
            for q in nodes:
                _set_scale(model.graph, q, limit)
            clipped += 1
            if tensor in ranges:
                ranges[tensor] = {**ranges[tensor], "amax": [limit], "scale": [limit / _qmax(nodes[0])],
                                  "source": f"clipped at the {percentile:g}th percentile of |x| (modelopt's amax {amax[tensor]:.4g})"}
            notes.append(f"{tensor}: range {amax[tensor]:.4g} -> {limit:.4g} ({percentile:g}th percentile of |x|)")
        ctx.facts["clipped_percentile"] = percentile
        return PassResult(model, changed=bool(clipped), stats={"ranges_clipped": clipped, "activation_ranges": len(quantizers)},
                          notes=notes)


def activation_quantizers(model: ir.Model) -> dict[str, list[ir.Node]]:
    """Per activation tensor (not a constant), the QuantizeLinear nodes reading it with a scalar scale."""
    found: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        if node.op_type != "QuantizeLinear" or node.inputs[0] is None:
            continue
        source = node.inputs[0]
        if source.is_initializer() or source.const_value is not None or constant_array(source) is not None:
            continue
        scale = constant_array(node.inputs[1])
        if scale is None or scale.size != 1:
            continue
        found.setdefault(source.name, []).append(node)
    return found


def _qmax(q: ir.Node) -> float:
    dtype = q.outputs[0].dtype
    return 448.0 if dtype is not None and "FLOAT8" in dtype.name else 127.0


def _amax(q: ir.Node) -> float:
    return float(np.abs(constant_array(q.inputs[1])).reshape(())) * _qmax(q)


def _set_scale(graph: ir.Graph, q: ir.Node, amax: float) -> None:
    """A new scale for `q` and the DequantizeLinear nodes reading it (their own initializers: modelopt
    may share one scale tensor between tensors)."""
    old = constant_array(q.inputs[1])
    scale = np.array(amax / _qmax(q), dtype=old.dtype).reshape(old.shape)
    value = ir.Value(name=unique_initializer_name(graph, f"{q.name}_clipped_scale"), const_value=ir.tensor(scale))
    value.const_value.name = value.name
    graph.register_initializer(value)
    q.replace_input_with(1, value)
    for use in q.outputs[0].uses():
        if use.node.op_type == "DequantizeLinear":
            use.node.replace_input_with(1, value)


def _histograms(model: ir.Model, amax: dict[str, float], batches) -> dict[str, np.ndarray]:
    """|x| histograms over [0, amax] per tensor, from the float graph run over the calibration data."""
    counts = {name: np.zeros(BINS, dtype=np.int64) for name in amax}
    for values in float_activations(model, list(amax), batches):
        for name, value in values.items():
            magnitude = np.abs(value).ravel()
            counts[name] += np.histogram(np.minimum(magnitude, amax[name]), bins=BINS, range=(0.0, amax[name]))[0]
    return counts


def float_activations(model: ir.Model, names: list[str], batches) -> Iterator[dict[str, np.ndarray]]:
    """Per calibration batch, the float32 values of the tensors `names` as the float graph computes
    them (every DequantizeLinear(QuantizeLinear(x)) read as x): one batch in memory at a time."""
    import onnxruntime as ort
    from onnx import ValueInfoProto

    proto, weights = light_proto_and_weights(model, 1024, FEEDABLE_WEIGHTS)
    _look_through_qdq(proto)
    known = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    computed = [name for name in names if name not in inputs]
    for name in computed:
        if name not in known:
            proto.graph.output.append(ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds_weights = {k: v.numpy() for k, v in weights.items()}
    for batch in batches:
        values = dict(zip(computed, session.run(computed, {**feeds_weights, **batch}))) if computed else {}
        values.update({name: batch[name] for name in names if name in inputs and name in batch})
        yield {name: np.asarray(values[name], dtype=np.float32) for name in names if name in values}


def _look_through_qdq(proto) -> None:
    """Every DequantizeLinear(QuantizeLinear(x)) read as x: the float graph modelopt quantized."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    rename = {}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                rename[node.output[0]] = q.input[0]
    for node in proto.graph.node:
        for index, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[index] = name
    outputs = {o.name for o in proto.graph.output}  # a graph output that is a DQ keeps its node
    keep = [n for n in proto.graph.node
            if not (n.op_type == "DequantizeLinear" and n.output[0] in rename and n.output[0] not in outputs)]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)


def _percentile(histogram: np.ndarray, amax: float, percentile: float) -> float:
    total = int(histogram.sum())
    if total == 0:
        return amax
    cumulative = np.cumsum(histogram)
    index = int(np.searchsorted(cumulative, total * percentile / 100.0))
    return float(min(amax, (index + 1) * amax / BINS))
