"""Empirical bias correction: give back, per output channel, the mean error quantization adds.

Rounding weights and activations to int8 shifts a layer's output by a per-channel mean that does not
average out (a Conv whose rounded weights sum to more than the float ones adds that surplus times
the input's mean at every pixel); through the network those shifts add up. NNCF's full bias
correction takes timm's MobileNetV3-small from 42.2 to 56.7 top-1 (FP32 57.9) this way.

Sequential, on the quantized model's own inputs: every quantized Conv/Gemm (and MatMul followed by a
bias Add) gets `bias += E[y_float] - E[y_quantized]` per output channel, where y_float is the float
graph's output of the layer and y_quantized the calibrated Q/DQ graph's (the weights placement
narrows to 7 bits for a CPU whose U8S8 kernels saturate 8-bit pairs, `cpu`, on that grid: the
rounding that ships), with every layer upstream already corrected: one run of the graph per depth
(layers at one depth never depend on each other; `max_runs` groups depths where time matters more).
Means are over the first `samples` calibration samples. A Conv or Gemm without a bias gets one; a
MatMul is corrected only where its output goes straight into a bias Add, and is otherwise left alone
(nothing is added to the graph). modelopt quantizes the MatMul's output before that Add, so in its
graphs no MatMul is corrected. The float bias is what changes, so placement for either target reads
the corrected value (ONNX Runtime: as an int32 bias).

What it cannot see: one constant per channel takes back the mean error over every position. Where the
error differs by region of the input, that mean can make the part that matters worse. PP-OCRv5's
recognizer is an example. Its lines are zero-padded on the right, and the padding columns carry 10-20
times the text's error, so the correction mostly repairs the padding. The text columns then drift:
Conv.32's relative error on held lines goes 0.136 -> 0.231 on the text and 1.21 -> 0.63 on the
padding, and CER on unseen lines goes 0.92% -> 9.0%. That is why fallback's `corrections` step keeps
a correction only where the task metric measures better.

The report (`ctx.facts["corrections"]`) gives per node the systematic error before and after: the
root mean square over channels of E[y_float] - E[y_quantized], relative to the RMS of y_float.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from tao_qc.passes.layer_runs import (GraphRunner, channel_means, ensure_bias, float_weights, layer_levels,
                                     narrowed_weights, quantized_layers, sample_feeds, set_initializer)
from tao_qc.pipeline import PassContext, PassResult, constant_array
from tao_qc.spec.cpu import CpuTarget

log = logging.getLogger("tao_qc.quantize")


@dataclass
class CorrectBias:
    name: str = "correct-bias"
    settings: Any = None  # a CorrectionSpec (method: bias)
    skip: frozenset = field(default_factory=frozenset)  # node names left alone (kept float by fallback)
    # The CPU placement stores weights for (passes.placement_cpu; None: TensorRT): where its kernels
    # saturate 8-bit pairs, the quantized side runs the 7-bit weights placement stores.
    cpu: CpuTarget | None = None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:

        started = time.perf_counter()
        if ctx.calibration is None:
            raise ValueError("correct-bias needs the calibration data")
        samples = self.settings.samples if self.settings is not None else 16
        budget = self.settings.max_seconds if self.settings is not None else 120.0
        layers = [layer for layer in quantized_layers(model) if layer.name not in self.skip and ensure_bias(model, layer)]
        if not layers:
            return PassResult(model, changed=False, stats={"biases_corrected": 0})
        feeds = sample_feeds(ctx.calibration, samples)
        outputs = [layer.biased.name for layer in layers]

        float_graph = GraphRunner(model, outputs, look_through_qdq=True, replace=float_weights(ctx.facts))
        reference, energy = _means(float_graph, feeds, layers, {}, with_rms=True)
        del float_graph
        stored = narrowed_weights(model, self.cpu)
        runner = GraphRunner(model, outputs, feedable=[layer.bias.name for layer in layers], stored=stored)
        biases = {layer.bias.name: np.asarray(constant_array(layer.bias), dtype=np.float64) for layer in layers}
        records: dict[str, dict[str, Any]] = {}
        levels = layer_levels(model, layers)
        # One run of the graph per depth: a layer is corrected with every layer upstream of it already
        # corrected (correcting a layer and its upstream from the same run would count the upstream
        # shift twice). `max_runs` trades that for time: depths in groups, a group's deeper layers
        # then see its shallower ones uncorrected.
        runs = self.settings.max_runs if self.settings is not None and self.settings.max_runs else len(levels)
        group = max(1, -(-len(levels) // runs))
        groups = [[layer for level in levels[i:i + group] for layer in level] for i in range(0, len(levels), group)]
        stopped = None
        for index, members in enumerate(groups):
            means = _means(runner, feeds, layers, _as_feeds(biases, runner))
            for layer in members:
                shift = reference[layer.name] - means[layer.name]
                records[layer.name] = {"node": layer.name, "op": layer.node.op_type,
                                       "systematic_error_before": _relative(shift, energy[layer.name]),
                                       "bias_shift_rms": float(np.sqrt(np.mean(np.square(shift))))}
                if layer.weight_q.outputs[0].name in stored:
                    records[layer.name]["weight_bits"] = self.cpu.weight_bits  # measured on the weights placement stores
                biases[layer.bias.name] = biases[layer.bias.name] + _shaped(shift, biases[layer.bias.name])
            if time.perf_counter() - started > budget and index + 1 < len(groups):
                stopped = f"stopped after {index + 1} of {len(groups)} runs: max_seconds {budget:g} reached"
                log.warning("correct-bias: %s", stopped)
                break
        after = _means(runner, feeds, layers, _as_feeds(biases, runner))
        # The float graph later corrections and trials compare against keeps the biases as they were.
        originals = ctx.facts.setdefault("float_weights", {})
        for layer in layers:
            if layer.name in records:
                records[layer.name]["systematic_error_after"] = _relative(reference[layer.name] - after[layer.name],
                                                                          energy[layer.name])
                originals.setdefault(layer.bias.name, np.asarray(constant_array(layer.bias)).copy())
                set_initializer(model.graph, layer.bias, biases[layer.bias.name])
        ctx.facts.setdefault("corrections", []).append({
            "method": "bias", "samples": sum(len(next(iter(f.values()))) for f in feeds), "depths": len(levels),
            "runs": len(groups) + 1,
            "seconds": round(time.perf_counter() - started, 3), "stopped": stopped, "nodes": list(records.values())})
        notes = [f"{r['node']}: systematic error {r['systematic_error_before']:.3g} -> {r['systematic_error_after']:.3g}"
                 for r in records.values()]
        return PassResult(model, changed=bool(records), stats={"biases_corrected": len(records), "depths": len(levels)},
                          notes=notes)


def _as_feeds(biases: dict[str, np.ndarray], runner: Any) -> dict[str, np.ndarray]:
    return {name: value.astype(runner.weights[name].dtype).reshape(runner.weights[name].shape)
            for name, value in biases.items()}


def _shaped(shift: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return shift.reshape(bias.shape) if shift.size == bias.size else shift


def _means(runner: Any, feeds: list[dict[str, np.ndarray]], layers: list[Any], overrides: dict,
           with_rms: bool = False) -> Any:
    """Per layer, the mean of its output per channel (and with `with_rms`, the RMS of the whole output)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    squares: dict[str, float] = {}
    for feed in feeds:
        values = runner.run(feed, overrides=overrides)
        for layer in layers:
            array = values[layer.biased.name]
            total, count = _channel(array, layer)
            sums[layer.name] = sums.get(layer.name, 0) + total
            counts[layer.name] = counts.get(layer.name, 0) + count
            if with_rms:
                squares[layer.name] = squares.get(layer.name, 0.0) + float(np.sum(np.square(array, dtype=np.float64)))
    means = {name: sums[name] / counts[name] for name in sums}
    if not with_rms:
        return means
    return means, {name: float(np.sqrt(squares[name] / max(counts[name] * sums[name].size, 1))) for name in sums}


def _channel(array: np.ndarray, layer: Any) -> tuple[np.ndarray, int]:

    return channel_means(array, layer.channel_axis)


def _relative(shift: np.ndarray, rms: float) -> float:
    return float(np.sqrt(np.mean(np.square(shift))) / max(rms, 1e-30))
