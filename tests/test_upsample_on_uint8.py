"""upsample-on-uint8: a feature pyramid's nearest upsampling and Add run on uint8, the values unchanged."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import compile_zoo_for_onnxruntime, optimized_ops
from tao_qc.passes.upsample_on_uint8 import UpsampleOnUint8


def resize_graph(coordinates: str, rounding: str, factors: tuple[int, int], *, by_sizes: bool = False,
                 size: tuple[int, int] = (5, 7), channels: int = 6, dynamic_size: bool = False) -> ir.Model:
    """input [N, C, H, W] (dynamic batch) -> Q(u8) -> DQ -> Resize(nearest) -> Q (same parameters) -> DQ:
    a uint8 upsampling as place-for-onnxruntime leaves it."""
    height, width = size
    tensors = {"scale": np.array(0.02, np.float32), "zero": np.array(128, np.uint8), "roi": np.zeros(0, np.float32)}
    if by_sizes:
        tensors["scales"] = np.zeros(0, np.float32)
        tensors["sizes"] = np.array([1, channels, factors[0] * height, factors[1] * width], np.int64)
        resize_inputs = ["xd", "roi", "scales", "sizes"]
    else:
        tensors["scales"] = np.array([1, 1, *factors], np.float32)
        resize_inputs = ["xd", "roi", "scales"]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["xq"], name="input_q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="input_dq"),
        helper.make_node("Resize", resize_inputs, ["up"], name="upsample", mode="nearest",
                         coordinate_transformation_mode=coordinates, nearest_mode=rounding),
        helper.make_node("QuantizeLinear", ["up", "scale", "zero"], ["uq"], name="up_q"),
        helper.make_node("DequantizeLinear", ["uq", "scale", "zero"], ["output"], name="up_dq"),
    ]
    graph = helper.make_graph(nodes, "upsample",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             ["batch", channels, *(("h", "w") if dynamic_size else (height, width))])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("coordinates,rounding", [
    ("asymmetric", "floor"),  # PyTorch's nearest interpolate
    ("half_pixel", "round_prefer_floor"),  # ONNX's defaults
    ("half_pixel", "round_prefer_ceil"),
    ("pytorch_half_pixel", "round_prefer_floor"),
])
@pytest.mark.parametrize("factors", [(2, 2), (3, 2), (1, 4)])
def test_repeat_gives_orts_resize_values(coordinates, rounding, factors):
    model = resize_graph(coordinates, rounding, factors)
    x = np.random.default_rng(0).uniform(-2.5, 2.5, (3, 6, 5, 7)).astype(np.float32)
    before = run(model, x)
    result = UpsampleOnUint8().run(model, None)
    assert result.stats["resizes_as_repeat"] == 1
    ops = Counter(n.op_type for n in result.model.graph)
    assert ops["Resize"] == 0 and ops["Expand"] == 1 and ops["QuantizeLinear"] == 1  # the Q after it is gone
    np.testing.assert_array_equal(run(result.model, x), before)


def test_heights_and_widths_may_be_dynamic():
    """PP-OCRv5's detector takes pages of any size: the repeat's output shape comes from its input's."""
    model = resize_graph("asymmetric", "floor", (2, 2), dynamic_size=True)
    assert_rewritten_with_the_same_values(model, [(1, 6, 5, 7), (2, 6, 8, 3)], np.random.default_rng(3),
                                          "resizes_as_repeat", "Resize")


def assert_rewritten_with_the_same_values(model: ir.Model, shapes: list[tuple], rng, counter: str, op: str) -> None:
    """The pass rewrites every `op` (its stats' `counter` says 1) and ORT gives the same values for
    inputs of each shape."""
    pages = [rng.uniform(-2.5, 2.5, shape).astype(np.float32) for shape in shapes]
    before = [run(model, x) for x in pages]  # the pass rewrites the model in place
    result = UpsampleOnUint8().run(model, None)
    assert result.stats[counter] == 1
    assert Counter(n.op_type for n in result.model.graph)[op] == 0
    for x, want in zip(pages, before):
        np.testing.assert_array_equal(run(result.model, x), want)


def test_output_sizes_count_as_factors():
    model = resize_graph("asymmetric", "floor", (2, 3), by_sizes=True)
    x = np.random.default_rng(1).uniform(-2.5, 2.5, (1, 6, 5, 7)).astype(np.float32)
    before = run(model, x)
    result = UpsampleOnUint8().run(model, None)
    assert result.stats["resizes_as_repeat"] == 1
    np.testing.assert_array_equal(run(result.model, x), before)


@pytest.mark.parametrize("coordinates,rounding,factors", [
    ("asymmetric", "round_prefer_ceil", (2, 2)),  # output pixel 1 reads input pixel 1: not a repeat
    ("align_corners", "round_prefer_floor", (2, 2)),
    ("asymmetric", "floor", (1, 1)),  # no upsampling
])
def test_resizes_that_are_not_repeats_stay(coordinates, rounding, factors):
    model = resize_graph(coordinates, rounding, factors)
    result = UpsampleOnUint8().run(model, None)
    assert not result.changed
    assert Counter(n.op_type for n in result.model.graph)["Resize"] == 1



def depth_to_space_graph(mode: str, block: int, channels: int) -> ir.Model:
    """input [N, C, H, W] (all dynamic but C) -> Q(u8) -> DepthToSpace -> DQ: a pixel shuffle as
    move-on-uint8 leaves it (transposed-conv-as-conv's upsampling)."""
    tensors = {"scale": np.array(0.02, np.float32), "zero": np.array(128, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["xq"], name="input_q"),
        helper.make_node("DepthToSpace", ["xq"], ["shuffled"], name="shuffle", blocksize=block, mode=mode),
        helper.make_node("DequantizeLinear", ["shuffled", "scale", "zero"], ["output"], name="output_dq"),
    ]
    graph = helper.make_graph(nodes, "shuffle",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return ir.from_proto(proto)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("block,channels", [(2, 12), (3, 18), (2, 4)])
def test_depth_to_space_channels_last_gives_orts_values(mode, block, channels):
    assert_rewritten_with_the_same_values(depth_to_space_graph(mode, block, channels), [(1, channels, 5, 7), (2, channels, 3, 8)],
                                          np.random.default_rng(block), "depth_to_space_channels_last", "DepthToSpace")


def test_a_float_depth_to_space_stays():
    proto = ir.to_proto(depth_to_space_graph("DCR", 2, 12))
    del proto.graph.node[0]  # DepthToSpace reads the float input itself
    proto.graph.node[0].input[0] = "input"
    result = UpsampleOnUint8().run(ir.from_proto(proto), None)
    assert result.stats["depth_to_space_channels_last"] == 0


@pytest.fixture(scope="module")
def feature_pyramid(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("feature_pyramid")
    fp32, result, rng = compile_zoo_for_onnxruntime("feature_pyramid", folder,
                                                    onnxruntime={"speed": "off", "kernel_fidelity": False})
    return {"fp32": fp32, "result": result, "folder": folder,
            "held_out": rng.standard_normal((8, 3, 64, 64)).astype(np.float32)}


def test_feature_pyramid_runs_on_uint8_from_stem_to_heads(feature_pyramid):
    """YuNet's shape: ReLU'd stage outputs read by a MaxPool and a top-down Add, coarser maps
    upsampled into the Adds. Each ReLU goes into its Conv's uint8 output, the MaxPools and the
    upsampling run on it, and the Adds run as QLinearAdd: ORT runs nothing of the pyramid in float."""
    ops = optimized_ops(feature_pyramid["result"].model_path, feature_pyramid["folder"])
    assert ops["QLinearAdd"] == 2 and ops["NhwcMaxPool"] == 2 and ops["Expand"] == 2
    for float_op in ("Add", "Relu", "MaxPool", "Resize", "Conv"):
        assert ops[float_op] == 0, f"{float_op} left in float: {ops}"
    assert ops["QuantizeLinear"] == 1  # the input's


def test_feature_pyramid_outputs_follow_fp32(feature_pyramid):
    x = feature_pyramid["held_out"]
    fp32 = ort.InferenceSession(str(feature_pyramid["fp32"]), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(feature_pyramid["result"].model_path), providers=["CPUExecutionProvider"])
    for want, got in zip(fp32.run(None, {"input": x}), int8.run(None, {"input": x})):
        want, got = want.ravel().astype(np.float64), got.ravel().astype(np.float64)
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99


def test_feature_pyramid_kernels_match_the_graphs_arithmetic(feature_pyramid):
    """ORT's fused kernels (the repeat, the QLinearAdds) compute what the saved Q/DQ graph says, to
    rounding: their error against the graph's own arithmetic is below that arithmetic's error
    against FP32 (the kernel-fidelity check's rule)."""
    x = feature_pyramid["held_out"]
    path = str(feature_pyramid["result"].model_path)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    fused = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    graph = ort.InferenceSession(path, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    fp32 = ort.InferenceSession(str(feature_pyramid["fp32"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    for kernels, arithmetic, reference in zip(fused, graph, fp32):
        assert np.linalg.norm(kernels - arithmetic) < np.linalg.norm(arithmetic - reference)


def test_feature_pyramid_report_names_the_rewrites(feature_pyramid):
    records = {r.name: r for r in feature_pyramid["result"].records}
    assert records["upsample-on-uint8"].stats == {"resized_outputs_quantized": 2, "resizes_as_repeat": 2,
                                                  "depth_to_space_channels_last": 0}
    assert any("reads it on uint8" in note for note in records["place-for-onnxruntime"].notes)
