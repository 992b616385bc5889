"""integer-elementwise: HardSwish, HardSigmoid and Sigmoid kept on uint8 for ONNX Runtime, checked
against exact arithmetic and in ORT's optimized graphs; the elementwise nodes modelopt is asked to measure."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import compile_zoo_for_onnxruntime, export_zoo, optimized_ops
from tao_qc.passes.integer_elementwise import IntegerElementwise, elementwise_to_measure
from tao_qc.pipeline import PassContext
from tao_qc.spec import load_spec
from tao_qc.spec.cpu import this_machine

X_SCALE = 0.08  # the input grid: uint8, zero point 128, about [-10, 10]


def context(tmp_path: Path) -> PassContext:
    return PassContext(spec=load_spec({"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime"}}), work_dir=tmp_path)


def run(model: ir.Model | onnx.ModelProto, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def unit(op: str, steps: list[tuple[str, float]], out_scale: float, attributes: dict | None = None,
         conv_bias: bool = False) -> onnx.ModelProto:
    """x -> Q(u8) -> DQ -> op -> scalar steps -> Q(u8, zero point 128: modelopt's symmetric grid) -> DQ
    [-> depthwise Conv 1x1 with an int32 bias as place-for-onnxruntime writes it -> Q -> DQ] -> Identity."""
    tensors = {"xs": np.array(X_SCALE, np.float32), "z128": np.array(128, np.uint8), "os": np.array(out_scale, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "z128"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "z128"], ["xd"], name="x_dq"),
             helper.make_node(op, ["xd"], ["h0"], name="act", **(attributes or {}))]
    current = "h0"
    for index, (step, value) in enumerate(steps):
        tensors[f"c{index}"] = np.array([value], np.float32)
        nodes.append(helper.make_node(step, [current, f"c{index}"], [f"h{index + 1}"], name=f"step{index}"))
        current = f"h{index + 1}"
    nodes += [helper.make_node("QuantizeLinear", [current, "os", "z128"], ["yq"], name="y_q"),
              helper.make_node("DequantizeLinear", ["yq", "os", "z128"], ["yd"], name="y_dq")]
    current = "yd"
    if conv_bias:
        weight_scale = np.full(4, 0.01, np.float32)
        tensors.update(w=np.array([[[[50]]], [[[-80]]], [[[127]]], [[[20]]]], np.int8), ws=weight_scale, wz=np.zeros(4, np.int8),
                       b=np.rint(np.array([0.3, -0.2, 0.05, 1.0]) / (out_scale * weight_scale)).astype(np.int32),
                       bs=(out_scale * weight_scale).astype(np.float32), bz=np.zeros(4, np.int32), cs=np.array(0.05, np.float32))
        nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", axis=0),
                  helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], name="b_dq", axis=0),
                  helper.make_node("Conv", ["yd", "wd", "bd"], ["c"], name="conv", kernel_shape=[1, 1], group=4),
                  helper.make_node("QuantizeLinear", ["c", "cs", "z128"], ["cq"], name="c_q"),
                  helper.make_node("DequantizeLinear", ["cq", "cs", "z128"], ["cd"], name="c_dq")]
        current = "cd"
    nodes.append(helper.make_node("Identity", [current], ["out"], name="out"))
    channels = 4 if conv_bias else 1
    graph = helper.make_graph(nodes, "unit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 64, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def input_grid(channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every point of the input grid (and a little beyond it), and the same values dequantized."""
    x = np.tile(np.linspace(-11, 11, 64 * 64, dtype=np.float32), channels).reshape(1, channels, 64, 64)
    return x, (np.clip(np.rint(x / X_SCALE) + 128, 0, 255) - 128) * X_SCALE


def hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x / 6 + 0.5, 0, 1)


@pytest.mark.parametrize("steps,out_scale,whole_shift", [
    ([], 0.08, True),  # HardSwish straight into the next Conv's input grid
    ([("Mul", 0.6333), ("Add", 0.1472)], 0.0752, True),  # PP-LCNetV3's scale and shift before a padded Conv: 2 steps
    ([("Mul", 0.1979), ("Add", -0.1917)], 0.0462, True),  # a negative shift of about 4 steps
    ([("Mul", 0.5), ("Sub", 0.01)], 0.04, False),  # a shift under one step: rounded to the nearest
])
def test_hardswish_on_uint8_is_closer_to_exact_than_the_float_one_between_qdq(steps, out_scale, whole_shift, tmp_path):
    proto = unit("HardSwish", steps, out_scale)
    x, dequantized = input_grid()
    exact = hardswish(dequantized)
    for op, value in steps:
        exact = {"Mul": exact * value, "Add": exact + value, "Sub": exact - value}[op]
    before = run(proto, x)
    model = ir.from_proto(proto)
    result = IntegerElementwise().run(model, context(tmp_path))
    assert result.stats["hardswish_integer"] == 1 and result.stats["affine_absorbed"] == len(steps)
    after = run(model, x, optimized=tmp_path / "optimized.onnx")
    # The float HardSwish is within half a step of modelopt's symmetric grid; the rewrite redraws
    # the grid over HardSwish's real range, so it is finer, and unbiased.
    assert np.abs(before - exact).max() <= out_scale / 2 + 1e-5
    assert np.abs(after - exact).max() <= 0.6 * out_scale
    if whole_shift:
        assert np.abs(after - exact).mean() < np.abs(before - exact).mean()
        assert abs(float((after - exact).mean())) < out_scale / 20
    else:
        assert np.abs(after - exact).mean() < np.abs(before - exact).mean() + out_scale / 20
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert ops["QLinearAdd"] == 1 and ops["QLinearMul"] == 1  # the gate, and x times the gate
    assert not {"HardSwish", "HardSigmoid", "Mul", "Add", "Sub"} & set(ops)


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (1 / 6, 0.5), (0.25, 0.3)])
def test_hardsigmoid_is_one_requantization_onto_the_1_255_grid(alpha, beta, tmp_path):
    proto = unit("HardSigmoid", [], 1 / 127, {"alpha": alpha, "beta": beta})
    x, dequantized = input_grid()
    exact = np.clip(alpha * dequantized + beta, 0, 1)
    model = ir.from_proto(proto)
    result = IntegerElementwise().run(model, context(tmp_path))
    assert result.stats["hardsigmoid_integer"] == 1
    after = run(model, x, optimized=tmp_path / "optimized.onnx")
    assert np.abs(after - exact).max() <= 0.5 / 255 + 1e-6  # rounded to 1/255, not to modelopt's grid
    assert after.min() == 0 and after.max() == 1  # both ends exact
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert "HardSigmoid" not in ops and ops["QLinearAdd"] + ops["QLinearMul"] == 1


def test_a_redrawn_grid_takes_the_biases_of_the_convs_reading_it_along(tmp_path):
    proto = unit("HardSwish", [], 0.08, conv_bias=True)
    x, dequantized = input_grid(4)
    weights = np.array([50, -80, 127, 20], np.float64) * 0.01
    exact = hardswish(dequantized)[0, 0] * weights.reshape(4, 1, 1) + np.array([0.3, -0.2, 0.05, 1.0]).reshape(4, 1, 1)
    before = run(proto, x)[0]
    model = ir.from_proto(proto)
    IntegerElementwise().run(model, context(tmp_path))
    after = run(model, x)[0]
    # An int32 bias left in units of the old input scale would be off by the ratio of the two grids.
    assert np.abs(after - exact).max() <= np.abs(before - exact).max() + 0.05


def test_sigmoid_takes_its_bounds_as_its_range(tmp_path):
    proto = unit("Sigmoid", [], 1 / 127)
    x, dequantized = input_grid()
    model = ir.from_proto(proto)
    assert IntegerElementwise().run(model, context(tmp_path)).stats["sigmoid_integer"] == 1
    after = run(model, x, optimized=tmp_path / "optimized.onnx")
    assert np.abs(after - 1 / (1 + np.exp(-dequantized))).max() <= 0.5 / 255 + 1e-3
    assert Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)["QLinearSigmoid"] == 1


def test_nodes_to_measure_are_the_elementwise_ones_between_quantized_convs(tmp_path):
    from tao_qc.passes import default_passes
    from tao_qc.pipeline import Pipeline

    ctx = PassContext(spec=load_spec({"quantize": {"backend": "modelopt.onnx"}}), work_dir=tmp_path,
                      source_path=export_zoo("lcnet", tmp_path))
    model = Pipeline(default_passes(ctx.spec)[:2]).run(None, ctx).model  # canonicalized: BatchNorm folded
    convs = {n.name for n in model.graph if n.op_type in ("Conv", "Gemm")}
    measured = elementwise_to_measure(model, convs)
    kinds = Counter(n.op_type for n in measured)
    # Each squeeze-excite block: the HardSwish the pool and the Mul read, the pool, the gate, the Mul;
    # and the head's pool, which the last 1x1 Conv reads.
    se_blocks = sum(1 for n in model.graph if n.op_type == "HardSigmoid")
    assert kinds["GlobalAveragePool"] == se_blocks + 1 and kinds["HardSigmoid"] == se_blocks and kinds["Mul"] == se_blocks
    assert kinds["HardSwish"] >= 26  # every one whose output a quantized Conv reads
    # The last HardSwish reaches the classifier through a Flatten, which only moves values: measured too.
    last = [n for n in model.graph if n.op_type == "HardSwish"][-1]
    assert last.name in {n.name for n in measured}
    # Without the squeeze-excite Convs quantized, their pools, gates and Muls have nothing to feed
    # (the head's pool still has).
    without_se = Counter(n.op_type for n in elementwise_to_measure(model, {name for name in convs if "/se/" not in name}))
    assert without_se["GlobalAveragePool"] == 1 and without_se["HardSigmoid"] == 0 and without_se["Mul"] == 0


@pytest.fixture(scope="module")
def lcnet_int8(tmp_path_factory):
    from tao_qc.driver import compile_model

    folder = tmp_path_factory.mktemp("lcnet")
    fp32 = export_zoo("lcnet", folder)
    np.savez(folder / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32))
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "onnxruntime": {"cpu": this_machine().isa},  # its answers are read through this CPU's kernels
                         "calibration": {"data": str(folder / "calib.npz")}}}
    return fp32, compile_model(fp32, spec, results_dir=folder / "out", compare=False)


def test_lcnet_runs_on_uint8_from_its_first_conv_to_its_last_with_the_same_answers(lcnet_int8, tmp_path):
    fp32, result = lcnet_int8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    quantized = ort.InferenceSession(str(result.model_path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    # Every activation stays uint8 between integer kernels, the last HardSwish too (the classifier
    # reads it through a Flatten): one QuantizeLinear for the input, one DequantizeLinear for the logits.
    assert ops["QLinearConv"] == 32 and ops["HardSigmoid"] == 0 and ops["Mul"] == 0 and ops["QGemm"] == 1
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    assert ops["QLinearGlobalAveragePool"] >= 2 and ops["QLinearMul"] >= 28
    x = np.random.default_rng(3).standard_normal((16, 3, 224, 224)).astype(np.float32)
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    expected = np.concatenate([reference.run(None, {"input": x[i:i + 1]})[0] for i in range(16)])
    got = np.concatenate([quantized.run(None, {"input": x[i:i + 1]})[0] for i in range(16)])
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9 and cosine.min() > 0.98
    record = next(r for r in result.report["passes"] if r["pass"] == "integer-elementwise")
    assert record["stats"]["hardswish_integer"] >= 26 and record["stats"]["hardsigmoid_integer"] == 2


def test_fallback_may_keep_a_requantizing_elementwise_node_in_float(lcnet_int8, tmp_path):
    """A QLinearMul requantizes its product; accuracy fallback ranks the measured elementwise nodes
    with the Convs, and keeping one float leaves every Conv integer around it."""
    from tao_qc.accuracy.fallback import quantized_candidates
    from tao_qc.passes import calibrating_passes, finishing_passes
    from tao_qc.pipeline import Pipeline

    fp32, result = lcnet_int8
    elementwise = result.facts["elementwise_quantized"]
    candidates = quantized_candidates(result.facts)
    compute = [c for c in candidates if c[1] in ("Conv", "Gemm")]
    assert candidates == compute + [tuple(e) for e in elementwise]
    assert {kind for _, kind in elementwise} >= {"HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool"}
    gate = next(name for name, kind in elementwise if kind == "Mul")

    spec = result.spec
    ctx = PassContext(spec=spec, work_dir=tmp_path, source_path=fp32)
    calibrated = Pipeline(calibrating_passes(spec, source_path=fp32)).run(None, ctx)
    ctx.facts["keep_float"] = {gate: "chosen by this test"}
    finished = Pipeline(finishing_passes(spec)).run(calibrated.model, ctx)  # verify-quantization included
    ir.save(finished.model, tmp_path / "gate-float.onnx")

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(tmp_path / "gate-float.onnx"), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    kept = [n for n in onnx.load(tmp_path / "gate-float.onnx").graph.node if n.name == gate]
    assert kept and kept[0].op_type == "Mul"
    options.optimized_model_filepath = str(tmp_path / "optimized-all-int8.onnx")
    ort.InferenceSession(str(result.model_path), options, providers=["CPUExecutionProvider"])
    before = Counter(n.op_type for n in onnx.load(tmp_path / "optimized-all-int8.onnx").graph.node)
    assert ops["QLinearConv"] == before["QLinearConv"] == 32
    # The gate's Mul runs float, and at most one neighbour that read its grid with it (measured: 29 -> 27).
    assert before["QLinearMul"] - 2 <= ops["QLinearMul"] < before["QLinearMul"] and ops["Mul"] > before["Mul"]
    x = np.random.default_rng(3).standard_normal((4, 3, 224, 224)).astype(np.float32)
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    expected = np.concatenate([reference.run(None, {"input": x[i:i + 1]})[0] for i in range(4)])
    got = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(4)])
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75


@pytest.fixture(scope="module")
def text_detector(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("text_detector")
    fp32, result, rng = compile_zoo_for_onnxruntime("text_detector", folder, onnxruntime={"speed": "off"})
    return {"fp32": fp32, "folder": folder, "result": result,
            "held_out": rng.standard_normal((8, 3, 64, 64)).astype(np.float32)}


def test_elementwise_nodes_are_measured_through_upsampling_and_concat(tmp_path):
    """PP-OCRv5's detector neck: each level's x + SE(x) reaches the next Conv only through a nearest
    Resize, a top-down Add or the Concat of all levels. Those only move values, so its Muls and Adds
    are measured like ones a Conv reads directly."""
    from tao_qc.passes import default_passes
    from tao_qc.pipeline import Pipeline

    ctx = PassContext(spec=load_spec({"quantize": {"backend": "modelopt.onnx"}}), work_dir=tmp_path,
                      source_path=export_zoo("text_detector", tmp_path))
    model = Pipeline(default_passes(ctx.spec)[:2]).run(None, ctx).model
    convs = {n.name for n in model.graph if n.op_type == "Conv"}
    kinds = Counter(n.op_type for n in elementwise_to_measure(model, convs))
    # Six residual-excite layers (a gate, a Mul and an Add each) and the pyramid's two top-down Adds.
    assert kinds["HardSigmoid"] == 6 and kinds["Mul"] == 6 and kinds["Add"] == 8


def test_text_detector_runs_on_uint8_from_input_to_probability_map(text_detector):
    """The neck as QLinearMul, QLinearAdd, repeats and a QLinearConcat; the head's ConvTransposes as
    1x1 QLinearConvs and channels-last pixel shuffles (transposed-conv-as-conv, upsample-on-uint8).
    Only the last Sigmoid, the model's output, runs in float."""
    ops = optimized_ops(text_detector["result"].model_path, text_detector["folder"])
    assert ops["QLinearAdd"] >= 8 and ops["QLinearMul"] >= 6 and ops["QLinearConcat"] >= 1 and ops["QLinearConv"] == 24
    for float_op in ("Add", "HardSigmoid", "Resize", "Concat", "Conv", "HardSwish", "ConvTranspose", "DepthToSpace",
                     "BatchNormalization", "Relu"):
        assert ops[float_op] == 0, f"{float_op} left in float: {ops}"
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1 and ops["Sigmoid"] == 1
    records = {r.name: r for r in text_detector["result"].records}
    assert records["upsample-on-uint8"].stats["depth_to_space_channels_last"] == 2


def test_text_detector_follows_fp32_and_its_kernels_follow_the_graph(text_detector):
    x = text_detector["held_out"]
    path = str(text_detector["result"].model_path)
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(text_detector["fp32"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    kernels = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    graph = ort.InferenceSession(path, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    cosine = float(kernels.ravel() @ reference.ravel() / (np.linalg.norm(kernels) * np.linalg.norm(reference)))
    assert cosine > 0.99
    assert np.linalg.norm(kernels - graph) < np.linalg.norm(graph - reference)


@pytest.mark.slow  # compiles a 60-Conv detector
@pytest.mark.parametrize("name", ["yolo", "yolo_mish"])
def test_a_yolo_shaped_detectors_activations_run_on_uint8_between_its_convs(tmp_path, name):
    """YOLOv8's shape with every SiLU exported as `x * Sigmoid(x)`: each runs as QLinearSigmoid and
    QLinearMul (name-activation-chains leaves the pair: on a uint8 [1, 64, 80, 80] the two kernels
    took 0.12 ms where a 256-entry Cast + Gather table took 0.78 ms and DQ + the float pair + Q 0.23 ms,
    AVX-512 VNNI EPYC). With Mish (`x * Tanh(Softplus(x))`) instead, each Tanh(Softplus(x)) is a table
    and the product a QLinearMul, including the Mishes read by a Split, a Concat or a residual Add. The
    C2f splits, SPPF pools, upsampling and Concats keep them on uint8: nothing runs in float from the
    input's QuantizeLinear to the heads' last Convs."""
    from tao_qc.driver import compile_model
    from tao_qc.spec.cpu import this_machine
    from tao_qc.testing import zoo

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    fp32 = zoo.export_onnx(zoo.build(name), torch.randn(1, 3, 96, 96), tmp_path / f"{name}.onnx", dynamic_batch=True)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((8, 3, 96, 96)).astype(np.float32))
    spec = {"quantize": {"target": "onnxruntime", "calibration": {"data": str(tmp_path / "calib.npz")},
                         "onnxruntime": {"cpu": this_machine().isa, "speed": "off"}}}
    result = compile_model(fp32, spec, results_dir=tmp_path / "out", compare=False)
    activations = Counter(n.op_type for n in onnx.load(fp32).graph.node)["Mul"]
    assert activations == 57
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["QLinearMul"] == activations, ops
    if name == "yolo":
        assert ops["QLinearSigmoid"] == activations, ops
    else:
        tables = next(r for r in result.records if r.name == "tabulate-activation-chains").stats["tables"]
        assert tables == activations and ops["Cast"] == activations, ops
    assert ops["QLinearConv"] == 63 and ops["QLinearConcat"] >= 16, ops
    for float_op in ("Sigmoid", "Softplus", "Tanh", "QuickGelu", "Conv", "Resize", "Add"):
        assert ops[float_op] == 0, f"{float_op} left in float: {ops}"
    # What is left outside the integer kernels: the upsampling's size arithmetic (a Mul of int64
    # shapes per repeat), and each head's box and score Convs dequantized into the output's Concat.
    # One QuantizeLinear and the outputs' DequantizeLinears: every op between runs on uint8 (the
    # SPPF's pools too: channels-last where ORT's layout pass reaches them, which the tables' Gathers
    # stop; bench/results/placement-yolo.md).
    assert ops["Mul"] == ops["Expand"] == 2 and ops["Concat"] == 3, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 6, ops
