"""`quantize.float_dtype`: what everything not quantized is stored in, on real models.

auto is fp16 for target tensorrt (wherever quantization runs: TensorRT builds the graph strongly
typed, so its float layers run in the graph's types) and fp32 for target onnxruntime. The compile
still ends with a comparison on ONNX Runtime's CPU provider, which runs the fp16 graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits
from tao_qc.driver import compile_model
from tao_qc.passes.check_calibration import HELD_BACK_FRACTION
from tao_qc.errors import SpecError
from tao_qc.spec import load_spec

FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def test_auto_follows_the_target_and_explicit_values_stand():
    assert load_spec({}).resolved_float_dtype == "fp16"  # target tensorrt is the default
    assert load_spec({"target": "onnxruntime"}).resolved_float_dtype == "fp32"
    assert load_spec({"target": "tensorrt", "float_dtype": "fp32"}).resolved_float_dtype == "fp32"
    assert load_spec({"float_dtype": "fp16"}).normalized()["float_dtype"] == "fp16"
    assert load_spec({}).normalized()["float_dtype"] == "auto"


def test_bad_float_dtypes_are_one_line_spec_errors(tmp_path):
    with pytest.raises(SpecError, match=r"quantize.float_dtype: 'bf16' is not supported \(valid: auto, fp32, fp16\)"):
        load_spec({"float_dtype": "bf16"})
    spec = tmp_path / "q.yaml"
    spec.write_text("quantize:\n  target: onnxruntime\n  float_dtype: fp16\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value).startswith(f"{spec}:3:16: quantize.float_dtype: 'fp16' is not supported with target onnxruntime")
    assert "valid: auto, fp32" in str(info.value) and "\n" not in str(info.value)


def _float_types(model: onnx.ModelProto) -> tuple[set[int], set[int]]:
    """Element types of the float initializers, and of the float tensors inside the graph (not its
    inputs and outputs), after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    outer = {v.name for v in list(model.graph.input) + list(model.graph.output)}
    inner = {v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.name not in outer}
    stored = {init.data_type for init in model.graph.initializer}
    return stored & FLOATS, inner & FLOATS


def _io_types(model: onnx.ModelProto) -> set[int]:
    return {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


@pytest.mark.slow
def test_tensorrt_target_stores_the_float_part_in_fp16_and_still_compares(tmp_path, shared_models):
    spec = {"quantize": {"device": "cpu", "skip_names": ["*headers*"],
                         "calibration": {"data": str(shared_models / "ultraface_rfb320"), "size": [240, 320],
                                         "mean": [127.0], "std": [128.0], "max_samples": 4}}}
    result = compile_model(shared_models / "ultraface_rfb320.onnx", spec, results_dir=tmp_path / "out")
    model = onnx.load(str(result.model_path))
    stored, inner = _float_types(model)
    assert stored == {TensorProto.FLOAT16} and inner == {TensorProto.FLOAT16}
    assert _io_types(model) == {TensorProto.FLOAT}  # the same feeds and outputs as the FP32 model
    report = result.report
    assert report["float_dtype"] == "fp16" and report["modelopt"]["high_precision_dtype"] == "fp16"
    assert report["spec"]["float_dtype"] == "auto" and report["spec"]["target"] == "tensorrt"
    # The comparison ran, on ONNX Runtime's CPU provider, over the fp16 graph.
    comparison = report["comparison"]
    assert comparison["runtime"] == "onnxruntime" and comparison["num_samples"] == 4
    assert comparison["passed"], comparison["failures"]
    assert {o["name"] for o in comparison["outputs"]} == {o.name for o in model.graph.output}
    _onnxruntime_runs_the_fp16_graph_as_written(result.model_path, shared_models)


def _onnxruntime_runs_the_fp16_graph_as_written(path, shared_models):
    """The engine the comparison used computes what the graph says: as close to ORT with no graph
    optimizations (and ONNX's rounding) as its other fusions allow, far closer than ORT's defaults, whose bias quantization
    rounds input_scale * weight_scale to fp16 subnormals (see tao_qc/runtimes/onnxruntime.py)."""
    import onnxruntime as ort

    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.runtimes.base import RuntimeSettings
    from tao_qc.runtimes.onnxruntime import OnnxRuntime, has_low_precision_qdq_scales, with_exact_fp16_quantize
    from tao_qc.spec import CalibrationSpec

    assert has_low_precision_qdq_scales(onnx.load(str(path)))
    assert not has_low_precision_qdq_scales(onnx.load(str(shared_models / "ultraface_rfb320.onnx")))

    def session(model, level):
        options = ort.SessionOptions()
        options.graph_optimization_level, options.intra_op_num_threads, options.log_severity_level = level, 1, 3
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    # As written: no graph optimizations, and fp16 QuantizeLinear rounding as ONNX defines it (ORT's
    # CPU kernel truncates; see tao_qc/runtimes/onnxruntime.py).
    exact = with_exact_fp16_quantize(onnx.load(str(path))).SerializeToString()
    as_written = session(exact, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    defaults = session(str(path), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    engine = OnnxRuntime().build(path, RuntimeSettings(threads=1, device="cpu"))
    batches = open_inputs(str(shared_models / "ultraface_rfb320"), model_inputs(onnx.load(str(path))), max_samples=4,
                          calibration=CalibrationSpec(size=[240, 320], mean=[127.0], std=[128.0]))
    ours, theirs = [], []
    for feeds in batches:
        expected = as_written.run(["scores"], feeds)[0]
        ours.append(float(np.abs(engine.run(feeds)["scores"] - expected).max()))
        theirs.append(float(np.abs(defaults.run(["scores"], feeds)[0] - expected).max()))
    # ORT's integer fusions requantize between layers where the graph as written does not: measured
    # 0.07-0.18 on a score here, against 0.5-0.93 with ORT's defaults.
    assert max(ours) < 0.2 and max(theirs) > 3 * max(ours), (ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("target, float_dtype", [("onnxruntime", "auto"), ("tensorrt", "fp32")])
def test_fp32_float_part_where_the_target_or_the_spec_says_so(tmp_path, target, float_dtype):
    data = tmp_path / "digits.npz"
    np.savez(data, **{MNIST_INPUT: digits()[0][:32]})
    spec = {"quantize": {"device": "cpu", "target": target, "float_dtype": float_dtype,
                         "calibration": {"data": str(data), "max_samples": 32},
                         # The comparison must run; whether INT8 passes it is not this test's subject.
                         "compare": {"fail_on_mismatch": False}}}
    result = compile_model(MNIST_CNTK, spec, results_dir=tmp_path / "out")
    model = onnx.load(str(result.model_path))
    stored, inner = _float_types(model)
    assert stored == {TensorProto.FLOAT} and inner == {TensorProto.FLOAT}
    assert not any(node.op_type == "Cast" for node in model.graph.node)
    assert result.report["float_dtype"] == "fp32"
    assert result.report["comparison"]["num_samples"] == round(32 * HELD_BACK_FRACTION)  # held back from calibration


def test_target_changed_on_the_command_line_is_checked_too(tmp_path, capsys):
    from _compile_helpers import run_cli

    data = tmp_path / "digits.npz"
    np.savez(data, **{MNIST_INPUT: digits()[0][:8]})
    spec = tmp_path / "q.yaml"
    spec.write_text(f"quantize:\n  device: cpu\n  float_dtype: fp16\n  calibration: {{data: {data}}}\n")
    code, _, err = run_cli(["compile", MNIST_CNTK, "--spec", spec, "--target", "onnxruntime",
                            "-o", tmp_path / "out"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tao-qc: error: {spec}: quantize.float_dtype: 'fp16' is not supported with target onnxruntime")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.failed").exists()
