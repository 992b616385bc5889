"""Per-node dtypes on the ONNX path: int8, FP8 and float in one spec, from one calibration.

A CNN trained on scikit-learn's digits (one tensor read by an int8 and an FP8 node, a residual Add,
an FP8 Linear, a float Linear), compiled for TensorRT and run on ONNX Runtime's CPU provider; the
same for ONNX Runtime with E5M2; and PaddleOCR's PP-OCRv5 recognizer, which INT8 breaks and a few
FP8 layers bring back.
"""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from _compile_helpers import run_cli
from _frontends_helpers import digits_split, train
from tao_qc.driver import compile_model
from tao_qc.ir.graph_facts import quantization_summary
from tao_qc.runtimes.onnxruntime import disabled_optimizers_for, with_exact_fp16_quantize

pytestmark = pytest.mark.slow

FP8 = {"dtype": "fp8_e4m3fn"}
MIXED_LAYERS = [
    {"module_name": "*", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}},
    {"module_name": "/c2/*", "weights": FP8, "activations": FP8},
    {"module_name": "/fc1/*", "weights": {"dtype": "float8_e4m3fn"}, "activations": {"dtype": "float8_e4m3fn"}},
    {"module_name": "/fc2/*", "weights": {"dtype": "native"}, "activations": {"dtype": "native"}},
]
E4M3_MAX, E5M2_MAX, INT8_MAX = 448.0, 57344.0, 127.0
FLOAT8 = (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2)


class MixedDigitsCNN(nn.Module):
    """c1's output feeds c2 and a 1x1 `skip` conv (one tensor, two consumers); a residual Add."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(16, 32, 1, stride=2)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.relu(self.c1(x))
        y = self.relu(self.c2(x))
        y = self.relu(self.c3(y)) + self.skip(x)
        return self.fc2(self.relu(self.fc1(torch.flatten(y, 1))))


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = digits_split()
    torch.manual_seed(0)
    model = train(MixedDigitsCNN(), x_train, y_train, epochs=10)
    path = folder / "digits.onnx"
    torch.onnx.export(model, torch.from_numpy(x_test[:1]), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    np.savez(folder / "calib.npz", x=x_train[:128])
    np.savez(folder / "test.npz", x=x_test)
    np.save(folder / "labels.npy", y_test)
    return {"model": path, "folder": folder, "x": x_test, "labels": y_test}


def mixed_spec(data: dict, target: str, layers: list) -> dict:
    folder = data["folder"]
    return {"quantize": {"backend": "modelopt.onnx", "device": "cpu", "target": target, "layers": layers,
                         "calibration": {"data": str(folder / "calib.npz"), "batch_size": 32},
                         "compare": {"data": str(folder / "test.npz"), "labels": str(folder / "labels.npy")}}}


@pytest.fixture(scope="module")
def mixed_tensorrt(digits_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "results"
    return compile_model(digits_cnn["model"], mixed_spec(digits_cnn, "tensorrt", MIXED_LAYERS), results_dir=out,
                         dump="after-change")


def session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime session as compile's comparison builds one (full optimization, fp16 Q rounded as ONNX defines)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = onnx.load(str(path))
    return ort.InferenceSession(with_exact_fp16_quantize(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers_for(model))


def compute_facts(path: Path) -> dict[str, dict]:
    return {fact["name"]: fact for fact in quantization_summary(onnx.load(str(path)))["compute_nodes"]}


def quantizers_of(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, np.ndarray, int]]]:
    """Per float tensor, the QuantizeLinear nodes reading it: (node, scale in its own dtype, zero-point element type)."""
    initializers = {t.name: t for t in model.graph.initializer}
    found: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
            found.setdefault(node.input[0], []).append((node, scale, initializers[node.input[2]].data_type))
    return found


def test_each_node_carries_its_own_dtype_in_the_saved_graph(mixed_tensorrt):
    result = mixed_tensorrt
    assert result.model_path.name == "digits.mixed.onnx" and result.report["quantize_mode"] == "mixed"
    assert result.report["counts"]["dtypes"] == {"fp8_e4m3fn": 2, "int8": 3, "native": 1}
    facts = compute_facts(result.model_path)
    shown = {name: (fact["status"], fact["activation"], fact["weights"]) for name, fact in facts.items()}
    assert shown == {
        "/c1/Conv": ("quantized", "int8", "int8"),
        "/c2/Conv": ("quantized", "float8e4m3fn", "float8e4m3fn"),
        "/c3/Conv": ("quantized", "int8", "int8"),
        "/skip/Conv": ("quantized", "int8", "int8"),
        "/fc1/Gemm": ("quantized", "float8e4m3fn", "float8e4m3fn"),
        "/fc2/Gemm": ("float", "float", "float"),
    }
    assert facts["/c2/Conv"]["weights_granularity"] == "per-channel (axis 0)"
    assert facts["/fc1/Gemm"]["weights_granularity"] == "per-channel (axis 0)"
    # standard ONNX Q/DQ only (no custom domain), an opset that has float8, every float8 zero point 0
    model = onnx.load(str(result.model_path))
    assert {node.domain for node in model.graph.node} == {""}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    zero_points = [t for t in model.graph.initializer if t.data_type in FLOAT8]
    assert zero_points and all(not np.any(onnx.numpy_helper.to_array(t).astype(np.float32)) for t in zero_points)
    rules = {row["name"]: row["weights_rule"] for row in result.report["decisions"]}
    assert rules["/fc1/Gemm"] == "layers[2] '/fc1/*' (by name)"  # the float8_e4m3fn alias, normalized
    assert rules["/fc2/Gemm"] == "layers[3] '/fc2/*' (by name)"


def test_fp8_scales_are_the_int8_calibration_ranges_over_448(mixed_tensorrt):
    calibrated = onnx.load(str(next(mixed_tensorrt.dump_dir.glob("*-quantize-modelopt.onnx"))))
    final = onnx.load(str(mixed_tensorrt.model_path))
    int8_scales = {tensor: scale for tensor, qs in quantizers_of(calibrated).items() for _, scale, _ in qs}
    checked = 0
    for tensor, quantizers in quantizers_of(final).items():
        for node, scale, zero_type in quantizers:
            if zero_type == onnx.TensorProto.FLOAT8E4M3FN:
                # the same amax on the E4M3 grid, rounded once to the scales' dtype (fp16: TensorRT's float part)
                amax = int8_scales[tensor].astype(np.float64) * INT8_MAX
                np.testing.assert_array_equal(scale, (amax / E4M3_MAX).astype(scale.dtype))
                checked += 1
            else:
                np.testing.assert_array_equal(scale, int8_scales[tensor])
    assert checked == 4  # c2's and fc1's activations and weights


def test_a_tensor_read_by_an_int8_and_an_fp8_node_gets_a_pair_of_each(mixed_tensorrt):
    model = onnx.load(str(mixed_tensorrt.model_path))
    readers = {name: node for node in model.graph.node for name in node.input}
    c1_output = next(n for n in model.graph.node if n.name == "/relu/Relu").output[0]
    pairs = {}
    for node, scale, zero_type in quantizers_of(model)[c1_output]:
        dq = readers[node.output[0]]
        consumers = sorted(n.name for n in model.graph.node if dq.output[0] in n.input)
        pairs[zero_type] = (consumers, scale.reshape(()))
    assert pairs[onnx.TensorProto.INT8][0] == ["/skip/Conv"]
    assert pairs[onnx.TensorProto.FLOAT8E4M3FN][0] == ["/c2/Conv"]
    # one range, two grids (each scale rounded once to the graph's fp16 float part)
    int8_scale, fp8_scale = pairs[onnx.TensorProto.INT8][1], pairs[onnx.TensorProto.FLOAT8E4M3FN][1]
    assert fp8_scale.dtype == np.float16
    assert fp8_scale == (int8_scale.astype(np.float64) * INT8_MAX / E4M3_MAX).astype(np.float16)


def test_the_mixed_model_runs_on_onnxruntime_cpu_within_a_point_of_fp32(mixed_tensorrt, digits_cnn):
    x, labels = digits_cnn["x"], digits_cnn["labels"]
    fp32 = session(digits_cnn["model"]).run(None, {"x": x})[0]
    mixed = session(mixed_tensorrt.model_path).run(None, {"x": x})[0]
    fp32_accuracy, mixed_accuracy = (fp32.argmax(1) == labels).mean(), (mixed.argmax(1) == labels).mean()
    assert fp32_accuracy > 0.95
    assert mixed_accuracy >= fp32_accuracy - 0.01
    output = mixed_tensorrt.report["comparison"]["outputs"][0]
    assert output["reference_top1"] == pytest.approx(fp32_accuracy)
    assert output["candidate_top1"] == pytest.approx(mixed_accuracy)
    # What compile's session computes is the graph's own meaning: the predictions of ONNX Runtime with
    # only its basic rewrites, which leave Q/DQ alone (fp16 Q rounded as ONNX defines in both). Logits
    # differ by up to 1% of their spread: ORT's full level runs the fp16 float part through other kernels.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    exact = with_exact_fp16_quantize(onnx.load(str(mixed_tensorrt.model_path))).SerializeToString()
    basic = ort.InferenceSession(exact, options, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(mixed.argmax(1), basic.run(None, {"x": x})[0].argmax(1))


def test_inspect_shows_each_nodes_dtype_and_the_entry_that_set_it(mixed_tensorrt, tmp_path, capsys):
    code, out, _ = run_cli(["inspect", mixed_tensorrt.results_dir, "--json"], capsys)
    assert code == 0
    facts = {fact["name"]: fact for fact in json.loads(out)["compute_nodes"]}
    assert facts["/c2/Conv"]["activation"] == "float8e4m3fn"
    assert facts["/c2/Conv"]["reason"] == "weights fp8_e4m3fn, activations fp8_e4m3fn: layers[1] '/c2/*' (by name)"
    assert facts["/c1/Conv"]["reason"] == "weights int8, activations int8: layers[0] '*' (by name)"
    assert facts["/fc2/Gemm"]["reason"] == "kept in float: layers[3] '/fc2/*' (by name)"
    assert not any("disagrees" in fact for fact in facts.values())
    # a report whose dtype the graph does not carry is flagged
    copy = tmp_path / "results"
    shutil.copytree(mixed_tensorrt.results_dir, copy)
    report = json.loads((copy / "report.json").read_text())
    for row in report["decisions"]:
        if row["name"] == "/c2/Conv":
            row["activations"] = "int8"
    (copy / "report.json").write_text(json.dumps(report))
    code, out, _ = run_cli(["inspect", copy, "--json"], capsys)
    flagged = {fact["name"]: fact.get("disagrees") for fact in json.loads(out)["compute_nodes"]}
    assert flagged["/c2/Conv"] == "report says activations int8, graph shows float8e4m3fn"


def test_the_report_shows_each_nodes_dtype_and_the_entry_that_set_it(mixed_tensorrt):
    rows = {row["name"]: (row["weights"], row["activations"], row["weights_rule"]) for row in mixed_tensorrt.report["decisions"]}
    assert rows["/c2/Conv"] == ("fp8_e4m3fn", "fp8_e4m3fn", "layers[1] '/c2/*' (by name)")
    assert rows["/skip/Conv"] == ("int8", "int8", "layers[0] '*' (by name)")
    assert rows["/fc2/Gemm"] == ("native", "native", "layers[3] '/fc2/*' (by name)")
    html = (mixed_tensorrt.results_dir / "report.html").read_text()
    # Decisions are grouped by rule: each node is listed under a summary that gives its dtypes and rule.
    shown = {}
    for summary, body in re.findall(r'<details class="group"[^>]*><summary>(.*?)</summary>(.*?)</details>', html, flags=re.S):
        for node in re.findall(r"<code[^>]*>([^<]+)</code>", body):
            shown[node] = unescape(re.sub(r"<[^>]+>", "", summary))
    assert "fp8_e4m3fn weights and activations: layers[1] '/c2/*' (by name)" in shown["/c2/Conv"]
    assert "fp8_e4m3fn weights and activations: layers[2] '/fc1/*' (by name)" in shown["/fc1/Gemm"]
    assert "int8 weights and activations: layers[0] '*' (by name)" in shown["/c1/Conv"]


def test_the_pass_dumps_show_the_mixed_qdq(mixed_tensorrt):
    [text] = mixed_tensorrt.dump_dir.glob("*-assign-dtypes.txt")
    lines = text.read_text().splitlines()
    c2_weight = next(line for line in lines if line.endswith("# c2.weight_QuantizeLinear [tao_qc.pass=quantize-modelopt]"))
    assert ": f8e4m3fn[32,16,3,3]" in c2_weight
    copy = next(line for line in lines if "[tao_qc.pass=assign-dtypes]" in line and "QuantizeLinear(" in line)
    assert "f8e4m3fn" in copy
    record = next(r for r in mixed_tensorrt.records if r.name == "assign-dtypes")
    assert record.stats["pairs_added"] == 1 and record.stats["nodes_fp8_e4m3fn"] == 2 and record.stats["nodes_int8"] == 3


def test_fp8_e5m2_for_tensorrt_is_one_line_naming_the_nodes_and_the_limit(digits_cnn, tmp_path, capsys):
    spec = mixed_spec(digits_cnn, "tensorrt", [MIXED_LAYERS[0], {"module_name": "/c2/*", "weights": {"dtype": "fp8_e5m2"},
                                                                  "activations": {"dtype": "fp8_e5m2"}}])
    (tmp_path / "q.json").write_text(json.dumps(spec))
    code, out, err = run_cli(["compile", digits_cnn["model"], "--spec", tmp_path / "q.json", "-o", tmp_path / "out"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "tao-qc: error: quantize.layers: fp8_e5m2 was asked for /c2/Conv, but TensorRT runs FP8 only as E4M3 "
        "(target: tensorrt); use fp8_e4m3fn there, or target: onnxruntime, whose CPU provider runs E5M2 Q/DQ"]
    assert not (tmp_path / "out").exists()


def test_fp8_e5m2_is_honoured_for_onnxruntime_and_native_reads_float(digits_cnn, tmp_path):
    layers = [*MIXED_LAYERS[:1], {"module_name": "/c2/*", "weights": {"dtype": "fp8_e5m2"}, "activations": {"dtype": "fp8_e5m2"}},
              *MIXED_LAYERS[2:]]
    spec = mixed_spec(digits_cnn, "onnxruntime", layers)
    spec["quantize"]["accuracy"] = {"fallback": "off"}  # the dtypes as asked, measured below
    result = compile_model(digits_cnn["model"], spec, results_dir=tmp_path / "out", raise_on_mismatch=False)
    facts = compute_facts(result.model_path)
    assert (facts["/c2/Conv"]["activation"], facts["/c2/Conv"]["weights"]) == ("float8e5m2", "float8e5m2")
    assert facts["/c1/Conv"]["activation"] == "uint8" and facts["/c1/Conv"]["weights"] == "int8"  # ORT's integer units
    calibrated_amax = result.facts["ranges"]["/relu/Relu_output_0"]["amax"][0]
    scales = {zero: scale for _, scale, zero in quantizers_of(onnx.load(str(result.model_path)))["/relu/Relu_output_0"]}
    assert float(scales[onnx.TensorProto.FLOAT8E5M2].reshape(())) * E5M2_MAX == pytest.approx(calibrated_amax, rel=1e-6)
    # fc2 (native) reads fc1's float output: no Q/DQ between them, though modelopt measured fc1's output
    model = onnx.load(str(result.model_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    fc2 = next(n for n in model.graph.node if n.name == "/fc2/Gemm")
    assert producers[fc2.input[0]].op_type == "Relu" and producers[producers[fc2.input[0]].input[0]].name == "/fc1/Gemm"
    output = result.report["comparison"]["outputs"][0]
    assert output["candidate_top1"] >= output["reference_top1"] - 0.01


RECOGNIZER_FP8 = ["Conv.2[89]", "Conv.3[012]"]


def test_a_few_fp8_layers_make_the_ocr_recognizer_read_where_int8_cannot(tmp_path, shared_models):
    """PP-OCRv5's recognizer reads nothing in INT8; five of its 44 quantized nodes in FP8 E4M3 (the
    PP-LCNet convolutions of its last stage) and the rest INT8 read almost as FP32 does.

    Measured on these 64 lines with TensorRT's fp16 float part: FP32 CER 2.7%, this mix 4.5%."""
    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    np.savez(tmp_path / "calib.npz", x=corpus.recognizer_input(lines.files[:16]))
    x, texts = corpus.recognizer_input(lines.files[16:80]), lines.texts[16:80]
    layers = [{"module_name": "*"}] + [{"module_name": pattern, "weights": FP8, "activations": FP8} for pattern in RECOGNIZER_FP8]
    model = shared_models / "ppocrv5_rec.onnx"

    def compiled(layers: list, name: str):
        spec = {"quantize": {"backend": "modelopt.onnx", "device": "cpu", "target": "tensorrt", "layers": layers,
                             "calibration": {"data": str(tmp_path / "calib.npz"), "batch_size": 8}}}
        return compile_model(model, spec, results_dir=tmp_path / name, compare=False)

    result = compiled(layers, "mixed")
    assert result.report["counts"]["dtypes"] == {"fp8_e4m3fn": 5, "int8": 39, "native": 7}
    facts = compute_facts(result.model_path)
    assert {name for name, fact in facts.items() if fact["activation"] == "float8e4m3fn"} == {
        "Conv.28", "Conv.29", "Conv.30", "Conv.31", "Conv.32"}
    characters = corpus.characters_from_metadata(onnx.load(str(model), load_external_data=False))

    def cer(path: Path) -> float:
        runner = session(path)
        probabilities = np.concatenate([runner.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])
        return corpus.character_error_rate(corpus.ctc_greedy_decode(probabilities, characters), texts)

    fp32, mixed, int8 = cer(model), cer(result.model_path), cer(compiled([{"module_name": "*"}], "int8").model_path)
    measured = f"CER FP32 {fp32:.4f}, INT8 {int8:.4f}, INT8 with five FP8 Convs {mixed:.4f}"
    assert fp32 < 0.03, measured
    assert int8 > 0.5, measured  # the FP8 layers are what make it read
    assert mixed <= fp32 + 0.03, measured
