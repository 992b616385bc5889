"""Open and check the calibration data against the loaded graph's inputs, before any heavy work.

Names, shapes and dtypes are checked when the data is opened (`tao_qc.data.open_inputs`); this pass
then streams it once (`validate()`: NaN/Inf) and runs the float model on the first batch, so bad
data is a one-line error before calibration starts: a model with open height and width can still
reject a size (DBNet wants multiples of 32), which only a run shows. `random` data is accepted only
when the spec says so, with a loud warning. Where the run judges accuracy and has no data of its own
for it, the last fifth of the calibration data is held back from calibration for that
(`ctx.held_back`). The graph is not changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_ir as ir

from tao_qc.data import model_inputs, open_inputs
from tao_qc.ir.shapes import dynamic_axes, explain_rejected_shape
from tao_qc.passes.verify_quantization import run_once
from tao_qc.pipeline import PassContext, PassResult, weightless_proto

log = logging.getLogger("tao_qc.data")


@dataclass
class CheckCalibration:
    name: str = "check-calibration"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        spec = ctx.spec
        if ctx.calibration is None:
            ctx.calibration = open_inputs(spec.calibration.data, proto_inputs(model), calibration=spec.calibration)
        batches = ctx.calibration
        if not batches.is_random:  # generated data is finite by construction
            batches.validate()
        _check_the_model_runs_on(model, batches)
        notes = []
        if ctx.facts.get("hold_back_for_accuracy") and _can_hold_back(batches, proto_inputs(model)):
            ctx.calibration, ctx.held_back = batches.hold_back(HELD_BACK_FRACTION)
            batches = ctx.calibration
            notes.append(f"held back to judge accuracy on: {ctx.held_back.describe()}")
        notes.insert(0, f"calibration data: {batches.describe()}")
        if batches.is_random:
            notes.append("warning: calibrating on RANDOM data (quantize.calibration.data: random): ranges mean nothing for real inputs")
        stats = {"samples": batches.num_samples, "random": int(batches.is_random)}
        if ctx.held_back is not None:
            stats["held_back"] = ctx.held_back.num_samples
        return PassResult(model, changed=False, stats=stats, notes=notes)


# Without accuracy or comparison data of its own, a run judges accuracy on the last fifth of the
# calibration data, kept out of calibration: ranges measured on the very samples they are judged on
# look better than they are. Below MIN_SAMPLES_TO_HOLD_BACK the few samples are worth more to
# calibration, and accuracy is judged on them with a warning.
HELD_BACK_FRACTION = 0.2
MIN_SAMPLES_TO_HOLD_BACK = 20


def _can_hold_back(batches, inputs: list) -> bool:
    fixed = {info.fixed_batch for info in inputs} - {None, 1}
    return not batches.is_random and not fixed and batches.num_samples >= MIN_SAMPLES_TO_HOLD_BACK


def proto_inputs(model: ir.Model) -> list:
    """The model's real inputs (`InputInfo`), read without serializing its weights."""
    proto, weights = weightless_proto(model, 1024)
    return model_inputs(proto, constants=weights)


def _check_the_model_runs_on(model: ir.Model, batches) -> None:
    """Only where the model leaves dimensions besides the batch open: fixed shapes were checked
    when the data was opened, and a run costs time."""
    axes = dynamic_axes(proto_inputs(model))
    if not any(a > 0 for per_input in axes.values() for a in per_input):
        return
    first = batches.first()
    try:
        run_once(model, first)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise explain_rejected_shape(lambda feeds: run_once(model, feeds), first, axes, exc, batches.key) from None
