"""space-to-depth-stem: a few-channel strided integer Conv run over pixels folded along the width, bit for bit the same."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tao_qc.driver import compile_model
from tao_qc.spec.cpu import this_machine
from tao_qc.passes.space_to_depth_stem import SpaceToDepthStem

# Weights as large as this CPU's integer kernels compute exactly: 127, or 64 where ORT's uint8 x int8
# kernels add weight pairs in saturating int16 (AVX2 and AVX-512 without VNNI; tao_qc/spec/cpu.py).
EXACT_WEIGHT = this_machine().weight_magnitude


def stem_graph(channels: int, size: tuple[int, int], kernel: tuple[int, int], pads: list[int], stride: int = 2,
               seed: int = 0) -> ir.Model:
    """input -> Q(u8) -> DQ -> Conv(int8 per-channel weights, int32 bias) -> Q(u8) -> DQ: the unit
    place-for-onnxruntime leaves for ORT's QLinearConv."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(-EXACT_WEIGHT, EXACT_WEIGHT + 1, (16, channels, *kernel)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, 16).astype(np.float32)
    x_scale = np.float32(4.0 / 255)
    tensors = {
        "x_scale": np.array(x_scale), "x_zero": np.array(128, np.uint8), "y_scale": np.array(0.05, np.float32),
        "y_zero": np.array(0, np.uint8), "w": weights, "w_scale": w_scale, "w_zero": np.zeros(16, np.int8),
        "b": rng.integers(-2000, 2000, 16).astype(np.int32), "b_scale": (w_scale * x_scale).astype(np.float32),
        "b_zero": np.zeros(16, np.int32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"], name="input_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="input_dq"),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bd"], name="b_dq", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="stem", kernel_shape=list(kernel), pads=pads,
                         strides=[stride, stride]),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"], name="stem_q"),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["output"], name="stem_dq"),
    ]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, channels, *size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def session(model: ir.Model, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: ir.Model, x: np.ndarray, options: ort.SessionOptions | None = None) -> np.ndarray:
    return session(model, options).run(None, {"input": x})[0]


@pytest.mark.parametrize("kernel,pads,size", [
    ((7, 7), [3, 3, 3, 3], (32, 32)),  # ResNet's stem
    ((7, 7), [3, 3, 3, 3], (30, 16)),  # odd number of output rows
    ((5, 5), [2, 2, 2, 2], (16, 16)),
    ((7, 5), [3, 2, 2, 1], (20, 24)),  # uneven pads, rectangular kernel
    ((7, 7), [0, 0, 0, 1], (32, 32)),  # no padding on the left
    ((3, 3), [1, 1, 1, 1], (32, 32)),  # MobileNet's stem
])
def test_folded_stem_gives_the_same_integers_on_this_cpu(kernel, pads, size):
    model = stem_graph(3, size, kernel, pads)
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, *size)).astype(np.float32)
    before = run(model, x)
    result = SpaceToDepthStem().run(model, None)
    assert result.changed and result.stats == {"stems_rewritten": 1}
    ops = Counter(n.op_type for n in result.model.graph)
    assert ops["Conv"] == 1 and ops["Transpose"] == 4 and ops["Reshape"] == 3  # no arithmetic added
    stem = next(n for n in result.model.graph if n.op_type == "Conv")
    assert list(stem.attributes.get_ints("strides")) == [2, 1]
    assert stem.attributes.get_ints("kernel_shape")[0] == kernel[0]
    assert stem.inputs[1].producer().inputs[0].const_value.shape[:2] == (32, 12)  # both output columns, 4 pixels x 3
    np.testing.assert_array_equal(run(result.model, x), before)


@pytest.mark.parametrize("why,channels,size,kernel,stride", [
    ("stride 1", 3, (32, 32), (7, 7), 1),
    ("width not a multiple of 4", 3, (32, 30), (7, 7), 2),
    ("1x1 kernel (not measured)", 3, (32, 32), (1, 1), 2),
    ("many channels", 8, (32, 32), (7, 7), 2),
])
def test_other_convs_are_left_alone(why, channels, size, kernel, stride):
    model = stem_graph(channels, size, kernel, [k // 2 for k in kernel] * 2, stride=stride)
    result = SpaceToDepthStem().run(model, None)
    assert not result.changed and result.stats == {"stems_rewritten": 0}, why


def test_odd_output_width_is_left_alone():
    model = stem_graph(3, (32, 32), (7, 7), [0, 0, 0, 0])  # 13 output columns: no pairs to fold
    assert not SpaceToDepthStem().run(model, None).changed


@pytest.mark.slow  # compiles a model
def test_resnet_stem_through_the_pipeline_is_exact_and_fused_on_this_cpu(tmp_path):
    import torch

    from tao_qc.testing import zoo

    torch.manual_seed(0)
    model = zoo.export_onnx(zoo.ResNet18(num_classes=10, width=8).eval(), torch.randn(1, 3, 32, 32), tmp_path / "r.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "onnxruntime": {"cpu": this_machine().isa},
                         "calibration": {"data": str(tmp_path / "calib.npz")}}}
    result = compile_model(model, spec, results_dir=tmp_path / "out", dump="after-all", compare=False)
    record = next(r for r in result.records if r.name == "space-to-depth-stem")
    assert record.stats == {"stems_rewritten": 1} and "/conv1/Conv" in record.notes[0]
    placed = next(result.dump_dir.glob("*-place-for-onnxruntime.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
               for path in (placed, result.model_path)]
    # The same integers, up to one step of the logits where the 5-D fold's QLinearConv and the 7x7 one
    # round a value at a tie differently (measured with grids over the data's bounds: 1 of 10 logits).
    final = onnx.load(str(result.model_path))
    logits_dq = next(n for n in final.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
                     {o.name for o in final.graph.output})
    step = float(next(numpy_helper.to_array(t) for t in final.graph.initializer if t.name == logits_dq.input[1]))
    assert np.abs(outputs[1] - outputs[0]).max() <= step * 1.001 and np.mean(outputs[1] == outputs[0]) >= 0.8
    # The speed depends on ORT cancelling the channels-first/last Transposes against its own: what
    # it runs is the integer kernels plus the one 5-D fold Transpose, in place of the NCHW -> NHWC
    # Transpose of the input it would insert anyway, and the output's NHWC -> NCHW.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(result.model_path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath).graph.node
    ops = Counter(n.op_type for n in optimized)
    assert ops["QLinearConv"] == 20 and ops["Conv"] == 0 and ops["Transpose"] == 2
    ranks = sorted(len(next(a.ints for a in n.attribute if a.name == "perm")) for n in optimized if n.op_type == "Transpose")
    assert ranks == [4, 5]


def test_verification_accepts_layout_ops_between_q_and_dq_but_not_arithmetic():
    from tao_qc.passes.verify_quantization import orphan_qdq

    folded = SpaceToDepthStem().run(stem_graph(3, (32, 32), (7, 7), [3, 3, 3, 3]), None).model
    assert orphan_qdq(folded) == []  # Q -> Transpose/Reshape -> DQ on both sides of the stem

    # The same chain with a Relu in it changes the integers: no longer a Q/DQ pair.
    graph = folded.graph
    reshape = next(n for n in graph if n.op_type == "Reshape" and n.name.endswith("_fold_width_runs"))
    relu = ir.Node("", "Relu", [reshape.outputs[0]], name="in_between")
    graph.insert_after(reshape, relu)
    for use in list(reshape.outputs[0].uses()):
        if use.node is not relu:
            use.node.replace_input_with(use.idx, relu.outputs[0])
    problems = orphan_qdq(folded)
    assert any(p.startswith("input_q: QuantizeLinear feeds ['Relu']") for p in problems), problems
    assert any("DequantizeLinear reads Relu" in p for p in problems), problems


def test_folded_graph_means_the_same_without_ort_optimizations():
    # ONNX semantics, not ORT's layout optimizer, make the rewrite right: run literally (every
    # Transpose and Reshape executed, the Conv in float on dequantized values), it gives the same
    # result up to the float Conv's summation order (at most one quantization step).
    model = stem_graph(3, (32, 32), (7, 7), [3, 3, 3, 3])
    x = np.random.default_rng(2).uniform(-2, 2, (2, 3, 32, 32)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    before = run(model, x, options)
    after = run(SpaceToDepthStem().run(model, None).model, x, options)
    assert np.abs(after - before).max() <= 0.05 + 1e-6  # y_scale
    assert (after == before).mean() > 0.99


def test_an_input_other_nodes_read_too_stays_for_them():
    model = stem_graph(3, (32, 32), (7, 7), [3, 3, 3, 3])
    graph = model.graph
    input_dq = next(n for n in graph if n.name == "input_dq")
    pool = ir.Node("", "GlobalAveragePool", [input_dq.outputs[0]], name="side")
    pool.outputs[0].name = "side_output"
    graph.append(pool)
    graph.outputs.append(pool.outputs[0])
    x = np.random.default_rng(1).uniform(-2, 2, (2, 3, 32, 32)).astype(np.float32)
    before = session(model).run(None, {"input": x})
    result = SpaceToDepthStem().run(model, None)
    assert result.changed and "input_dq" in {n.name for n in result.model.graph}
    for a, b in zip(session(result.model).run(None, {"input": x}), before):
        np.testing.assert_array_equal(a, b)
