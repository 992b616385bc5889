"""Open and check the calibration data against the loaded graph's inputs, before any heavy work.

Names, shapes and dtypes are checked when the data is opened (`tao_qc.data.open_inputs`); this pass
then streams it once (`validate()`: NaN/Inf) so bad data is a one-line error before canonicalization
and calibration start. `random` data is accepted only when the spec says so, with a loud warning.
The graph is not changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir

from tao_qc.pipeline import PassContext, PassResult, weightless_proto

log = logging.getLogger("tao_qc.data")


@dataclass
class CheckCalibration:
    name: str = "check-calibration"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from tao_qc.data import model_inputs, open_inputs

        spec = ctx.spec
        if ctx.calibration is None:
            proto, weights = weightless_proto(model, 1024)
            ctx.calibration = open_inputs(spec.calibration.data, model_inputs(proto, constants=weights),
                                          calibration=spec.calibration)
        batches = ctx.calibration
        if not batches.is_random:  # generated data is finite by construction
            batches.validate()
        notes = [f"calibration data: {batches.describe()}"]
        if batches.is_random:
            notes.append("warning: calibrating on RANDOM data (quantize.calibration.data: random): ranges mean nothing for real inputs")
        return PassResult(model, changed=False, stats={"samples": batches.num_samples, "random": int(batches.is_random)},
                          notes=notes)
