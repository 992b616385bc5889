"""The range choice a default run makes even where its checks pass (issue 34): max ranges spent on one
outlier of the calibration data pass a proxy check while costing what ranges clipped at the
percentile keep, and grids over the calibration data's own bounds cost where unseen data goes past
them, so a default compile measures clipped ranges and symmetric grids too and keeps the better model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tao_qc.driver import compile_model

pytestmark = pytest.mark.slow  # compiles


def _conv(path, rng):
    weight = rng.normal(0, 0.2, size=(8, 16, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _data(rng, count, outlier=None):
    x = (rng.uniform(-1, 1, size=(count, 16, 8, 8)) + 0.3).astype(np.float32)
    if outlier is not None:
        x[3, 5, 2, 2] = outlier
    return x


def _input_step(path) -> float:
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return float(values[q.input[1]])


@pytest.mark.parametrize("algorithm", ["minmax", "percentile"])
def test_a_default_run_keeps_clipped_ranges_where_they_measure_better_though_max_ranges_pass(tmp_path, algorithm):
    rng = np.random.default_rng(0)
    source = _conv(tmp_path / "conv.onnx", rng)
    np.savez(tmp_path / "cal.npz", x=_data(rng, 32, outlier=20.0))
    np.savez(tmp_path / "test.npz", x=_data(rng, 16))
    spec = {"quantize": {"target": "onnxruntime", "algorithm": algorithm, "onnxruntime": {"cpu": "avx512_vnni"},
                         "calibration": {"data": str(tmp_path / "cal.npz")}, "compare": {"data": str(tmp_path / "test.npz")}}}
    result = compile_model(source, spec, results_dir=tmp_path / "out")
    accuracy = result.report["accuracy"]
    assert accuracy["met_before_fallback"] and accuracy["reached"] and result.report["comparison"]["passed"]
    if algorithm == "percentile":  # the user chose clipped ranges: only the other grids are measured
        assert list(accuracy["clipping"]["tried"]) == ["calibrated ranges, symmetric grids"]
        return
    clipping = accuracy["clipping"]
    assert clipping["while_met"] and clipping["kept"] and clipping["met"]
    (step,) = accuracy["steps"]
    assert step["step"] == "clip" and step["value"] > step["before"]
    # The saved model's input grid is the clipped one: the outlier no longer sets its step.
    assert _input_step(result.model_path) < 0.2 * 20.0 / 255
    html = (result.results_dir / "report.html").read_text()
    assert "tried though the target was met" in html


def _shifted_data(rng, count, low):
    return rng.uniform(low, 1, size=(count, 16, 8, 8)).astype(np.float32)


def _input_zero_point(path) -> int:
    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    return int(values[q.input[2]])


@pytest.mark.parametrize("unseen_low", [-1.0, -0.1])
def test_a_default_run_keeps_symmetric_grids_where_unseen_data_goes_past_the_calibration_datas_bounds(tmp_path, unseen_low):
    """Calibrated on images in [0, 1], compared on data that goes below 0: the asymmetric grid over [0, 1]
    turns every negative input into 0, the symmetric one keeps them. -1: the default checks fail on the
    data's own bounds and the clip step's choices meet them; -0.1: they pass either way, and the default
    run still keeps the grids that measure better."""
    rng = np.random.default_rng(1)
    source = _conv(tmp_path / "conv.onnx", rng)
    np.savez(tmp_path / "cal.npz", x=_shifted_data(rng, 32, 0.0))
    np.savez(tmp_path / "test.npz", x=_shifted_data(rng, 16, unseen_low))
    spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": "avx512_vnni"},
                         "calibration": {"data": str(tmp_path / "cal.npz")}, "compare": {"data": str(tmp_path / "test.npz")}}}
    result = compile_model(source, spec, results_dir=tmp_path / "auto")
    accuracy = result.report["accuracy"]
    assert accuracy["reached"] and result.report["comparison"]["passed"]
    assert accuracy["met_before_fallback"] == (unseen_low > -0.5)
    clipping = accuracy["clipping"]
    # Symmetric for the whole model, or for the input alone where the accuracy data says so.
    assert clipping["kept"] and clipping["grids"] in ("symmetric", "per tensor"), clipping
    assert set(clipping["tried"]) >= {"calibrated ranges, symmetric grids"}
    assert _input_zero_point(result.model_path) == 128
    html = (result.results_dir / "report.html").read_text()
    assert f"Best: {clipping['chosen']}" in html

    # Asked for by name, the data's bounds stay: zero point 0, and no symmetric grid is measured.
    spec["quantize"]["onnxruntime"]["activation_ranges"] = "asymmetric"
    fixed = compile_model(source, spec, results_dir=tmp_path / "asymmetric", raise_on_mismatch=False)
    assert _input_zero_point(fixed.model_path) == 0
    tried = (fixed.report["accuracy"]["clipping"] or {}).get("tried") or {}
    assert not any("symmetric" in label for label in tried)


def _conv_relu_conv(path, rng):
    w1 = rng.normal(0, 0.3, size=(8, 16, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, size=(8, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])], "conv-relu-conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(8, np.float32), "b2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_each_grid_is_chosen_on_held_out_data_by_where_its_values_fall(tmp_path):
    """Calibrated on inputs in [0, 1], then meeting inputs in [-1, 1]: on the input's tight grid every
    negative value lands on 0, so the input goes symmetric; the Relu's output stays within [0, max] and
    keeps the grid over its bounds, with half the step. The calibration data could not tell: its
    values lie within its own bounds."""
    from tao_qc.passes import calibrating_passes
    from tao_qc.passes.choose_grids import ChooseGrids, squared_error
    from tao_qc.pipeline import PassContext, Pipeline
    from tao_qc.spec import load_spec

    rng = np.random.default_rng(2)
    source = _conv_relu_conv(tmp_path / "crc.onnx", rng)
    calibration = _shifted_data(rng, 32, 0.0)
    np.savez(tmp_path / "cal.npz", x=calibration)
    spec = load_spec({"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                      "onnxruntime": {"cpu": "avx512_vnni"},
                      "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 8}}).for_onnx_pipeline()
    ctx = PassContext(spec=spec, work_dir=tmp_path, source_path=source)
    model = Pipeline(calibrating_passes(spec, source_path=source)).run(None, ctx).model
    bounds = dict(ctx.facts["activation_bounds"])
    assert {"x", "r"} <= set(bounds)

    ChooseGrids([{"x": calibration}]).run(model, ctx)  # the calibration data itself: nothing goes symmetric
    assert ctx.facts["grids_chosen"]["symmetric"] == [] and ctx.facts["activation_bounds"] == bounds

    ChooseGrids([{"x": _shifted_data(rng, 8, -1.0)}, {"x": _shifted_data(rng, 8, -1.0)}]).run(model, ctx)
    chosen = ctx.facts["grids_chosen"]
    assert "x" in chosen["symmetric"] and "r" not in chosen["symmetric"]
    assert chosen["measured"] == len(bounds)
    assert "x" not in ctx.facts["activation_bounds"] and ctx.facts["activation_bounds"]["r"] == bounds["r"]

    # The error it weighs: values past the grid's end land on it, values within round to a step.
    values = np.array([-1.0, -0.1, 0.0, 0.26, 2.0], np.float32)
    assert squared_error(values, 0.1, 0) == pytest.approx(1.0 + 0.01 + 0 + 0.0016 + 0, rel=1e-5)
    assert squared_error(values, 0.1, 128) == pytest.approx(0.0016, rel=1e-5)  # float32 inputs
