"""fit-ort-integer-kernels: integer units ONNX Runtime 1.24 would compute wrongly (17-31 columns in
its integer GEMM) or slowly (Convs whose input channels are not a multiple of 4) are reshaped; the
rewritten graph gives the exact integer result in every run, at any thread count, where the original
gives wrong integers, differently from run to run."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import digits
from tao_qc.spec.cpu import this_machine
from tao_qc.passes.fit_ort_integer_kernels import FitOrtIntegerKernels

# Weights as large as this CPU's integer kernels compute exactly: 127, or 64 where ORT's uint8 x int8
# kernels add weight pairs in saturating int16 (AVX2 and AVX-512 without VNNI; tao_qc/spec/cpu.py).
EXACT_WEIGHT = this_machine().weight_magnitude

SESSIONS = 10
RUNS_PER_SESSION = 5


def conv_unit(cin: int, cout: int, kernel: int, group: int = 1, size: int = 12, seed: int = 0) -> ir.Model:
    """input -> Q(u8) -> DQ -> Conv(int8 per-channel weights, int32 bias) -> Q(u8) -> DQ: the unit
    place-for-onnxruntime leaves for ORT's QLinearConv."""
    rng = np.random.default_rng(seed)
    w_scale = rng.uniform(0.001, 0.01, cout).astype(np.float32)
    x_scale = np.float32(4.0 / 255)
    tensors = {
        "x_scale": np.array(x_scale), "x_zero": np.array(128, np.uint8), "y_scale": np.array(0.05, np.float32),
        "y_zero": np.array(128, np.uint8), "w": rng.integers(-EXACT_WEIGHT, EXACT_WEIGHT + 1, (cout, cin // group, kernel, kernel)).astype(np.int8),
        "w_scale": w_scale, "w_zero": np.zeros(cout, np.int8),
        "b": rng.integers(-2000, 2000, cout).astype(np.int32), "b_scale": (w_scale * x_scale).astype(np.float32),
        "b_zero": np.zeros(cout, np.int32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"], name="input_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="input_dq"),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bd"], name="b_dq", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="conv", kernel_shape=[kernel, kernel],
                         pads=[kernel // 2] * 4, group=group),
        helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"], name="conv_q"),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["output"], name="conv_dq"),
    ]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, cin, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def options(threads: int, optimized_path: str | None = None) -> ort.SessionOptions:
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    if optimized_path:
        settings.optimized_model_filepath = optimized_path
    return settings


def outputs_over_sessions(proto: bytes, feeds: dict[str, np.ndarray], threads: int = 2) -> list[np.ndarray]:
    """Every output of SESSIONS fresh sessions, RUNS_PER_SESSION runs each."""
    results = []
    for _ in range(SESSIONS):
        session = ort.InferenceSession(proto, options(threads), providers=["CPUExecutionProvider"])
        results += [np.concatenate(session.run(None, feeds), axis=None) for _ in range(RUNS_PER_SESSION)]
    return results


def requantize(sums: np.ndarray, x_scale, w_scale: np.ndarray, y_scale, axis: int) -> np.ndarray:
    """int32 sums to uint8 as ORT's MlasRequantizeOutput does it: one float32 scale per output
    channel (x_scale * w_scale / y_scale), a float32 product, round half to even, zero point 128."""
    scale = (np.float32(x_scale) * w_scale.astype(np.float32) / np.float32(y_scale)).astype(np.float32)
    shape = [1] * sums.ndim
    shape[axis] = -1
    return np.clip(np.rint(sums.astype(np.float32) * scale.reshape(shape)) + 128, 0, 255)


def exact(model: ir.Model, x: np.ndarray) -> np.ndarray:
    """The Conv unit's output computed in integers (float64 holds these sums exactly), requantized
    the way ORT does it: what every run must give."""
    import torch

    tensors = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    conv = next(n for n in model.graph if n.op_type == "Conv")
    group, pad = conv.attributes.get_int("group", 1), conv.attributes.get_ints("pads")[0]
    xq = np.clip(np.rint(x / tensors["x_scale"]) + 128, 0, 255) - 128
    sums = torch.nn.functional.conv2d(torch.tensor(xq, dtype=torch.float64), torch.tensor(tensors["w"], dtype=torch.float64),
                                      padding=pad, groups=group).numpy() + tensors["b"].reshape(1, -1, 1, 1)
    yq = requantize(sums, tensors["x_scale"], tensors["w_scale"], tensors["y_scale"], axis=1) - 128
    return (yq * tensors["y_scale"]).astype(np.float32).ravel()


def one_thread(proto: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(proto, options(1), providers=["CPUExecutionProvider"])
    return np.concatenate(session.run(None, feeds), axis=None)


@pytest.mark.parametrize("cin,cout,kernel", [
    (10, 20, 5),  # cnn_mnist_pytorch's conv2: wrong in ORT 1.24 as it is
    (3, 24, 3), (6, 28, 1), (3, 84, 3),  # wrong as they are (outputs modulo 32 in 17-31)
    (3, 16, 3), (18, 40, 3),  # right as they are, faster padded
    (10, 50, 3), (16, 113, 1),  # wrong, and output channels not a multiple of 4: padded too, then sliced
])
def test_padded_conv_gives_the_exact_integers_in_every_run_on_this_cpu(cin, cout, kernel, tmp_path):
    model = conv_unit(cin, cout, kernel)
    feeds = {"input": np.random.default_rng(1).uniform(-2, 2, (2, cin, 12, 12)).astype(np.float32)}
    expected = exact(model, feeds["input"])

    result = FitOrtIntegerKernels().run(model, None)
    assert result.stats == {"convs_padded": 1, "grouped_convs_split": 0, "matmuls_widened": 0}
    if cin % 4:
        assert any(f"padded {cin} -> {cin + (-cin) % 4}" in note for note in result.notes)
    if cout % 4:
        assert any(f"computed as {cout + (-cout) % 4} and sliced back to {cout}" in note for note in result.notes)
    proto = ir.to_proto(result.model).SerializeToString()
    for got in outputs_over_sessions(proto, feeds):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # float rounding of the final dequantize only
    # Still one integer Conv for ORT, now over a multiple of 4 channels.
    path = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto, options(2, path), providers=["CPUExecutionProvider"])
    optimized = onnx.load(path)
    ops = Counter(n.op_type for n in optimized.graph.node)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0
    weights = {t.name: t for t in optimized.graph.initializer}
    conv = next(n for n in optimized.graph.node if n.op_type == "QLinearConv")
    assert weights[conv.input[3]].dims[1] % 4 == 0 and weights[conv.input[3]].dims[0] % 4 == 0


@pytest.mark.skipif(this_machine().isa != "amx", reason="the 17-31-column problem is in MLAS's AMX U8S8 kernel; "
                    f"this CPU runs {this_machine().isa} kernels")
def test_the_problem_it_avoids_is_real_in_this_onnxruntime_on_this_cpu():
    # Without the pass, 10 -> 20 channels (cnn_mnist_pytorch's conv2): wrong integers even on one thread.
    # (On two threads they also differ from run to run, but only where both threads really run at once:
    # with the suite's two workers on two cores that race need not show, so it is not asserted.)
    model = conv_unit(10, 20, 5)
    feeds = {"input": np.random.default_rng(1).uniform(-2, 2, (2, 10, 12, 12)).astype(np.float32)}
    proto = ir.to_proto(model).SerializeToString()
    wrong = np.abs(one_thread(proto, feeds) - exact(model, feeds["input"])) > 1e-6
    assert wrong.any(), "ORT's QLinearConv QGEMM problem did not show: is ONNX Runtime newer than 1.24?"


@pytest.mark.parametrize("cin,cout,kernel", [(10, 10, 5), (1, 10, 5), (12, 20, 3), (16, 16, 3), (10, 35, 3)])
def test_convs_the_gemm_computes_right_or_already_direct_are_left_alone(cin, cout, kernel):
    # Fewer than 16 outputs: no direct kernel and a right GEMM; multiples of 4: already direct;
    # 35 outputs: a right GEMM (35 % 32 = 3), and padding its outputs would cost a Slice.
    result = FitOrtIntegerKernels().run(conv_unit(cin, cout, kernel), None)
    assert not result.changed and not any(result.stats.values())


@pytest.mark.parametrize("cin,cout,group", [(12, 40, 2), (12, 60, 3), (6, 48, 2), (16, 104, 2)])
def test_grouped_conv_with_17_to_31_outputs_per_group_runs_as_one_conv_per_group_exactly_on_this_cpu(cin, cout, group, tmp_path):
    model = conv_unit(cin, cout, 3, group=group)
    feeds = {"input": np.random.default_rng(2).uniform(-2, 2, (2, cin, 12, 12)).astype(np.float32)}
    expected = exact(model, feeds["input"])
    result = FitOrtIntegerKernels().run(model, None)
    assert result.stats["grouped_convs_split"] == 1 and result.stats["matmuls_widened"] == 0
    proto = ir.to_proto(result.model).SerializeToString()
    for got in outputs_over_sessions(proto, feeds):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    path = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto, options(2, path), providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["QLinearConv"] == group and ops["Conv"] == 0


def gemm_unit(features: int, rows: int = 64, depth: int = 40, op: str = "Gemm", quantized_output: bool = True,
              seed: int = 0) -> ir.Model:
    """input [rows, depth] -> Q(u8) -> DQ -> Gemm (int8 per-channel weights [features, depth], int32
    bias) or MatMul (weights [depth, features]) -> [Q(u8) -> DQ]."""
    rng = np.random.default_rng(seed)
    w_scale = rng.uniform(0.001, 0.01, features).astype(np.float32)
    x_scale = np.float32(4.0 / 255)
    weights = rng.integers(-EXACT_WEIGHT, EXACT_WEIGHT + 1, (features, depth)).astype(np.int8)
    tensors = {"x_scale": np.array(x_scale), "x_zero": np.array(128, np.uint8), "y_scale": np.array(0.05, np.float32),
               "y_zero": np.array(128, np.uint8), "w_scale": w_scale, "w_zero": np.zeros(features, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"], name="input_q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="input_dq")]
    if op == "Gemm":
        tensors.update(w=weights, b=rng.integers(-2000, 2000, features).astype(np.int32),
                       b_scale=(w_scale * x_scale).astype(np.float32), b_zero=np.zeros(features, np.int32))
        nodes += [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=0),
                  helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["bd"], name="b_dq", axis=0),
                  helper.make_node("Gemm", ["xd", "wd", "bd"], ["y"], name="fc", transB=1)]
    else:
        tensors.update(w=np.ascontiguousarray(weights.T))
        nodes += [helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], name="w_dq", axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"], name="fc")]
    if quantized_output:
        nodes += [helper.make_node("QuantizeLinear", ["y", "y_scale", "y_zero"], ["yq"], name="fc_q"),
                  helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["output"], name="fc_dq")]
    else:
        nodes.append(helper.make_node("Relu", ["y"], ["output"], name="relu"))
    graph = helper.make_graph(nodes, "fc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [rows, depth])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def exact_gemm(model: ir.Model, x: np.ndarray, quantized_output: bool = True) -> np.ndarray:
    tensors = {name: value.const_value.numpy() for name, value in model.graph.initializers.items()}
    weights = tensors["w"] if "b" in tensors else tensors["w"].T
    xq = np.clip(np.rint(x / tensors["x_scale"]) + 128, 0, 255) - 128
    sums = xq.astype(np.float64) @ weights.T.astype(np.float64) + tensors.get("b", 0)
    if not quantized_output:
        real = sums * (tensors["x_scale"].astype(np.float64) * tensors["w_scale"])
        return np.maximum(real, 0).astype(np.float32).ravel()
    yq = requantize(sums, tensors["x_scale"], tensors["w_scale"], tensors["y_scale"], axis=1) - 128
    return (yq * tensors["y_scale"]).astype(np.float32).ravel()


@pytest.mark.parametrize("op,features,quantized_output", [
    ("Gemm", 20, True), ("MatMul", 24, True), ("MatMul", 31, False), ("Gemm", 52, True), ("Gemm", 500, True)])
def test_gemm_and_matmul_features_are_computed_on_a_multiple_of_16_exactly_on_this_cpu(op, features, quantized_output):
    model = gemm_unit(features, op=op, quantized_output=quantized_output)
    feeds = {"input": np.random.default_rng(3).uniform(-2, 2, (64, 40)).astype(np.float32)}
    expected = exact_gemm(model, feeds["input"], quantized_output)
    original = one_thread(ir.to_proto(model).SerializeToString(), feeds)
    tolerance = 1e-6 if quantized_output else 1e-4
    if this_machine().isa == "amx":  # ORT 1.24's AMX kernel is wrong here (32+ rows, columns % 32 in 17-31)
        assert np.abs(original - expected).max() > 1.0
    else:  # other kernels compute the original right; the rewrite must keep it so
        np.testing.assert_allclose(original, expected, rtol=tolerance, atol=tolerance)
    result = FitOrtIntegerKernels().run(model, None)
    assert result.stats == {"convs_padded": 0, "grouped_convs_split": 0, "matmuls_widened": 1}
    proto = ir.to_proto(result.model).SerializeToString()
    for got in outputs_over_sessions(proto, feeds):
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


@pytest.fixture(scope="module")
def mnist_int8(tmp_path_factory, shared_models):
    from tao_qc.driver import compile_model

    folder = tmp_path_factory.mktemp("mnist_race")
    images, _ = digits()
    np.savez(folder / "calib.npz", **{"0": images[:48] / 255.0})
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "onnxruntime": {"cpu": this_machine().isa},  # run by this machine's kernels below
                         "calibration": {"data": str(folder / "calib.npz"), "max_samples": 48}}}
    return compile_model(shared_models / "cnn_mnist_pytorch.onnx", spec, results_dir=folder / "out", compare=False)


def test_compiled_mnist_int8_gives_identical_outputs_across_sessions_with_two_threads_on_this_cpu(mnist_int8):
    # cnn_mnist_pytorch's conv2 (10 -> 20 channels) is the shape ORT 1.24 computes differently run to run.
    images, _ = digits()
    proto = onnx.load(str(mnist_int8.model_path)).SerializeToString()
    batch = (images[300:301] / 255.0).astype(np.float32)
    expected = one_thread(proto, {"0": batch})
    for got in outputs_over_sessions(proto, {"0": batch}):
        np.testing.assert_array_equal(got, expected)
    record = next(r for r in mnist_int8.report["passes"] if r["pass"] == "fit-ort-integer-kernels")
    assert record["stats"]["convs_padded"] == 1
