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
with `onnxruntime.activation_ranges: asymmetric`, after quantize-modelopt; the graph is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.clip_ranges import activation_quantizers, float_activations
from tao_qc.passes.qdq import integer_qparams
from tao_qc.pipeline import PassContext, PassResult


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
        bounds = {name: [low[name], high[name]] for name in tensors if low[name] <= high[name]}
        ctx.facts["activation_bounds"] = bounds
        one_sided = sum(1 for lo, hi in bounds.values() if lo >= 0 or hi <= 0)
        return PassResult(model, changed=False, stats={"activation_bounds": len(bounds), "one_sided": one_sided})
