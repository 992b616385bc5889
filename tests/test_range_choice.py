"""The range choice a default run makes even where its checks pass (issue 34): max ranges spent on one
outlier of the calibration data pass a proxy check while costing what ranges clipped at the
percentile keep, so a default compile measures the clipped ranges too and keeps the better model."""

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
    if algorithm == "percentile":  # the user chose clipped ranges: nothing more is tried
        assert accuracy["clipping"] is None and not accuracy["steps"]
        return
    clipping = accuracy["clipping"]
    assert clipping["while_met"] and clipping["kept"] and clipping["met"]
    (step,) = accuracy["steps"]
    assert step["step"] == "clip" and step["value"] > step["before"]
    # The saved model's input grid is the clipped one: the outlier no longer sets its step.
    assert _input_step(result.model_path) < 0.2 * 20.0 / 255
    html = (result.results_dir / "report.html").read_text()
    assert "tried though the target was met" in html
