"""place-for-onnxruntime on real graphs: what ONNX Runtime fuses, what the numbers say, what is left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import _compile_helpers as compile_helpers
from _compile_helpers import CNN_MNIST_PYTORCH, MNIST_CNTK, optimized_ops
from _compile_helpers import digits as all_digits
from tao_qc.testing import zoo
from tao_qc.driver import compile_model

INTEGER_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "MatMulInteger", "ConvInteger"}


def digits(count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` labelled digits from `offset`, in [0, 1] as the MNIST models here take them."""
    images, labels = all_digits()
    return images[offset : offset + count] / 255.0, labels[offset : offset + count]


def run(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """Outputs per sample, on one ORT thread, through ORT's fused integer kernels."""
    session = compile_helpers.session(path)
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def worst_relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Per sample, |candidate - reference| over the spread of the reference's outputs around their
    mean (both as norms); the worst sample. A cosine over whole outputs lets random nets pass with
    errors a hundred times too large: their outputs share a large common part the quantization
    keeps, and every sample is pooled into one vector."""
    reference = reference.reshape(len(reference), -1).astype(np.float64)
    candidate = candidate.reshape(len(candidate), -1).astype(np.float64)
    spread = np.linalg.norm(reference - reference.mean(axis=1, keepdims=True), axis=1)
    return float((np.linalg.norm(candidate - reference, axis=1) / spread).max())


def compile_for(model: Path, data: Path, target: str, out: Path):
    # fp32 float part for both targets: modelopt's own (tensorrt) placement is compared with ours
    # and fed to place-for-onnxruntime, which works on fp32 graphs.
    spec = {"quantize": {"backend": "modelopt.onnx", "target": target, "device": "cpu", "float_dtype": "fp32",
                         "calibration": {"data": str(data), "max_samples": 48}}}
    return compile_model(model, spec, results_dir=out, compare=False)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    calib, _ = digits(48)
    np.savez(folder / "calib.npz", **{"0": calib})
    model = CNN_MNIST_PYTORCH
    return {"fp32": model, "ort": compile_for(model, folder / "calib.npz", "onnxruntime", folder / "ort")}


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small_cnn")
    zoo.export_zoo("small_cnn", folder / "m.onnx")
    np.savez(folder / "calib.npz", input=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return {target: compile_for(folder / "m.onnx", folder / "calib.npz", target, folder / target)
            for target in ("onnxruntime", "tensorrt")}


def test_onnxruntime_fuses_every_compute_node_into_integer_kernels(mnist, small_cnn, tmp_path):
    ops = optimized_ops(mnist["ort"].model_path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 2
    assert ops["Conv"] == 0 and ops["Gemm"] == 0
    ops = optimized_ops(small_cnn["onnxruntime"].model_path, tmp_path)
    assert ops["QLinearConv"] == 4 and ops["QLinearAdd"] == 1 and ops["Conv"] == 0
    # modelopt's own placement of the same model leaves float kernels between Q/DQ steps
    trt_ops = optimized_ops(small_cnn["tensorrt"].model_path, tmp_path)
    assert not (INTEGER_OPS & set(trt_ops))
    assert trt_ops["Conv"] + trt_ops["FusedConv"] == 4  # float kernels (FusedConv: Conv + Relu)


def test_weights_int8_initializers_and_activations_uint8(mnist):
    model = onnx.load(mnist["ort"].model_path)
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights_int8 = activations_uint8 = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        assert weight_dq.input[0] in initializers  # stored int8, no QuantizeLinear at run time
        weights_int8 += initializers[weight_dq.input[0]].data_type == onnx.TensorProto.INT8
        activation_dq = producers[node.input[0]]
        activations_uint8 += initializers[activation_dq.input[2]].data_type == onnx.TensorProto.UINT8
        if len(node.input) > 2:
            bias_dq = producers[node.input[2]]
            assert initializers[bias_dq.input[0]].data_type == onnx.TensorProto.INT32
    assert weights_int8 == 4 and activations_uint8 == 4
    used = {name for node in model.graph.node for name in node.input}
    assert not [i.name for i in model.graph.initializer if i.name not in used]  # replaced float weights/biases are gone
    assert [p["pass"] for p in mnist["ort"].report["passes"]][-13:] == [
        "quantize-modelopt", "measure-activation-bounds", "clip-ranges", "keep-float", "assign-dtypes", "place-for-onnxruntime", "integer-elementwise", "move-on-uint8", "upsample-on-uint8",
        "tabulate-activation-chains", "space-to-depth-stem", "fit-ort-integer-kernels", "verify-quantization"]


def test_tensorrt_target_keeps_modelopts_placement(small_cnn):
    model = onnx.load(small_cnn["tensorrt"].model_path)
    names = [p["pass"] for p in small_cnn["tensorrt"].report["passes"]]
    assert "place-for-onnxruntime" not in names
    zero_points = {i.data_type for i in model.graph.initializer if i.name.endswith("zero_point")}
    assert zero_points == {onnx.TensorProto.INT8}
    assert any(n.op_type == "QuantizeLinear" and n.input[0].endswith("weight") for n in model.graph.node)


def test_agreement_with_fp32_on_real_digits(mnist):
    x, labels = digits(400, offset=600)
    reference = run(mnist["fp32"], "0", x)
    # what ORT computes with its integer kernels (its 10 -> 20 Conv reshaped by fit-ort-integer-kernels)
    placed = run(mnist["ort"].model_path, "0", x)
    agreement = (reference.argmax(1) == placed.argmax(1)).mean()
    assert agreement >= 0.99
    assert (placed.argmax(1) == labels).mean() >= (reference.argmax(1) == labels).mean() - 0.01


@pytest.mark.slow  # compiles a model
def test_old_ir_model_with_matmul(tmp_path):
    calib, _ = digits(32)
    np.savez(tmp_path / "calib.npz", Input3=calib)
    result = compile_for(MNIST_CNTK, tmp_path / "calib.npz", "onnxruntime", tmp_path / "out")
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0
    # a 2-D MatMul before a bias Add keeps its output Q (ORT would fuse MatMul + Add into a float Gemm first)
    assert ops["QLinearMatMul"] == 1 and ops["MatMul"] + ops["Gemm"] == 0
    x, _ = digits(300, offset=900)
    agreement = (run(MNIST_CNTK, "Input3", x).argmax(1) == run(result.model_path, "Input3", x).argmax(1)).mean()
    assert agreement >= 0.99


@pytest.mark.slow  # compiles a model
def test_relu_before_maxpool_is_absorbed_with_a_derived_range(tmp_path):
    torch.manual_seed(0)
    model = zoo.ResNet18(num_classes=10, width=8).eval()
    zoo.export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "r.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = compile_for(tmp_path / "r.onnx", tmp_path / "calib.npz", "onnxruntime", tmp_path / "out")
    placement = next(p for p in result.report["passes"] if p["pass"] == "place-for-onnxruntime")
    assert placement["stats"]["maxpool_moved_behind_q"] == 1
    assert placement["stats"]["relu_absorbed"] == 17  # 1 stem + 8 blocks x 2 (after conv1 and after the Add)
    assert placement["stats"]["float_compute_left"] == 0
    derived = result.facts["derived_ranges"]
    # two ranges modelopt never measured: before the stem's MaxPool, and the last residual Add (only averaged after)
    assert len(derived) == 2
    assert sum("max pooling cannot raise the maximum" in why for why in derived.values()) == 1
    assert sum("sum of the ranges of /layer4/layer4.1/Add's inputs" in why for why in derived.values()) == 1
    # the uint8 ranges the pass placed sit beside modelopt's in facts["ranges"], each saying where it came from
    placed = {k: v for k, v in result.facts["ranges"].items() if k.endswith("(uint8, place-for-onnxruntime)")}
    relu_outputs = {k: v for k, v in placed.items() if "over the calibration data" not in v["source"]}
    assert len(relu_outputs) == 17 and all(v["dtype"] == "uint8" and v["zero_point"] == [0.0] for v in relu_outputs.values())
    assert sum(v["source"].startswith("derived: ") for v in relu_outputs.values()) == 2
    assert sum(v["source"].startswith("measured: modelopt's range") for v in relu_outputs.values()) == 15
    # the other activations (the input, each block's residual input) on grids over their own bounds
    assert len(placed) - len(relu_outputs) >= 8 and all(v["source"].startswith("measured: [") for k, v in placed.items()
                                                        if k not in relu_outputs)
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["QLinearConv"] == 20 and ops["QLinearAdd"] == 8 and ops["QLinearGlobalAveragePool"] == 1
    assert ops["Conv"] + ops["Add"] + ops["GlobalAveragePool"] + ops["Relu"] == 0  # no float kernel left
    # Held-out inputs (another seed than calibration's). Measured 0.019 here; relu ranges half as wide
    # give 0.11, weights 5% off 0.079, int32 biases 5% off 0.051.
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    assert worst_relative_error(run(tmp_path / "r.onnx", "input", x), run(result.model_path, "input", x)) < 0.03


def test_pass_on_plain_modelopt_output(small_cnn, tmp_path):
    """Run on modelopt's own placement (no output ranges measured): the pass still fuses what it can,
    leaves the interface alone and stays numerically close to modelopt's graph."""
    import onnx_ir as ir

    from tao_qc.passes.place_for_onnxruntime import PlaceForOnnxRuntime
    from tao_qc.pipeline import PROVENANCE_KEY, PassContext
    from tao_qc.spec import load_spec

    source = small_cnn["tensorrt"].model_path
    model = ir.load(str(source))
    spec = load_spec({"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime"}})
    ctx = PassContext(spec=spec, work_dir=tmp_path)
    result = PlaceForOnnxRuntime().run(model, ctx)
    assert result.changed and result.stats["weights_stored_int8"] == 4
    placed = tmp_path / "placed.onnx"
    ir.save(result.model, str(placed))
    before, after = onnx.load(source), onnx.load(placed)
    assert [i.name for i in before.graph.input] == [i.name for i in after.graph.input]
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    created = [n for n in after.graph.node if any(p.key == PROVENANCE_KEY and p.value == "place-for-onnxruntime"
                                                   for p in n.metadata_props)]
    assert created
    x = np.random.default_rng(3).standard_normal((16, 3, 32, 32)).astype(np.float32)
    reference = run(source, "input", x)
    out = run(placed, "input", x)
    assert np.abs(out - reference).max() <= 0.05 * np.abs(reference).max()
    # Conv -> Relu -> Q units fuse; Convs whose output range modelopt never measured stay float, and say so
    assert optimized_ops(placed, tmp_path)["QLinearConv"] == 2
    assert result.stats["float_compute_left"] == 3
    assert sum("stays a float kernel" in note for note in result.notes) == 3


@pytest.mark.slow  # compiles a model
def test_transformer_matmuls_feeding_float_ops_run_integer_to_float(tmp_path):
    """With a dynamic batch ORT cannot fold MatMul + bias Add into a float Gemm, so the projections whose
    outputs only float ops read stay float-output units: MatMulIntegerToFloat, no requantization."""
    zoo.export_zoo("transformer_block", tmp_path / "t.onnx", dynamic_batch=True)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((16, 16, 128)).astype(np.float32))
    result = compile_for(tmp_path / "t.onnx", tmp_path / "calib.npz", "onnxruntime", tmp_path / "out")
    placement = next(p for p in result.report["passes"] if p["pass"] == "place-for-onnxruntime")
    assert placement["stats"]["matmul_outputs_float"] == 4 and placement["stats"]["float_compute_left"] == 2
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["MatMulIntegerToFloat"] == 4 and ops["QLinearMatMul"] == 0 and ops["Gemm"] == 0
    # 4 held-out samples of [1, 16, 128]. Measured 0.0041 here; weights 5% off give 0.023.
    x = np.random.default_rng(1).standard_normal((4, 16, 128)).astype(np.float32)
    assert worst_relative_error(run(tmp_path / "t.onnx", "input", x), run(result.model_path, "input", x)) < 0.01


@pytest.mark.slow  # compiles a model
def test_relu6_before_the_average_pool_takes_the_convs_measured_range(tmp_path):
    """MobileNet's last pointwise Conv -> ReLU6 -> GlobalAveragePool -> Flatten -> classifier: the
    Clip goes into the Conv's uint8 output (modelopt's range of the Conv, cut at 6) and the pooling
    runs on uint8, as ORT's own quantizer has it."""
    torch.manual_seed(0)
    zoo.export_onnx(zoo.build("mobilenet").eval(), torch.randn(1, 3, 64, 64), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32))
    result = compile_for(tmp_path / "m.onnx", tmp_path / "calib.npz", "onnxruntime", tmp_path / "out")
    last = "/features/features.10/pointwise/pointwise.1/BatchNormalization_output_0"
    placed = result.facts["ranges"][f"{last} (uint8, place-for-onnxruntime)"]
    measured = result.facts["ranges"][last]["amax"][0]  # modelopt's int8 range of the Conv's output
    assert placed["source"].startswith("measured: ") and placed["amax"] == [pytest.approx(min(measured, 6.0))]
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["QLinearConv"] == 23
    assert ops["GlobalAveragePool"] + ops["Clip"] + ops["Conv"] == 0
    # Held-out inputs. Measured 0.012 here; relu ranges half as wide give 0.035, int32 biases 5% off 0.051.
    x = np.random.default_rng(1).standard_normal((8, 3, 64, 64)).astype(np.float32)
    assert worst_relative_error(run(tmp_path / "m.onnx", "input", x), run(result.model_path, "input", x)) < 0.025



def test_a_bias_past_the_int32_range_widens_its_channels_weight_scale():
    """A channel whose weights all but vanish gets a tiny weight scale, so its bias in input x weight
    steps passes 2**31 - 1 (float32 even rounded it to 2**31, which wrapped to -2**31). The channel's
    weight scale widens until the bias fits: its output, the bias, stays right."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from tao_qc.passes.place_for_onnxruntime import INT32_LIMIT, PlaceForOnnxRuntime, QdqBuilder

    weights = np.zeros((2, 1, 1, 1), np.float32)
    weights[1] = 0.5
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"), numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(np.array([[[[0]]], [[[64]]]], np.int8), "w_q"),
        numpy_helper.from_array(np.array([1e-12, 0.5 / 64], np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(2, np.int8), "w_zero"),
        numpy_helper.from_array(np.array([0.75, -0.25], np.float32), "bias"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq", "bias"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], initializers)
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))
    assert PlaceForOnnxRuntime._quantize_biases(model.graph, QdqBuilder(model.graph, "test")) == 1
    conv = next(n for n in model.graph if n.op_type == "Conv")
    w_dq, b_dq = conv.inputs[1].producer(), conv.inputs[2].producer()
    stored, bias_scale = (v.const_value.numpy() for v in b_dq.inputs[:2])
    w_q, w_scale = (v.const_value.numpy() for v in w_dq.inputs[:2])
    assert np.abs(stored.astype(np.int64)).max() <= INT32_LIMIT
    np.testing.assert_allclose(stored * bias_scale.astype(np.float64), [0.75, -0.25], atol=bias_scale.max())
    np.testing.assert_array_equal(bias_scale, (np.float32(0.02) * w_scale).astype(np.float32))
    assert w_scale[0] > 1e-12 and w_q[0].item() == 0  # widened; its weights were ~0 and stay 0
    assert w_scale[1] == np.float32(0.5 / 64) and w_q[1].item() == 64  # the other channel is untouched
