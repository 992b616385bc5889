"""`compile_model` and `tao-qc compile` end to end on the shared third-party models.

The FP32 models are first checked against their shipped reference outputs; the INT8 models must
agree with FP32 on the top-1 class of real labelled digits (scikit-learn's digits in MNIST framing)
at least 99% of the time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _compile_helpers import (ASSETS, CNN_MNIST_PYTORCH, MNIST_CNTK, MNIST_INPUT, PYTORCH_MNIST_INPUT, digits, predict,
                              run_cli, session)
from tao_qc.compile import compile_model
from tao_qc.pipeline import PROVENANCE_KEY

CALIBRATION = 48  # digits used for calibration
EVALUATION = slice(100, 400)  # 300 other digits for the agreement check


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compile-data")
    images, labels = digits()
    np.savez(root / "digits.npz", **{MNIST_INPUT: images[:CALIBRATION]})
    np.savez(root / "digits01.npz", **{PYTORCH_MNIST_INPUT: images[:CALIBRATION] / np.float32(255)})
    np.save(root / "labels.npy", labels)
    return root


@pytest.fixture(scope="module")
def mnist_cntk_run(tmp_path_factory, data_dir):
    source = MNIST_CNTK
    before = sha(source)
    out = tmp_path_factory.mktemp("mnist-cntk") / "results"
    spec = {"quantize": {"device": "cpu", "calibration": {"data": str(data_dir / "digits.npz")}}}
    result = compile_model(source, spec, results_dir=out, dump="after-change", compare=False)
    assert sha(source) == before  # the input model is only read
    return result


@pytest.mark.slow
def test_mnist_cntk_fp32_matches_its_shipped_reference():
    folder = ASSETS / "mnist_cntk" / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(folder / "output_0.pb")))
    got = session(MNIST_CNTK).run(None, {MNIST_INPUT: x})[0]
    np.testing.assert_allclose(got, y, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_mnist_cntk_int8_agrees_with_fp32_on_real_digits(mnist_cntk_run):
    result = mnist_cntk_run
    images, labels = digits()
    fp32 = predict(MNIST_CNTK, MNIST_INPUT, images[EVALUATION]).argmax(1)
    int8 = predict(result.model_path, MNIST_INPUT, images[EVALUATION]).argmax(1)
    assert np.mean(fp32 == labels[EVALUATION]) > 0.85  # the FP32 model is what we think it is
    assert np.mean(int8 == fp32) >= 0.99
    assert abs(np.mean(int8 == labels[EVALUATION]) - np.mean(fp32 == labels[EVALUATION])) <= 0.01


@pytest.mark.slow
def test_mnist_cntk_results_folder_and_report(mnist_cntk_run):
    result = mnist_cntk_run
    assert result.model_path == result.results_dir / "mnist_cntk.int8.onnx"
    assert sorted(p.name for p in result.results_dir.iterdir()) == ["mnist_cntk.int8.onnx", "passes", "report.json"]
    assert not list(result.results_dir.parent.glob(".*partial*"))
    report = json.loads(result.report_path.read_text())
    assert report["quantize_mode"] == "int8" and report["opset"] == 8
    assert report["spec"]["backend"] == "modelopt.onnx" and report["spec"]["mode"] == "static_ptq"
    decisions = {row["name"]: row for row in report["decisions"]}
    assert set(decisions) == {"Convolution28", "Convolution110", "Times212"}
    assert decisions["Convolution28"]["quantized"] and "layers is empty" in decisions["Convolution28"]["reason"]
    # modelopt's GEMV heuristic (TensorRT target) keeps the 1x256 @ 256x10 MatMul in float: reported, not hidden
    assert "declined_by_backend" in decisions["Times212"]
    assert report["counts"]["quantized"] == 2 and report["counts"]["declined_by_backend"] == 1
    assert any(w.startswith("Times212:") for w in report["warnings"])
    canonicalize = ["fold-constants", "fold-batchnorm", "remove-identity"]  # a round that changes, one that confirms
    assert [p["pass"] for p in report["passes"]] == [
        "load-and-check", *canonicalize, *canonicalize, "match-layers", "check-calibration", "quantize-modelopt",
        "verify-quantization"]
    assert report["timings"]["quantize-modelopt"] > 0 and report["timings"]["total_s"] >= report["timings"]["quantize-modelopt"]
    assert {"onnx", "onnx-ir", "nvidia-modelopt"} <= set(report["versions"])
    assert report["calibration"]["samples"] == CALIBRATION and report["calibration"]["random"] is False
    model = onnx.load(str(result.model_path))
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all({p.key: p.value for p in n.metadata_props}.get(PROVENANCE_KEY) == "quantize-modelopt" for n in qdq)
    ranges = result.facts["ranges"]
    assert "Input3" in ranges and ranges["Input3"]["amax"][0] == pytest.approx(255, rel=0.05)
    # dumps of the passes that changed the graph
    names = sorted(p.name for p in (result.results_dir / "passes").iterdir())
    assert "09-quantize-modelopt.diff" in names and "02-fold-batchnorm.txt" not in names
    diff = (result.results_dir / "passes" / "09-quantize-modelopt.diff").read_text()
    assert diff.startswith("# ops: +DequantizeLinear")


@pytest.mark.slow
def test_cnn_mnist_pytorch_through_the_cli(tmp_path, data_dir, capsys):
    spec = tmp_path / "q.yaml"
    spec.write_text(
        "quantize:\n"
        "  device: cpu\n"
        "  target: onnxruntime\n"
        "  layers:\n"
        "    - module_name: Conv\n"
        "    - module_name: '*no_such_layer*'\n"
        f"  calibration:\n    data: {data_dir / 'digits01.npz'}\n"
    )
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(["compile", CNN_MNIST_PYTORCH, "--spec", spec, "-o", out,
                                    "--print-after", "fold-constants", "--json", "--no-compare"], capsys)
    assert code == 0, stderr
    assert "pattern layers[1] '*no_such_layer*' matches nothing" in stderr
    text, _, report_text = stdout.partition("\n{")
    assert text.startswith("# tao-qc text") and "# ops (" in text
    report = json.loads("{" + report_text)
    assert report["warnings"][0] == "pattern layers[1] '*no_such_layer*' matches nothing"
    kinds = {row["type"]: row["quantized"] for row in report["decisions"]}
    assert kinds == {"Conv": True, "Gemm": False}
    images, _ = digits()
    evaluation = images[EVALUATION] / np.float32(255)
    fp32 = predict(CNN_MNIST_PYTORCH, PYTORCH_MNIST_INPUT, evaluation).argmax(1)
    int8 = predict(out / "cnn_mnist_pytorch.int8.onnx", PYTORCH_MNIST_INPUT, evaluation).argmax(1)
    assert np.mean(int8 == fp32) >= 0.99
    model = onnx.load(str(out / "cnn_mnist_pytorch.int8.onnx"))
    gemm_inputs = {i for n in model.graph.node if n.op_type == "Gemm" for i in n.input}
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not gemm_inputs & dq_outputs  # the Gemms stay float


@pytest.mark.slow
def test_ultraface_detector_from_an_image_folder(tmp_path, shared_models):
    spec = {"quantize": {"device": "cpu", "skip_names": ["*headers*"],
                         "calibration": {"data": str(shared_models / "ultraface_rfb320"), "size": [240, 320],
                                         "mean": [127.0], "std": [128.0], "max_samples": 4}}}
    result = compile_model(shared_models / "ultraface_rfb320.onnx", spec, results_dir=tmp_path / "out", compare=False)
    report = result.report
    assert report["counts"]["quantized"] > 10
    assert all(not row["quantized"] for row in report["decisions"] if "headers" in row["name"])
    # BatchNorm folded even though its parameters were graph inputs (old IR)
    assert report["passes"][2]["stats"]["batchnorm_folded"] >= 1
    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.spec import CalibrationSpec

    batches = open_inputs(str(shared_models / "ultraface_rfb320"), model_inputs(onnx.load(str(shared_models / "ultraface_rfb320.onnx"))),
                          calibration=CalibrationSpec(size=[240, 320], mean=[127.0], std=[128.0]))
    feeds = batches.first()
    ref = session(shared_models / "ultraface_rfb320.onnx").run(None, feeds)
    got = session(result.model_path).run(None, feeds)
    for a, b in zip(ref, got):
        cosine = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.99
    # the face the model finds in FP32 is still its best-scoring anchor in INT8
    assert ref[0][0, :, 1].argmax() == got[0][0, :, 1].argmax()


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, nothing that looks like a result


def _bad_models(root: Path) -> dict[str, Path]:
    from onnx import helper

    truncated = root / "truncated.onnx"
    truncated.write_bytes(MNIST_CNTK.read_bytes()[:5000])
    text = root / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    relu = root / "relu.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(relu))
    return {"truncated": truncated, "text": text, "relu": relu, "missing": root / "missing.onnx"}


def _calibration_files(root: Path) -> dict[str, Path]:
    images, _ = digits()
    files = {}
    files["wrong_name"] = root / "wrong_name.npz"
    np.savez(files["wrong_name"], image=images[:4])
    files["wrong_shape"] = root / "wrong_shape.npz"
    np.savez(files["wrong_shape"], **{MNIST_INPUT: images[:4, :, :20, :20]})
    files["wrong_dtype"] = root / "wrong_dtype.npz"
    np.savez(files["wrong_dtype"], **{MNIST_INPUT: images[:4].astype(np.float64)})
    nan = images[:4].copy()
    nan[2, 0, 5, 5] = np.nan
    files["nan"] = root / "nan.npz"
    np.savez(files["nan"], **{MNIST_INPUT: nan})
    inf = images[:4].copy()
    inf[1, 0, 3, 3] = np.inf
    files["inf"] = root / "inf.npz"
    np.savez(files["inf"], **{MNIST_INPUT: inf})
    return files


BAD_CASES = [
    # (model, calibration, extra spec yaml, expected message fragment)
    ("truncated", "good", "", "is not a valid ONNX model (truncated, not ONNX, or broken)"),
    ("text", "good", "", "is not a valid ONNX model (truncated, not ONNX, or broken)"),
    ("missing", "good", "", "does not exist"),
    ("relu", "good", "", "has no Conv, Gemm or MatMul node"),
    ("mnist", "good", "  layers:\n    - module_name: '*typo*'\n", "select no Conv/Gemm/MatMul node"),
    ("mnist", "none", "", "quantize.calibration.data: no data given"),
    ("mnist", "wrong_name", "", "has no array named 'Input3'"),
    ("mnist", "wrong_shape", "", "needs size 28 on axis 2"),
    ("mnist", "wrong_dtype", "", "is float64 but input"),
    ("mnist", "nan", "", "NaN or Inf values (sample 2)"),
    ("mnist", "inf", "", "NaN or Inf values (sample 1)"),
    ("mnist", "good", "  layers:\n    - module_name: Conv\n      weights: {dtype: fp8_e5m2}\n      activations: {dtype: fp8_e5m2}\n",
     "fp8_e5m2 was asked for Convolution28, Convolution110"),
    ("mnist", "good", "  layers:\n    - module_name: Convolution28\n    - module_name: Convolution110\n"
                      "      weights: {dtype: fp8_e4m3fn}\n      activations: {dtype: fp8_e4m3fn}\n",
     "this spec mixes fp8_e4m3fn: Convolution110; int8: Convolution28"),
    ("mnist", "good", "  layers:\n    - module_name: Conv\n      activations: {dtype: native}\n",
     "ask for weights int8 and activations native"),
]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("bad")
    models = _bad_models(root) | {"mnist": MNIST_CNTK}
    calibration = _calibration_files(root) | {"good": data_dir / "digits.npz"}
    return root, models, calibration


@pytest.mark.parametrize(("model", "calibration", "extra", "expected"), BAD_CASES,
                         ids=[f"{m}-{c}-{i}" for i, (m, c, _, _) in enumerate(BAD_CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, bad_inputs, capsys, model, calibration, extra, expected):
    _, models, files = bad_inputs
    spec = tmp_path / "q.yaml"
    data = f"  calibration:\n    data: {files[calibration]}\n" if calibration != "none" else ""
    spec.write_text(f"quantize:\n  device: cpu\n{data}{extra}")
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(["compile", models[model], "--spec", spec, "-o", out], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("tao-qc: error:")]
    assert code == 2, stderr
    assert len(lines) == 1 and expected in lines[0], stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.yaml"]  # no results, no partial folder, no reproducer


def test_results_dir_that_is_a_file_is_refused(tmp_path, data_dir, capsys):
    target = tmp_path / "results"
    target.write_text("keep me")
    code, _, stderr = run_cli(["compile", MNIST_CNTK, "--device", "cpu",
                               "--calibration-data", data_dir / "digits.npz", "-o", target], capsys)
    assert code == 2 and "is a file, not a folder" in stderr
    assert target.read_text() == "keep me"


def test_a_failed_run_keeps_the_previous_results(mnist_cntk_run, tmp_path, capsys):
    results = mnist_cntk_run.results_dir
    before = {p.name: sha(p) for p in results.iterdir() if p.is_file()}
    bad = tmp_path / "nan.npz"
    images, _ = digits()
    images = images[:3].copy()
    images[0, 0, 0, 0] = np.nan
    np.savez(bad, **{MNIST_INPUT: images})
    code, _, stderr = run_cli(["compile", MNIST_CNTK, "--device", "cpu",
                               "--calibration-data", bad, "-o", results], capsys)
    assert code == 2 and "NaN or Inf" in stderr
    assert {p.name: sha(p) for p in results.iterdir() if p.is_file()} == before
    assert not list(results.parent.glob(".results*partial"))


def test_results_dir_holding_other_files_or_the_model_is_refused(tmp_path, data_dir, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    code, _, stderr = run_cli(["compile", MNIST_CNTK, "--device", "cpu",
                               "--calibration-data", data_dir / "digits.npz", "-o", folder], capsys)
    assert code == 2 and "holds no tao-qc results" in stderr
    assert (folder / "thesis.tex").read_text() == "precious"
    model = folder / "m.onnx"
    model.write_bytes(MNIST_CNTK.read_bytes())
    code, _, stderr = run_cli(["compile", model, "--device", "cpu", "--calibration-data", data_dir / "digits.npz",
                               "-o", folder], capsys)
    assert code == 2 and "holds the input model" in stderr


def test_default_results_dir_is_beside_the_working_directory(tmp_path, data_dir, monkeypatch):
    from tao_qc.compile import default_results_dir

    monkeypatch.chdir(tmp_path)
    assert default_results_dir(MNIST_CNTK) == tmp_path / "mnist_cntk.tao-qc"


def test_unknown_print_after_pass_is_refused(tmp_path, data_dir, capsys):
    code, _, stderr = run_cli(["compile", MNIST_CNTK, "--device", "cpu", "--calibration-data",
                               data_dir / "digits.npz", "-o", tmp_path / "r", "--print-after", "fold-everything"], capsys)
    assert code == 2 and "no pass named fold-everything" in stderr and "fold-batchnorm" in stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_model_with_external_weights_compiles(tmp_path, data_dir, capsys):
    model = onnx.load(str(CNN_MNIST_PYTORCH))
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(model, str(folder / "net.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="net.weights", size_threshold=0)
    assert (folder / "net.weights").stat().st_size > 50_000
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(["compile", folder / "net.onnx", "--device", "cpu", "--target", "onnxruntime",
                                    "--calibration-data", data_dir / "digits01.npz", "-o", out, "--no-compare",
                                    "--dump-passes"], capsys)
    assert code == 0, stderr
    assert str(out / "net.int8.onnx") in stdout
    images, _ = digits()
    evaluation = images[EVALUATION][:100] / np.float32(255)
    fp32 = predict(CNN_MNIST_PYTORCH, PYTORCH_MNIST_INPUT, evaluation).argmax(1)
    int8 = predict(out / "net.int8.onnx", PYTORCH_MNIST_INPUT, evaluation).argmax(1)
    assert np.mean(int8 == fp32) >= 0.99
    # --dump-passes alone means after-all: every pass has its graph, text and (after the first) diff
    passes = json.loads((out / "passes" / "summary.json").read_text())
    for row in passes:
        stem = f"{row['index']:02d}-{row['pass']}"
        assert (out / "passes" / f"{stem}.txt").is_file() and (out / "passes" / f"{stem}.onnx").is_file()
        assert row["index"] == 0 or (out / "passes" / f"{stem}.diff").is_file()


@pytest.mark.slow
def test_fp8_e4m3fn_layers_give_an_fp8_graph(tmp_path):
    from _compile_helpers import export_zoo

    model = export_zoo("transformer_block", tmp_path)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 16, 128)).astype(np.float32))
    spec = {"quantize": {"device": "cpu", "layers": [{"module_name": "Linear", "weights": {"dtype": "fp8_e4m3fn"},
                                                       "activations": {"dtype": "fp8_e4m3fn"}}],
                         "calibration": {"data": str(tmp_path / "calib.npz"), "max_samples": 8}}}
    result = compile_model(model, spec, results_dir=tmp_path / "out", compare=False)
    assert result.model_path.name == "transformer_block.fp8.onnx"
    assert result.report["quantize_mode"] == "fp8" and result.report["counts"]["quantized"] == 4
    proto = onnx.load(str(result.model_path))
    zero_points = {i for n in proto.graph.node if n.op_type == "QuantizeLinear" for i in n.input[2:3]}
    types = {t.data_type for t in proto.graph.initializer if t.name in zero_points}
    assert types == {onnx.TensorProto.FLOAT8E4M3FN}
    assert all(r["dtype"].startswith("float8") for r in result.facts["ranges"].values())
