"""Choose each activation's uint8 grid on held-out data: the calibration data's own bounds, or
modelopt's symmetric range.

measure-activation-bounds puts each activation's grid over the calibration data's [min, max]: up to
twice as fine a step as the symmetric grid over [-amax, amax], but as tight as the calibration data.
Values the model meets later past those bounds all land on the grid's edge; the symmetric grid holds
them, at a coarser step. Which costs less depends on the data the model will meet, so this asks data
calibration never saw (accuracy fallback's): one pass of the float graph over it, and for each tensor
the squared error of its values on either grid; the smaller wins. The calibration data cannot answer
it: its values lie within its own bounds by construction.

Accuracy fallback then measures the model with these choices on its task metric beside the whole-model
choices, and keeps it only where it measures better (tao_qc/accuracy/fallback.py, `range_choices`).
Only the facts change (`activation_bounds` loses the tensors that go symmetric): placement builds the
grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from tao_qc.passes.clip_ranges import activation_quantizers, float_activations
from tao_qc.passes.qdq import integer_qparams, uint8_grid_over
from tao_qc.pipeline import PassContext, PassResult


@dataclass
class ChooseGrids:
    data: Any  # InputBatches: the held-out data the errors are measured on
    name: str = "choose-grids"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        bounds = ctx.facts.get("activation_bounds") or {}
        steps: dict[str, float] = {}  # the symmetric grid's step (modelopt's scale)
        for tensor, quantizers in activation_quantizers(model).items():
            params = integer_qparams(quantizers[0]) if tensor in bounds else None
            if params is not None and params[1].dtype == np.int8 and not params[1].any():
                steps[tensor] = float(params[0].reshape(-1)[0])
        grids = {t: grid for t, step in steps.items() if (grid := uint8_grid_over(*bounds[t], step * 127)) is not None}
        errors = {tensor: np.zeros(2) for tensor in grids}  # [on the data's bounds, symmetric]
        for batch in float_activations(model, list(grids), self.data):
            for tensor, values in batch.items():
                scale, zero = grids[tensor]
                errors[tensor] += (squared_error(values, float(scale), int(zero)),
                                   squared_error(values, steps[tensor], 128))
        symmetric = sorted(t for t, (tight, wide) in errors.items() if wide < tight)
        ctx.facts["activation_bounds"] = {t: b for t, b in bounds.items() if t not in symmetric}
        ctx.facts["activation_bounds_widened"] = {t: b for t, b in (ctx.facts.get("activation_bounds_widened") or {}).items()
                                                  if t not in symmetric}
        ctx.facts["grids_chosen"] = {"symmetric": symmetric, "measured": len(errors)}
        return PassResult(model, changed=False, stats={"grids_measured": len(errors), "grids_symmetric": len(symmetric)})


def squared_error(values: np.ndarray, scale: float, zero: int) -> float:
    """The summed squared error of `values` quantized to the uint8 grid (`scale`, `zero`) and back."""
    levels = np.clip(np.rint(values / scale) + zero, 0, 255)
    return float(np.sum(np.square((levels - zero) * scale - values, dtype=np.float64)))
