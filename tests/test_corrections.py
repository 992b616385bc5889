"""Ranges and weight corrections that keep every node INT8: each on a layer built to need it, measured
on data it never saw through the finished model (placement for the target included), in ONNX Runtime.

- correct-bias: a Conv whose weights all sit 0.45 of a step above an integer, so nearest rounding
  takes 0.45 of a step off every weight: on positive inputs the output carries a mean error.
- round-weights (AdaRound): a 1x1 Conv over sixteen copies of one signal whose weights sit just below
  a half step: nearest rounding pushes every weight the same way and the errors add up in proportion
  to the signal (no bias can take that back); rounding half of them up makes them cancel.
- choose-ranges (`algorithm: auto`): an input whose calibration data holds one huge outlier (max
  spends the int8 grid on it) beside one whose large values are the signal (clipping them would hurt).
- the fallback order: ranges, then corrections, then float nodes, each with the metric after it.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tao_qc.accuracy.trials import picklable_facts
from tao_qc.driver import compile_model
from tao_qc.passes import calibrating_passes, correction_passes, finishing_passes, placement_cpu
from tao_qc.passes.choose_ranges import ChooseRanges
from tao_qc.passes.correct_bias import CorrectBias
from tao_qc.passes.round_weights import RoundWeights
from tao_qc.pipeline import PassContext, Pipeline
from tao_qc.spec import CorrectionSpec, load_spec

pytestmark = pytest.mark.slow

STEP = 0.01  # every test weight's quantization step: each output channel's largest weight is 127 steps


def _conv_model(path, weight: np.ndarray, bias: np.ndarray | None = None, channels: int = 16, size: int = 8):
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
    k = weight.shape[-1]
    node = helper.make_node("Conv", inputs, ["y"], name="conv", pads=[k // 2] * 4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[0], size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


# The layers here are built on the 8-bit weight grid (each channel's amax at 127 steps): for ONNX
# Runtime they compile for a CPU that stores full 8-bit weights, whatever CPU runs the test. The
# 7-bit grid of a CPU without VNNI has tests of its own below (`cpu: avx2`).
EIGHT_BIT_CPU = "avx512_vnni"


def _calibrated(tmp_path, source, x_calibration, target, corrections=(), **spec_fields):
    np.savez(tmp_path / "calibration.npz", x=x_calibration)
    if target == "onnxruntime":
        spec_fields.setdefault("onnxruntime", {"cpu": EIGHT_BIT_CPU})
    spec = load_spec({"backend": "modelopt.onnx", "target": target, "device": "cpu",
                      "calibration": {"data": str(tmp_path / "calibration.npz"), "batch_size": 8,
                                      "max_samples": len(x_calibration), "corrections": list(corrections)},
                      **spec_fields}).for_onnx_pipeline()
    ctx = PassContext(spec=spec, work_dir=tmp_path, source_path=source)
    model = Pipeline(calibrating_passes(spec, source_path=source)).run(None, ctx).model
    return spec, ctx, model


def _finished(spec, ctx, model: ir.Model, tmp_path) -> onnx.ModelProto:
    """The model as the finishing passes of its target make it (the model compile saves)."""
    work = PassContext(spec=spec, work_dir=tmp_path, facts=copy.deepcopy(picklable_facts(ctx.facts)))
    return ir.to_proto(Pipeline(finishing_passes(spec, verify=False), check_invariants=False).run(_copy(model), work).model)


def _finished_outputs(spec, ctx, model: ir.Model, x: np.ndarray, tmp_path) -> np.ndarray:
    """The model as the finishing passes of its target make it, run in ONNX Runtime's CPU provider as
    the CPU it is for computes it."""
    import onnxruntime as ort

    from tao_qc.runtimes.onnxruntime import disabled_optimizers_for, with_exact_fp16_quantize
    from tao_qc.spec.cpu import kernels_compute_as

    proto = _finished(spec, ctx, model, tmp_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if spec.target == "onnxruntime" and not kernels_compute_as(spec.onnxruntime.cpu):
        # This CPU's kernels compute other integers than the named CPU's: the graph's arithmetic is its.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(with_exact_fp16_quantize(proto).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers_for(proto))
    return np.asarray(session.run(None, {"x": x})[0], dtype=np.float64)


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _fp32(source, x) -> np.ndarray:
    import onnxruntime as ort

    return np.asarray(ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0], np.float64)


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_bias_correction_takes_back_a_systematic_mean_error(tmp_path, target):
    rng = np.random.default_rng(0)
    out_channels, in_channels = 8, 16
    weight = (rng.integers(-60, 60, size=(out_channels, in_channels, 3, 3)) + 0.45) * STEP
    weight[:, 0, 0, 0] = 127 * STEP  # each channel's amax: its scale is STEP
    source = _conv_model(tmp_path / "bias.onnx", weight, bias=np.zeros(out_channels))
    x_cal = rng.uniform(0, 1, size=(32, in_channels, 8, 8)).astype(np.float32)
    x_test = rng.uniform(0, 1, size=(16, in_channels, 8, 8)).astype(np.float32)
    spec, ctx, model = _calibrated(tmp_path, source, x_cal, target)
    reference = _fp32(source, x_test)
    before = _finished_outputs(spec, ctx, model, x_test, tmp_path) - reference

    corrected = CorrectBias(settings=CorrectionSpec(method="bias")).run(_copy(model), ctx)
    assert corrected.changed and corrected.stats["biases_corrected"] == 1
    after = _finished_outputs(spec, ctx, corrected.model, x_test, tmp_path) - reference

    mean_before, mean_after = before.mean(axis=(0, 2, 3)), after.mean(axis=(0, 2, 3))
    assert np.abs(mean_before).mean() > 0.05  # the layer needs it: 0.45 step x ~64 positive inputs per channel
    assert np.abs(mean_after).mean() < 0.15 * np.abs(mean_before).mean()
    assert np.square(after).mean() < 0.5 * np.square(before).mean()
    [record] = ctx.facts["corrections"]
    [node] = record["nodes"]
    assert record["method"] == "bias" and node["node"] == "conv"
    assert node["systematic_error_after"] < 0.1 * node["systematic_error_before"]


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_adaround_cancels_rounding_errors_that_add_up(tmp_path, target):
    rng = np.random.default_rng(1)
    out_channels, in_channels = 8, 16
    weight = (rng.integers(-60, 60, size=(out_channels, in_channels, 1, 1)) + 0.49) * STEP
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "round.onnx", weight, bias=np.zeros(out_channels))

    def signal(n):  # sixteen near-copies of one signal of either sign: errors add up, no mean to correct
        z = rng.normal(0, 1, size=(n, 1, 8, 8))
        return (z + 0.01 * rng.normal(size=(n, in_channels, 8, 8))).astype(np.float32)

    spec, ctx, model = _calibrated(tmp_path, source, signal(32), target)
    x_test = signal(16)
    reference = _fp32(source, x_test)
    before = _finished_outputs(spec, ctx, model, x_test, tmp_path) - reference
    settings = CorrectionSpec(method="adaround", layers=1, iterations=400)
    rounded = RoundWeights(settings=settings).run(_copy(model), ctx)
    assert rounded.changed and rounded.stats["layers_rounded"] == 1
    after = _finished_outputs(spec, ctx, rounded.model, x_test, tmp_path) - reference
    assert np.square(after).mean() < 0.3 * np.square(before).mean()
    # bias correction alone cannot do it: the error is proportional to the signal, its mean is ~0
    biased = CorrectBias(settings=CorrectionSpec(method="bias")).run(_copy(model), ctx)
    only_bias = _finished_outputs(spec, ctx, biased.model, x_test, tmp_path) - reference
    assert np.square(only_bias).mean() > 0.8 * np.square(before).mean()
    record = next(r for r in ctx.facts["corrections"] if r["method"] == "adaround")
    [node] = record["nodes"]
    assert node["kept"] and node["output_error_after"] < 0.3 * node["output_error_nearest"]
    # the weights written back are exact steps of the unchanged scale: either target stores these integers
    proto = ir.to_proto(rounded.model)
    written = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w"))
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "w")
    scale = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == q.input[1]))
    steps = written.astype(np.float64) / scale.astype(np.float64).reshape(-1, 1, 1, 1)
    assert np.allclose(steps, np.rint(steps), atol=0.1)  # fp16 weights (tensorrt) hold s * q to 11 bits
    assert ctx.facts["float_weights"]["w"].shape == weight.shape  # the float graph still compares with FP32's


# The 7-bit grid `place-for-onnxruntime` stores a U8S8 layer's weights on for a CPU without VNNI
# (`quantize.onnxruntime.cpu: avx2`): modelopt's scale x 127/64, |q| <= 64. Each output channel's
# largest weight is 64 of these steps (127 of STEP). Forcing avx2 on any CPU is fine: ORT computes
# 7-bit weights exactly everywhere, VNNI included.
STEP7 = STEP * 127 / 64


def _weight_and_scale(proto: onnx.ModelProto, conv: str = "conv") -> tuple[np.ndarray, np.ndarray]:
    """The stored integer weight of `conv` and the scale its DequantizeLinear reads."""
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    node = next(n for n in proto.graph.node if n.name == conv)
    w_dq = producers[node.input[1]]
    return constants[w_dq.input[0]], constants[w_dq.input[1]]


def test_adaround_on_avx2_rounds_on_the_7bit_grid_placement_stores(tmp_path):
    """On a non-VNNI target placement narrows the layer to 7 bits: AdaRound fitted on modelopt's 8-bit grid
    was rounded again there and mostly lost; fitted on the 7-bit grid, its integers are the ones stored."""
    rng = np.random.default_rng(1)
    weight = (rng.integers(-30, 30, size=(8, 16, 1, 1)) + 0.25) * STEP7  # a quarter of a 7-bit step above
    weight[:, 0, 0, 0] = 64 * STEP7
    source = _conv_model(tmp_path / "round7.onnx", weight, bias=np.zeros(8))

    def signal(n):  # sixteen near-copies of one signal: the 7-bit rounding errors add up
        z = rng.normal(0, 1, size=(n, 1, 8, 8))
        return (z + 0.01 * rng.normal(size=(n, 16, 8, 8))).astype(np.float32)

    x_cal, x_test = signal(32), signal(16)
    adaround = {"method": "adaround", "layers": 1, "iterations": 400}
    spec, ctx, model = _calibrated(tmp_path, source, x_cal, "onnxruntime", [adaround], onnxruntime={"cpu": "avx2"})
    [record] = ctx.facts["corrections"]
    [node] = record["nodes"]
    assert node["kept"] and node["weight_bits"] == 7

    # AdaRound's integers: the weight it wrote back, in steps of the 7-bit scale
    proto = ir.to_proto(model)
    q_node = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "w")
    scale8 = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == q_node.input[1]))
    scale7 = (scale8.astype(np.float64) * 127 / 64).astype(np.float32).reshape(-1, 1, 1, 1)
    written = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "w"))
    chosen = written / scale7
    assert np.abs(chosen - np.rint(chosen)).max() < 1e-3 and np.abs(np.rint(chosen)).max() <= 64
    chosen = np.rint(chosen).astype(np.int8)
    nearest = np.rint(weight / scale7)
    assert (chosen != nearest).mean() > 0.1  # rounded otherwise than nearest, on the 7-bit grid

    # the placed model stores exactly those integers, on that scale
    stored, stored_scale = _weight_and_scale(_finished(spec, ctx, model, tmp_path))
    np.testing.assert_array_equal(stored, chosen)
    np.testing.assert_array_equal(stored_scale, scale7.reshape(-1))

    # the layer's own output error at 7 bits (1x1 Conv, float inputs): AdaRound's integers against nearest's
    def layer_error(w):
        error = np.einsum("oi,nihw->nohw", (w - weight).reshape(8, 16), x_test.astype(np.float64))
        return float(np.square(error).mean())

    error_chosen, error_nearest = layer_error(chosen * scale7), layer_error(nearest * scale7)
    assert error_chosen < 0.2 * error_nearest

    # through ORT's kernels: the correction survives placement (the model uncorrected: nearest 7-bit)
    reference = _fp32(source, x_test)
    _, plain_ctx, plain = _calibrated(tmp_path, source, x_cal, "onnxruntime", onnxruntime={"cpu": "avx2"})
    error_plain = np.square(_finished_outputs(spec, plain_ctx, plain, x_test, tmp_path) - reference).mean()
    error_rounded = np.square(_finished_outputs(spec, ctx, model, x_test, tmp_path) - reference).mean()
    assert error_rounded < 0.4 * error_plain
    # what rounding on modelopt's 8-bit grid left after placement rounded it again: most of the error
    eight = RoundWeights(settings=CorrectionSpec(**adaround)).run(_copy(plain), plain_ctx)
    assert eight.changed
    error_eight = np.square(_finished_outputs(spec, plain_ctx, eight.model, x_test, tmp_path) - reference).mean()
    assert error_eight > 0.5 * error_plain


def test_bias_correction_on_avx2_measures_the_7bit_weights_placement_stores(tmp_path):
    """Weights a little under half a 7-bit step above an integer: the 7-bit rounding that ships takes
    0.45 of a step off each, the 8-bit rounding modelopt's graph computes almost nothing on average.
    Measured on the 7-bit weights, the correction takes back the mean error the placed model has."""
    rng = np.random.default_rng(0)
    weight = (rng.integers(-30, 30, size=(8, 16, 3, 3)) + 0.45) * STEP7
    weight[:, 0, 0, 0] = 64 * STEP7
    source = _conv_model(tmp_path / "bias7.onnx", weight, bias=np.zeros(8))
    x_cal = rng.uniform(0, 1, size=(32, 16, 8, 8)).astype(np.float32)
    x_test = rng.uniform(0, 1, size=(16, 16, 8, 8)).astype(np.float32)
    spec, ctx, model = _calibrated(tmp_path, source, x_cal, "onnxruntime", onnxruntime={"cpu": "avx2"})
    reference = _fp32(source, x_test)
    before = _finished_outputs(spec, ctx, model, x_test, tmp_path) - reference

    corrected = CorrectBias(settings=CorrectionSpec(method="bias"), cpu=placement_cpu(spec)).run(_copy(model), ctx)
    assert corrected.changed
    after = _finished_outputs(spec, ctx, corrected.model, x_test, tmp_path) - reference
    mean_before, mean_after = before.mean(axis=(0, 2, 3)), after.mean(axis=(0, 2, 3))
    assert np.abs(mean_before).mean() > 0.2
    assert np.abs(mean_after).mean() < 0.05 * np.abs(mean_before).mean()
    assert np.square(after).mean() < 0.2 * np.square(before).mean()

    # the systematic error it reports is the placed model's (relative RMS over channels of the mean shift)
    [record] = ctx.facts["corrections"]
    [node] = record["nodes"]
    assert node["weight_bits"] == 7
    placed = float(np.sqrt(np.mean(np.square(mean_before))) / np.sqrt(np.mean(np.square(reference))))
    assert 0.8 < node["systematic_error_before"] / placed < 1.25
    assert node["systematic_error_after"] < 0.01 * node["systematic_error_before"]

    # measured on modelopt's 8-bit grid instead, it saw almost none of it and left the mean error in place
    eight = CorrectBias(settings=CorrectionSpec(method="bias")).run(_copy(model), ctx)
    mean_eight = (_finished_outputs(spec, ctx, eight.model, x_test, tmp_path) - reference).mean(axis=(0, 2, 3))
    assert np.abs(mean_eight).mean() > 0.5 * np.abs(mean_before).mean()
    assert ctx.facts["corrections"][-1]["nodes"][0]["systematic_error_before"] < 0.2 * node["systematic_error_before"]


def test_corrections_get_the_cpu_placement_stores_weights_for():
    """One CPU for placement and corrections, from the spec: 7-bit grids only for onnxruntime on avx2/avx512."""
    def spec(target, cpu="auto"):
        fields = {"onnxruntime": {"cpu": cpu}} if target == "onnxruntime" else {}
        return load_spec({"backend": "modelopt.onnx", "target": target, "device": "cpu",
                          "calibration": {"corrections": ["bias", "adaround"]}, **fields}).for_onnx_pipeline()

    for target, cpu, saturate in [("onnxruntime", "avx2", True), ("onnxruntime", "avx512", True),
                                  ("onnxruntime", "avx512_vnni", False), ("onnxruntime", "amx", False)]:
        compiled = spec(target, cpu)
        assert placement_cpu(compiled).isa == cpu and placement_cpu(compiled).pairs_saturate is saturate
        corrections = [p for p in calibrating_passes(compiled) if isinstance(p, (CorrectBias, RoundWeights))]
        assert [p.cpu for p in corrections] == [placement_cpu(compiled)] * 2
        placement = next(p for p in finishing_passes(compiled) if p.name == "place-for-onnxruntime")
        assert placement.cpu == placement_cpu(compiled)
    assert placement_cpu(spec("tensorrt")) is None
    assert [p.cpu for p in correction_passes(spec("tensorrt").calibration.corrections)] == [None, None]


def test_calibration_ranges_and_corrections_are_deterministic(tmp_path):
    """Two compiles' calibrating passes (modelopt, `algorithm: auto`, AdaRound, bias correction) on the
    same data give the same graph, byte for byte."""
    rng = np.random.default_rng(2)
    weight = (rng.integers(-60, 60, size=(8, 16, 3, 3)) + 0.49) * STEP
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "det.onnx", weight, bias=np.zeros(8))
    x = (rng.normal(size=(32, 1, 8, 8)) + 0.3 * rng.standard_t(3, size=(32, 16, 8, 8))).astype(np.float32)
    built = []
    for run in range(2):
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        spec, ctx, model = _calibrated(folder, source, x, "onnxruntime", algorithm="auto")
        model = RoundWeights(settings=CorrectionSpec(method="adaround", iterations=100)).run(model, ctx).model
        model = CorrectBias(settings=CorrectionSpec(method="bias")).run(model, ctx).model
        built.append((ir.to_proto(model).SerializeToString(), json.dumps(ctx.facts["range_choices"], sort_keys=True)))
    assert built[0] == built[1]


def test_auto_ranges_clip_an_outlier_and_keep_a_range_that_carries_signal(tmp_path):
    rng = np.random.default_rng(3)
    channels = 16
    weight = rng.normal(0, 0.2, size=(8, channels, 3, 3))
    source = _conv_model(tmp_path / "ranges.onnx", weight)
    x_cal = rng.uniform(-1, 1, size=(32, channels, 8, 8)).astype(np.float32)
    x_cal[5, 3, 4, 4] = 200.0  # one outlier in one calibration sample: max spends the int8 grid on it
    x_test = rng.uniform(-1, 1, size=(16, channels, 8, 8)).astype(np.float32)
    reference = _fp32(source, x_test)

    spec_max, ctx_max, model_max = _calibrated(tmp_path, source, x_cal, "onnxruntime")
    spec_auto, ctx_auto, model_auto = _calibrated(tmp_path, source, x_cal, "onnxruntime", algorithm="auto")
    error_max = np.square(_finished_outputs(spec_max, ctx_max, model_max, x_test, tmp_path) - reference).mean()
    error_auto = np.square(_finished_outputs(spec_auto, ctx_auto, model_auto, x_test, tmp_path) - reference).mean()
    choice = ctx_auto.facts["range_choices"]["x"]
    assert choice["method"] != "max" and choice["amax"] < 0.1 * choice["max"]
    assert choice["errors"][choice["method"]] < 0.3 * choice["errors"]["max"]  # scored on the uint8 grid placement gives it
    assert error_auto < 0.1 * error_max

    # Large values every sample has are the signal: clipping them costs at the Conv's output, so max stays.
    x_wide = rng.uniform(-1, 1, size=(32, channels, 8, 8)).astype(np.float32)
    x_wide[:, 3] *= 100
    spec, ctx, model = _calibrated(tmp_path, source, x_wide, "onnxruntime")
    result = ChooseRanges(force=True).run(model, ctx)
    choice = ctx.facts["range_choices"]["x"]
    assert choice["amax"] > 0.9 * choice["max"], choice
    assert result.stats["activation_ranges"] >= 1


def _rounding_case(tmp_path, min_cosine: float, steps: str):
    """The AdaRound layer as a whole model, with an accuracy target only corrected weights meet."""
    rng = np.random.default_rng(1)
    weight = (rng.integers(-60, 60, size=(8, 16, 1, 1)) + 0.49) * STEP
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "order.onnx", weight, bias=np.zeros(8))

    def signal(n):
        z = rng.normal(0, 1, size=(n, 1, 8, 8))
        return (z + 0.01 * rng.normal(size=(n, 16, 8, 8))).astype(np.float32)

    for name, count in (("calibration", 32), ("held", 32), ("test", 32)):
        np.savez(tmp_path / f"{name}.npz", x=signal(count))
    spec = tmp_path / "order.yaml"
    spec.write_text(f"quantize:\n  target: onnxruntime\n  onnxruntime: {{cpu: {EIGHT_BIT_CPU}}}\n"
                    "  calibration: {data: calibration.npz, batch_size: 8}\n"
                    "  compare: {data: test.npz}\n"
                    f"  accuracy: {{data: held.npz, metric: cosine, min: {min_cosine}, steps: {steps}}}\n")
    return source, spec


def test_fallback_runs_ranges_then_corrections_and_stops_where_the_target_is_met(tmp_path, capsys):
    from _compile_helpers import run_cli

    source, spec = _rounding_case(tmp_path, 0.9997, "[ranges, corrections, float]")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["compile", source, "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    accuracy = report["accuracy"]
    assert not accuracy["met_before_fallback"] and accuracy["reached"]
    steps = accuracy["steps"]
    assert [s["step"] for s in steps] == ["ranges", "corrections"]
    assert not steps[0]["met"] and steps[1]["met"]
    assert steps[1]["value"] >= 0.9997 > accuracy["quantized"]
    assert "search" not in accuracy  # float fallback never ran: every node stays INT8
    assert report["counts"]["quantized"] == report["counts"]["candidates"] == 1
    assert accuracy["final"]["met"]  # on the comparison data neither calibration nor the target saw
    assert "corrections" in (out / "report.html").read_text()


def test_a_step_that_changes_ranges_fits_the_calibration_corrections_again_on_them(tmp_path):
    """Corrections in calibration are fitted to max ranges; fallback's clip step then clips them. Where
    the clipped ranges alone miss the target, the corrections are fitted again on them, and the saved
    model is the very model that clipping in calibration itself (`algorithm: percentile`) and the
    same corrections give."""
    rng = np.random.default_rng(3)
    channels = 16
    weight = (rng.integers(-60, 60, size=(8, channels, 3, 3)) + 0.49) * STEP  # a mean error to take back
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "refit.onnx", weight, bias=rng.normal(0, 0.1, 8))

    def data(count, outlier=False):
        x = (rng.uniform(-1, 1, size=(count, channels, 8, 8)) + 0.3).astype(np.float32)
        if outlier:
            # One outlier, in a sample past the 16 bias correction measures on: max spends the int8
            # grid on it, clipping does not.
            x[20, 3, 4, 4] = 200.0
        return x

    np.savez(tmp_path / "cal.npz", x=data(32, outlier=True))
    np.savez(tmp_path / "held.npz", x=data(32))
    np.savez(tmp_path / "test.npz", x=data(16))
    saved = {}
    for name, settings in (("clipped-in-calibration", {"algorithm": "percentile", "accuracy": {"fallback": "off"}}),
                           ("clipped-by-fallback", {"accuracy": {"data": str(tmp_path / "held.npz"), "metric": "cosine",
                                                                 "min": 0.995, "steps": ["clip"]}})):
        # The data's own bounds in both (the grid choice is not what this compares).
        spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": EIGHT_BIT_CPU, "activation_ranges": "asymmetric"},
                             "compare": {"data": str(tmp_path / "test.npz")},
                             "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 8, "corrections": ["bias"]},
                             **settings}}
        result = compile_model(source, spec, results_dir=tmp_path / name)
        saved[name] = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(result.model_path)).graph.initializer}
        if name == "clipped-by-fallback":
            (step,) = result.report["accuracy"]["steps"]
            assert step["step"] == "clip" and step["met"] and step["corrections_refitted"] == ["bias"]
            assert step["before"] < 0.95 and step["value"] >= 0.995 > step["without_corrections"]
            assert [c["method"] for c in result.report["corrections"]] == ["bias"]  # the refit only, not the stale one
            assert step["chosen"] == "ranges clipped at the 99.9th percentile"  # as algorithm: percentile's
            assert f"<td>clip: {step['chosen']} (then bias fitted again)</td>" in (result.results_dir / "report.html").read_text()
    first, second = saved.values()
    assert sorted(first) == sorted(second)
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_calibration_corrections_that_cost_accuracy_are_said_with_the_figure(tmp_path):
    """Bias correction takes back the mean error it measures on the calibration data. Where the data
    the model is judged on has another mean, that correction adds error instead, and the model misses
    its target: the report then says what the metric was without the corrections the user asked for."""
    rng = np.random.default_rng(4)
    weight = (rng.integers(-60, 60, size=(8, 16, 1, 1)) + 0.49) * STEP  # every weight rounds down by 0.49 steps
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "shifted.onnx", weight, bias=np.zeros(8))
    np.savez(tmp_path / "cal.npz", x=rng.normal(0.5, 1, size=(32, 16, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "held.npz", x=rng.normal(-0.5, 1, size=(32, 16, 8, 8)).astype(np.float32))
    spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": EIGHT_BIT_CPU},
                         "compare": {"data": str(tmp_path / "held.npz")},
                         "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 8, "corrections": ["bias"]},
                         "accuracy": {"data": str(tmp_path / "held.npz"), "metric": "cosine", "min": 0.999999,
                                      "fallback": "off"}}}
    report = compile_model(source, spec, results_dir=tmp_path / "out", raise_on_mismatch=False).report
    accuracy = report["accuracy"]
    assert accuracy["without_calibration_corrections"] > accuracy["quantized"]
    (warning,) = [w for w in report["warnings"] if w.startswith("calibration.corrections")]
    assert warning.startswith(f"calibration.corrections (bias) lowered cosine on quantize.accuracy.data from "
                              f"{accuracy['without_calibration_corrections']:.5g} to {accuracy['quantized']:.5g}")


def test_a_step_drops_calibration_corrections_that_measure_worse_on_its_new_ranges(tmp_path):
    """The bias correction of the test above, with an outlier in the calibration data so that the clip
    step runs. Where the clipped ranges alone meet the target, the correction is not fitted again;
    where they do not, it is, and it still measures worse on the data the model is judged on. Either
    way the step goes on without it, and the report says why."""
    rng = np.random.default_rng(4)
    weight = (rng.integers(-60, 60, size=(8, 16, 1, 1)) + 0.49) * STEP
    weight[:, 0, 0, 0] = 127 * STEP
    source = _conv_model(tmp_path / "dropped.onnx", weight, bias=np.zeros(8))
    calibration = rng.normal(0.5, 1, size=(32, 16, 8, 8)).astype(np.float32)
    calibration[5, 3, 4, 4] = 200.0
    np.savez(tmp_path / "cal.npz", x=calibration)
    np.savez(tmp_path / "held.npz", x=rng.normal(-0.5, 1, size=(32, 16, 8, 8)).astype(np.float32))
    for target, said in ((0.9995, "accuracy step clip met the target without bias (cosine "),
                         (0.99999, "accuracy step clip: bias lowered cosine from ")):
        spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": EIGHT_BIT_CPU},
                             "compare": {"data": str(tmp_path / "held.npz")},
                             "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 8, "corrections": ["bias"]},
                             "accuracy": {"data": str(tmp_path / "held.npz"), "metric": "cosine", "min": target,
                                          "steps": ["clip"]}}}
        result = compile_model(source, spec, results_dir=tmp_path / f"out-{target}", raise_on_mismatch=False)
        (step,) = result.report["accuracy"]["steps"]
        assert step["corrections_dropped"] == ["bias"] and "corrections_refitted" not in step
        assert step["value"] == step["without_corrections"] and step["met"] == (target == 0.9995)
        # Met on the new ranges alone: never fitted; missed: fitted, and measured worse with them.
        assert ("with_corrections" in step) == (not step["met"])
        assert step.get("with_corrections", -1.0) < step["without_corrections"]
        assert not result.report.get("corrections")  # the saved model carries none
        saved = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(result.model_path)).graph.initializer}
        assert not saved["b_quantized"].any()  # the model's own zero bias, uncorrected
        assert any(w.startswith(said) for w in result.report["warnings"])
        assert f"<td>clip: {step['chosen']} (without bias: " in (result.results_dir / "report.html").read_text()
