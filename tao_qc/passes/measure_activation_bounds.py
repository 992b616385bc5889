"""Measure each quantized activation's smallest and largest value over the calibration data.

modelopt calibrates activations symmetrically: one amax per tensor, the int8 grid spanning
[-amax, amax]. TensorRT needs that; ONNX Runtime's CPU kernels do not: a uint8 activation takes any
zero point. A tensor whose values lie in [-0.375, 6] (a HardSwish) or [0, 6] (a ReLU6 not absorbed)
then wastes half the levels of a symmetric grid on values that never occur. place-for-onnxruntime
puts each activation's uint8 grid over [max(min, -amax), min(max, amax)] instead: the data's own
bounds within modelopt's range (or the clipped one, where clip-ranges or choose-ranges narrowed it),
up to twice as fine a step.

The bounds come from one pass of the float graph (the Q/DQ looked through, every quantized activation
a graph output) over the calibration data, the same run clip-ranges makes for its histograms, and go
to `ctx.facts["activation_bounds"]` ({tensor: [min, max]}): trials of accuracy fallback rebuild the
placement from the calibrated graph's facts without measuring again. Runs for `target: onnxruntime`
with `onnxruntime.activation_ranges: asymmetric` (the default), after quantize-modelopt; the graph is
not changed.

A tensor that takes both signs gets a grid whose smaller side is at least SMALL_SIDE_SHARE of its
larger one, unless the op producing it bounds that side (a HardSwish never goes below -0.375, a
Tanh below -1): the calibration data's smaller extreme is its least certain figure (the fewest
values make it), and data it never saw goes past it, where the larger side is the bound a symmetric
grid has too. PP-OCRv5's recognizer, calibrated on 16 lines, read 64 unseen lines at 2.7% CER over
the data's own bounds, 0.70% (FP32's own) with this floor and 0.89% on symmetric grids; the floor
costs a quarter of a step at most (the step of [-0.25 b, b] against [0, b]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.clip_ranges import activation_quantizers, float_activations
from tao_qc.passes.qdq import integer_qparams
from tao_qc.pipeline import PassContext, PassResult


# The least share of the larger side a two-sided grid gives its smaller side (see the docstring).
SMALL_SIDE_SHARE = 0.25
# Ops whose output cannot go past a bound of their own on its smaller side (HardSwish -0.375, GELU
# about -0.17, Mish about -0.31, Tanh and Softsign -1, ELU -alpha; the others are never negative), which
# the calibration data reaches with values of modest size.
BOUNDED_BY_ITS_OP = frozenset({"HardSwish", "Gelu", "Mish", "Tanh", "Softsign", "Elu", "Relu", "Sigmoid",
                               "HardSigmoid", "Softplus", "Abs", "Exp", "Clip"})


@dataclass
class MeasureActivationBounds:
    name: str = "measure-activation-bounds"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        if ctx.calibration is None:
            raise ValueError("measure-activation-bounds needs the calibration data")
        tensors = [name for name, quantizers in activation_quantizers(model).items()
                   if any((params := integer_qparams(q)) is not None and params[1].dtype == np.int8
                          for q in quantizers)]
        if not tensors:
            return PassResult(model, changed=False, stats={"activation_bounds": 0}, notes=["no int8 activation Q/DQ"])
        low = {name: np.inf for name in tensors}
        high = {name: -np.inf for name in tensors}
        for batch in float_activations(model, tensors, ctx.calibration):
            for name, value in batch.items():
                finite = value[np.isfinite(value)]
                if finite.size:
                    low[name] = min(low[name], float(finite.min()))
                    high[name] = max(high[name], float(finite.max()))
        measured = {name: [low[name], high[name]] for name in tensors if low[name] <= high[name]}
        producers = _producers(model)
        bounds, widened = {}, {}
        for name, (lo, hi) in measured.items():
            producer = producers.get(name)
            bounded = producer is not None and producer.op_type in BOUNDED_BY_ITS_OP and producer.domain in ("", "ai.onnx")
            bounds[name] = [lo, hi] if bounded else widen_smaller_side(lo, hi)
            if bounds[name] != [lo, hi]:
                widened[name] = [lo, hi]
        ctx.facts["activation_bounds"] = bounds
        ctx.facts["activation_bounds_widened"] = widened
        one_sided = sum(1 for lo, hi in bounds.values() if lo >= 0 or hi <= 0)
        return PassResult(model, changed=False, stats={"activation_bounds": len(bounds), "one_sided": one_sided,
                                                       "smaller_side_widened": len(widened)})


def widen_smaller_side(low: float, high: float) -> list[float]:
    """[low, high] with its smaller side at least SMALL_SIDE_SHARE of its larger, where both signs occur."""
    if not low < 0 < high:
        return [low, high]
    return [min(low, -SMALL_SIDE_SHARE * high), max(high, -SMALL_SIDE_SHARE * low)]


def _producers(model: ir.Model) -> dict[str, ir.Node]:
    return {value.name: node for node in model.graph for value in node.outputs}
