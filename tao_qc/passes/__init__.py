"""The ONNX pipeline's passes: one concern per module.

`default_passes(spec)` is the pipeline `tao-qc compile` runs, in this order:

    load-and-check
    -> canonicalize: fold-constants -> fold-batchnorm -> fold-conv-affine -> remove-identity
       [-> transposed-conv-as-conv -> name-activation-chains (target: onnxruntime)], repeated until a
       round changes nothing
    -> match-layers -> check-calibration -> quantize-modelopt
       [-> measure-activation-bounds (onnxruntime.activation_ranges: auto or asymmetric)] -> clip-ranges
                                                                   (`calibrating_passes`)
       [-> choose-ranges (algorithm: auto)] [-> correct-bias / round-weights (calibration.corrections),
       on the weight grid placement will store: `placement_cpu`]
    -> keep-float -> assign-dtypes
    [-> place-for-onnxruntime -> integer-elementwise -> move-on-uint8 -> upsample-on-uint8
        -> space-to-depth-stem -> fit-ort-integer-kernels]
       (target: onnxruntime)
    -> verify-quantization                                         (`finishing_passes`)

Accuracy-driven fallback calibrates once and repeats only the finishing passes, with the nodes it
keeps in float (`ctx.facts["keep_float"]`), on copies of the calibrated graph.
"""

from __future__ import annotations

from pathlib import Path

from tao_qc.passes.assign_dtypes import AssignDtypes
from tao_qc.passes.check_calibration import CheckCalibration
from tao_qc.passes.choose_ranges import ChooseRanges
from tao_qc.passes.clip_ranges import ClipRanges
from tao_qc.passes.correct_bias import CorrectBias
from tao_qc.passes.fit_ort_integer_kernels import FitOrtIntegerKernels
from tao_qc.passes.fold_batchnorm import FoldBatchNorm
from tao_qc.passes.fold_constants import FoldConstants
from tao_qc.passes.fold_conv_affine import FoldConvAffine
from tao_qc.passes.integer_elementwise import IntegerElementwise
from tao_qc.passes.measure_activation_bounds import MeasureActivationBounds
from tao_qc.passes.keep_float import KeepFloat
from tao_qc.passes.load_and_check import LoadAndCheck
from tao_qc.passes.match_layers import MatchLayers
from tao_qc.passes.move_on_uint8 import MoveOnUint8
from tao_qc.passes.name_activation_chains import NameActivationChains
from tao_qc.passes.place_for_onnxruntime import PlaceForOnnxRuntime
from tao_qc.passes.quantize_modelopt import QuantizeModelOpt
from tao_qc.passes.remove_identity import RemoveIdentity
from tao_qc.passes.round_weights import RoundWeights
from tao_qc.passes.space_to_depth_stem import SpaceToDepthStem
from tao_qc.passes.transposed_conv_as_conv import TransposedConvAsConv
from tao_qc.passes.tabulate_activation_chains import TabulateActivationChains
from tao_qc.passes.upsample_on_uint8 import UpsampleOnUint8
from tao_qc.passes.verify_quantization import VerifyQuantization
from tao_qc.pipeline import FixedPoint
from tao_qc.spec import QuantizeSpec
from tao_qc.spec.cpu import CpuTarget
from tao_qc.spec.cpu import resolve as resolve_cpu


def default_passes(spec: QuantizeSpec, *, source_path: Path | None = None) -> list:
    return calibrating_passes(spec, source_path=source_path) + finishing_passes(spec)


def calibrating_passes(spec: QuantizeSpec, *, source_path: Path | None = None) -> list:
    """From the user's file to modelopt's calibrated Q/DQ graph."""
    passes = [
        LoadAndCheck(source_path),
        # Each can expose work for another (a Conv -> Identity -> BatchNorm folds only once the
        # Identity is gone); repeating until a round changes nothing makes their order not matter.
        FixedPoint("canonicalize", [FoldConstants(),
                                    # ORT has integer kernels for a HardSwish, none for the pieces exporters
                                    # write. Named before fold-conv-affine, which would fold the chain's last
                                    # step (paddle2onnx's `/ 6`) into the next Conv and leave 6 x HardSwish.
                                    *([NameActivationChains()] if spec.target == "onnxruntime" else []),
                                    FoldBatchNorm(), FoldConvAffine(), RemoveIdentity(),
                                    # ORT's CPU provider has no integer ConvTranspose; a Conv it has.
                                    *([TransposedConvAsConv()] if spec.target == "onnxruntime" else [])]),
        MatchLayers(),
        CheckCalibration(),
        QuantizeModelOpt(),
        # ONNX Runtime's uint8 activations take any zero point: their grids may follow the data's bounds.
        *([MeasureActivationBounds()] if spec.target == "onnxruntime" and spec.onnxruntime.activation_ranges != "symmetric"
          else []),
        ClipRanges(),
    ]
    # Only where the spec asks: without them the pipeline (and its golden dumps) is as it was.
    if getattr(spec, "algorithm", None) == "auto":
        passes.append(ChooseRanges())
    return passes + correction_passes(spec.calibration.corrections if spec is not None else [], cpu=placement_cpu(spec))


def placement_cpu(spec: QuantizeSpec | None) -> CpuTarget | None:
    """The CPU `place-for-onnxruntime` stores weights for (`quantize.onnxruntime.cpu`, `auto`: this
    machine); None for any other target, whose weights keep modelopt's grid."""
    if getattr(spec, "target", None) != "onnxruntime":
        return None
    return resolve_cpu(spec.onnxruntime.cpu)


def correction_passes(corrections: list, skip: frozenset = frozenset(), *, cpu: CpuTarget | None = None) -> list:
    """The weight corrections of `calibration.corrections`, in the order written. `cpu`: what
    `placement_cpu(spec)` gives, so each correction fits and measures the weights on the grid placement
    stores them on (`qdq.weight_grid`: 7 bits where that CPU's U8S8 kernels saturate 8-bit pairs)."""
    made = {"bias": CorrectBias, "adaround": RoundWeights}
    return [made[c.method](settings=c, skip=skip, cpu=cpu) for c in corrections]


def finishing_passes(spec: QuantizeSpec, *, verify: bool = True) -> list:
    """From the calibrated graph to the model that is saved: nodes kept in float, each node's own
    dtype, placement for the target, verification (left out of fallback's trials, which the final
    build verifies)."""
    # Each node's dtype from the one int8 calibration, after fallback's float nodes and before
    # placement, which builds ONNX Runtime's integer units around the int8 nodes only.
    passes: list = [KeepFloat(), AssignDtypes()]
    if spec.target == "onnxruntime":
        # Re-place modelopt's Q/DQ for ORT's integer kernels (reusing its ranges), keep HardSwish,
        # gates, Concats, channel shuffles and nearest upsampling on uint8, look activations ORT has
        # no integer kernel for up in a table where that is faster, run a few-channel strided
        # stem as a Conv ORT's kernels are efficient at, then give every integer unit shapes ORT's
        # kernels compute right and fast (last: it sees the units the passes before it shaped).
        passes += [PlaceForOnnxRuntime(cpu=placement_cpu(spec)), IntegerElementwise(), MoveOnUint8(),
                   UpsampleOnUint8(), TabulateActivationChains(), SpaceToDepthStem(), FitOrtIntegerKernels()]
    if verify:
        passes.append(VerifyQuantization())
    return passes
