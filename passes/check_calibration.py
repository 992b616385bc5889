"""Open and check the calibration data against the loaded graph's inputs, before any heavy work.

Names, shapes and dtypes are checked when the data is opened (`tao_qc.data.open_inputs`); this pass
then streams it once (`validate()`: NaN/Inf) and runs the float model on the first batch, so bad
data is a one-line error before calibration starts: a model with open height and width can still
reject a size (DBNet wants multiples of 32), which only a run shows. `random` data is accepted only
when the spec says so, with a loud warning. The graph is not changed.
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
        from tao_qc.data import open_inputs

        spec = ctx.spec
        if ctx.calibration is None:
            ctx.calibration = open_inputs(spec.calibration.data, proto_inputs(model), calibration=spec.calibration)
        batches = ctx.calibration
        if not batches.is_random:  # generated data is finite by construction
            batches.validate()
        _check_the_model_runs_on(model, batches)
        notes = [f"calibration data: {batches.describe()}"]
        if batches.is_random:
            notes.append("warning: calibrating on RANDOM data (quantize.calibration.data: random): ranges mean nothing for real inputs")
        return PassResult(model, changed=False, stats={"samples": batches.num_samples, "random": int(batches.is_random)},
                          notes=notes)


def proto_inputs(model: ir.Model) -> list:
    """The model's real inputs (`InputInfo`), read without serializing its weights."""
    from tao_qc.data import model_inputs

    proto, weights = weightless_proto(model, 1024)
    return model_inputs(proto, constants=weights)


def _check_the_model_runs_on(model: ir.Model, batches) -> None:
    """Only where the model leaves dimensions besides the batch open: fixed shapes were checked
    when the data was opened, and a run costs time."""
    from tao_qc.passes.verify_quantization import run_once
    from tao_qc.shapes import dynamic_axes, explain_rejected_shape

    axes = dynamic_axes(proto_inputs(model))
    if not any(a > 0 for per_input in axes.values() for a in per_input):
        return
    first = batches.first()
    try:
        run_once(model, first)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise explain_rejected_shape(lambda feeds: run_once(model, feeds), first, axes, exc, batches.key) from None
