"""move-on-uint8: Concats, channel shuffles and average pools of a ShuffleNet detector run on uint8."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import compile_zoo_for_onnxruntime, optimized_ops
from tao_qc.passes import move_on_uint8
from tao_qc.passes.move_on_uint8 import MoveOnUint8


def _model(nodes: list, tensors: dict, inputs: list, outputs: list[str]) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def shuffle_graph() -> ir.Model:
    """input [1, 8, 6, 6] -> Q(u8) -> DQ -> MaxPool -> a ShuffleNet channel shuffle (Reshape,
    Transpose, Reshape, Gather of each half) -> Squeeze... : float value-moving ops on a quantized tensor."""
    tensors = {"scale": np.array(0.03, np.float32), "zero": np.array(0, np.uint8),
               "pairs": np.array([4, 2, 9], np.int64), "halves": np.array([2, 1, 4, 3, 3], np.int64),
               "first": np.array(0, np.int64), "second": np.array(1, np.int64), "axis0": np.array([0], np.int64)}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["x"], name="dq"),
        helper.make_node("MaxPool", ["x"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pooled", "pairs"], ["r1"], name="pairs"),
        helper.make_node("Transpose", ["r1"], ["t"], name="swap", perm=[1, 0, 2]),
        helper.make_node("Reshape", ["t", "halves"], ["r2"], name="halves"),
        helper.make_node("Gather", ["r2", "first"], ["a"], name="take_first", axis=0),
        helper.make_node("Gather", ["r2", "second"], ["b3"], name="take_second", axis=0),
        helper.make_node("Unsqueeze", ["b3", "axis0"], ["b4"], name="unsqueeze"),
        helper.make_node("Squeeze", ["b4", "axis0"], ["b"], name="squeeze"),
    ]
    return _model(nodes, tensors, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 6, 6])], ["a", "b"])


def run(model: ir.Model, x: np.ndarray, optimize: bool = True) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def test_value_moving_ops_move_the_integers_and_give_the_same_values():
    model = shuffle_graph()
    x = np.random.default_rng(0).uniform(-1, 8, (1, 8, 6, 6)).astype(np.float32)
    before = run(model, x)
    result = MoveOnUint8().run(model, None)
    # The pool, the shuffle's Reshape, Transpose, Reshape, the Gather of the second half and the
    # Unsqueeze; the ops whose outputs are the graph's (float) outputs stay behind the DequantizeLinear.
    assert result.stats["ops_moved_onto_uint8"] == 6
    ops = {n.name: n for n in result.model.graph}
    for name in ("pool", "pairs", "swap", "halves", "take_second", "unsqueeze"):
        assert ops[name].inputs[0].producer().op_type != "DequantizeLinear", f"{name} still reads floats"
    for name in ("take_first", "squeeze"):
        assert ops[name].inputs[0].producer().op_type == "DequantizeLinear"
    for got, want in zip(run(result.model, x), before):
        np.testing.assert_array_equal(got, want)


def requantize_graph(out_scale: float, out_zero: int) -> ir.Model:
    tensors = {"s1": np.array(0.02, np.float32), "z1": np.array(0, np.uint8),
               "s2": np.array(out_scale, np.float32), "z2": np.array(out_zero, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s1", "z1"], ["xq"], name="q1"),
        helper.make_node("DequantizeLinear", ["xq", "s1", "z1"], ["x"], name="dq1"),
        helper.make_node("QuantizeLinear", ["x", "s2", "z2"], ["yq"], name="q2"),
        helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["output"], name="dq2"),
    ]
    return _model(nodes, tensors, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])], ["output"])


def test_a_requantization_to_the_same_grid_goes_and_to_another_runs_on_uint8(tmp_path):
    x = np.random.default_rng(1).uniform(0, 5, (1, 4, 8, 8)).astype(np.float32)
    same = MoveOnUint8().run(requantize_graph(0.02, 0), None)
    assert same.stats["dq_q_pairs_dropped"] == 1
    assert Counter(n.op_type for n in same.model.graph) == {"QuantizeLinear": 1, "DequantizeLinear": 1}

    model = requantize_graph(0.035, 3)
    before = run(model, x, optimize=False)[0]
    other = MoveOnUint8().run(model, None)
    assert other.stats["requantized_on_uint8"] == 1
    path = tmp_path / "requantize.onnx"
    onnx.save(ir.to_proto(other.model), path)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "requantize.ort.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)["QLinearConcat"] == 1
    # ORT's integer requantization against the float DQ -> Q: at most one output step apart.
    assert np.abs(session.run(None, {"input": x})[0] - before).max() <= 0.035 + 1e-6



def requantized_conv_graph(bias: np.ndarray | None = None) -> ir.Model:
    """A ReLU'd tensor on its uint8 grid (s1, zero point 0), requantized to the grid modelopt measured
    for the next Conv's input (s2, zero point 128), read by that Conv with an int32 bias."""
    rng = np.random.default_rng(4)
    weights = rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    w_scale = rng.uniform(0.002, 0.004, 6).astype(np.float32)
    s2 = np.float32(0.031)
    tensors = {"s1": np.array(0.02, np.float32), "z1": np.array(0, np.uint8), "s2": np.array(s2, np.float32),
               "z2": np.array(128, np.uint8), "w": weights, "w_scale": w_scale, "w_zero": np.zeros(6, np.int8),
               "b": rng.integers(-2000, 2000, 6).astype(np.int32) if bias is None else bias,
               "b_scale": (w_scale * s2).astype(np.float32),
               "b_zero": np.zeros(6, np.int32)}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s1", "z1"], ["xq"], name="q1"),
        helper.make_node("DequantizeLinear", ["xq", "s1", "z1"], ["x"], name="dq1"),
        helper.make_node("QuantizeLinear", ["x", "s2", "z2"], ["yq"], name="q2"),
        helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["y"], name="dq2"),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bd"], name="b_dq", axis=0),
        helper.make_node("Conv", ["y", "wd", "bd"], ["output"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, tensors, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])], ["output"])


def test_a_conv_reads_a_requantized_tensor_on_the_grid_it_lies_on(tmp_path):
    """Requantizing values already on a uint8 grid only rounds them again: the Conv takes the
    integers as they are, its bias rescaled to the new input scale, and lands closer to the Conv of
    the values themselves."""
    x = np.random.default_rng(5).uniform(0, 5, (1, 4, 8, 8)).astype(np.float32)
    model = requantized_conv_graph()
    before = run(model, x, optimize=False)[0]
    constants = {t.name: numpy_helper.to_array(t) for t in ir.to_proto(model).graph.initializer}
    on_grid = np.clip(np.rint(x / 0.02), 0, 255) * np.float32(0.02)  # what dq1 gives the Conv without q2
    weights = constants["w"].astype(np.float32) * constants["w_scale"].reshape(-1, 1, 1, 1)
    bias = constants["b"] * constants["b_scale"]
    exact = reference_conv(on_grid, weights, bias)
    result = MoveOnUint8().run(model, None)
    assert result.stats["grids_adopted"] == 1 and result.stats["requantized_on_uint8"] == 0
    assert Counter(n.op_type for n in result.model.graph)["QuantizeLinear"] == 1
    path = tmp_path / "adopted.onnx"
    onnx.save(ir.to_proto(result.model), path)
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    graph = run(result.model, x, optimize=False)[0]
    # The graph's arithmetic is the Conv of the on-grid values, but for the bias's new rounding.
    assert np.abs(graph - exact).max() < 1e-3
    assert np.abs(graph - exact).max() < np.abs(before - exact).max() / 10
    assert np.abs(fused - graph).max() < 1e-3  # ORT's QLinearConv computes it as written
    assert "QLinearConcat" not in optimized_ops(path, tmp_path)



def test_a_bias_the_finer_grid_would_overflow_keeps_the_requantization():
    # 2e9 steps of 0.031 * w_scale are 3.1e9 steps of 0.02 * w_scale: past int32.
    result = MoveOnUint8().run(requantized_conv_graph(np.full(6, 2_000_000_000, np.int32)), None)
    assert result.stats["grids_adopted"] == 0 and result.stats["requantized_on_uint8"] == 1

def reference_conv(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 3x3, pad-1 Conv in float64 (the reference the quantized graphs are held to)."""
    padded = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((weights.shape[0], x.shape[2], x.shape[3]))
    for i in range(3):
        for j in range(3):
            window = padded[:, i:i + x.shape[2], j:j + x.shape[3]]
            out += np.einsum("oc,chw->ohw", weights[:, :, i, j].astype(np.float64), window)
    return (out + bias.reshape(-1, 1, 1))[None]

def concat_graph(first_scale: float, second_scale: float) -> ir.Model:
    """Two ReLU'd tensors on their own uint8 grids, joined, then shuffled by a Transpose."""
    tensors = {"s1": np.array(first_scale, np.float32), "s2": np.array(second_scale, np.float32),
               "zero": np.array(0, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s1", "zero"], ["aq"], name="qa"),
        helper.make_node("DequantizeLinear", ["aq", "s1", "zero"], ["a"], name="dqa"),
        helper.make_node("QuantizeLinear", ["input", "s2", "zero"], ["bq"], name="qb"),
        helper.make_node("DequantizeLinear", ["bq", "s2", "zero"], ["b"], name="dqb"),
        helper.make_node("Concat", ["a", "b"], ["joined"], name="join", axis=1),
        helper.make_node("Transpose", ["joined"], ["t"], name="shuffle", perm=[0, 1, 3, 2]),
        helper.make_node("QuantizeLinear", ["t", "s2", "zero"], ["tq"], name="qt"),
        helper.make_node("DequantizeLinear", ["tq", "s2", "zero"], ["output"], name="dqt"),
    ]
    return _model(nodes, tensors, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 5, 5])], ["output"])


def test_a_concat_takes_its_coarsest_inputs_grid_unless_that_coarsens_another_past_2x():
    x = np.random.default_rng(2).uniform(0, 2, (1, 4, 5, 5)).astype(np.float32)
    close = concat_graph(0.010, 0.015)
    before = run(close, x, optimize=False)[0]
    result = MoveOnUint8().run(close, None)
    assert result.stats["outputs_quantized"] == 1
    join_q = next(n for n in result.model.graph if n.op_type == "QuantizeLinear" and n.name.startswith("join"))
    assert float(join_q.inputs[1].const_value.numpy()) == pytest.approx(0.015)
    # The finer input rounds to the coarser grid: at most half of its step more error.
    assert np.abs(run(result.model, x, optimize=False)[0] - before).max() <= 0.015 / 2 + 0.015 + 1e-6
    far = MoveOnUint8().run(concat_graph(0.010, 0.030), None)
    assert far.stats["outputs_quantized"] == 0
    assert any("stays float" in note and "3.0x" in note for note in far.notes)


@pytest.fixture(scope="module")
def shuffle_detector(tmp_path_factory) -> dict:
    """The zoo's ShuffleNet detector (seeded random weights, whose branches' ranges differ more than
    a trained network's do), compiled with no limit on how much a Concat may coarsen an input, so
    that every block is joined on uint8."""
    folder = tmp_path_factory.mktemp("shuffle_detector")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(move_on_uint8, "MAX_COARSENING", float("inf"))
        fp32, result, rng = compile_zoo_for_onnxruntime("shuffle_detector", folder, dynamic_batch=False,
                                                        onnxruntime={"speed": "off", "kernel_fidelity": False})
    return {"fp32": fp32, "result": result, "folder": folder,
            "held_out": [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(6)]}


def test_shuffle_detector_runs_on_uint8_from_input_to_output(shuffle_detector):
    """FastestDet's shape: each block's Concat, its channel shuffle, the neck's average pool,
    upsampling and Concat all run on uint8; the only float steps are quantizing the input and
    dequantizing the output."""
    ops = optimized_ops(shuffle_detector["result"].model_path, shuffle_detector["folder"])
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    assert ops["QLinearConcat"] >= 5 and ops["QLinearAveragePool"] == 1
    for float_op in ("Concat", "Relu", "AveragePool", "Resize", "Conv", "MaxPool"):
        assert ops[float_op] == 0, f"{float_op} left in float: {ops}"
    notes = {r.name: r for r in shuffle_detector["result"].records}["move-on-uint8"].notes
    assert any("QLinearConcat" in note for note in notes) and any("QLinearAveragePool" in note for note in notes)


def test_shuffle_detector_follows_fp32_and_its_kernels_follow_the_graph(shuffle_detector):
    path = str(shuffle_detector["result"].model_path)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
                for p, o in ((str(shuffle_detector["fp32"]), None), (path, None), (path, plain))]
    for x in shuffle_detector["held_out"]:
        reference, kernels, arithmetic = (s.run(None, {"input": x})[0].ravel().astype(np.float64) for s in sessions)
        assert kernels @ reference / (np.linalg.norm(kernels) * np.linalg.norm(reference)) > 0.99
        # ORT's fused kernels against the saved graph's own arithmetic: below its error against FP32.
        assert np.linalg.norm(kernels - arithmetic) < np.linalg.norm(arithmetic - reference)
