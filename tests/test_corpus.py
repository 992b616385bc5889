"""Every real model of ../shared/models through `compile`, both targets, on realistic data.

The data is what each model's own clients feed it (tao_qc.corpus): photos preprocessed as each
detector was trained, text lines as PaddleOCR's recognizer takes them, pages composed from those
lines for the text detector, labelled digits for the MNIST models. Each compile runs to the end,
comparison and latency included: a comparison that fails is exit 1 with every result in place,
never a crash, and the quantized model keeps everything the source carried besides its computation.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from _compile_helpers import digits, run_cli, session
from tao_qc.testing import corpus
from tao_qc.driver import compile_model
from tao_qc.errors import AccuracyError
from tao_qc.ir.model_fields import SOURCE_PRODUCER_KEY, SPEC_HASH_KEY, VERSION_KEY

pytestmark = pytest.mark.slow

MODELS = ("mnist_cntk", "cnn_mnist_pytorch", "ultraface_rfb320", "yunet_n_320", "fastestdet", "ppocrv5_det", "ppocrv5_rec")
TARGETS = ("onnxruntime", "tensorrt")
CALIBRATION_LINES = 16
COMPARED_LINES = 16


def _data(name: str, folder: Path) -> tuple[Path, Path]:
    """(calibration, comparison) .npz files for one model, from the files beside it."""
    if name in ("mnist_cntk", "cnn_mnist_pytorch"):
        images, _ = digits()
        scale = np.float32(1.0 if name == "mnist_cntk" else 255.0)
        key = "Input3" if name == "mnist_cntk" else "0"
        calibration, comparison = images[:32] / scale, images[100:164] / scale
    elif name in corpus.PHOTO_MODELS:
        key, photos = "input", corpus.photos(name)
        calibration = comparison = photos
    elif name == "ppocrv5_rec":
        key = "x"
        lines = corpus.text_lines()
        calibration = corpus.recognizer_input(lines.files[:CALIBRATION_LINES])
        comparison = corpus.recognizer_input(lines.files[CALIBRATION_LINES:CALIBRATION_LINES + COMPARED_LINES])
    else:
        key = "x"
        pages = corpus.text_pages(corpus.text_lines(), count=6, size=(320, 320), lines_per_page=4)
        calibration, comparison = pages[:4], pages[4:]
    paths = folder / f"{name}.calibration.npz", folder / f"{name}.comparison.npz"
    np.savez(paths[0], **{key: calibration})
    np.savez(paths[1], **{key: comparison})
    return paths


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, shared_models) -> dict[tuple[str, str], dict]:
    """Each model compiled for each target: the result folder, the report and how compile ended."""
    runs = {}
    data = tmp_path_factory.mktemp("corpus-data")
    for name in MODELS:
        calibration, comparison = _data(name, data)
        for target in TARGETS:
            out = tmp_path_factory.mktemp("corpus") / f"{name}-{target}"
            # Fallback off: this is about every model getting through compile; accuracy fallback on real
            # models is bench/accuracy.py's (minutes per model), on a known culprit test_accuracy.py's.
            spec = {"quantize": {"target": target, "calibration": {"data": str(calibration), "batch_size": 4},
                                 "compare": {"data": str(comparison)}, "accuracy": {"fallback": "off"}}}
            try:
                compile_model(shared_models / f"{name}.onnx", spec, results_dir=out)
                ended = "passed"
            except AccuracyError as error:
                ended = f"failed: {error}"
            report = json.loads((out / "report.json").read_text())
            runs[name, target] = {"out": out, "report": report, "ended": ended}
    return runs


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_every_shared_model_compiles_to_the_end(compiled, name, target):
    run = compiled[name, target]
    report = run["report"]
    model = Path(report["output"])
    assert model.parent == run["out"] and model.is_file()
    assert (run["out"] / "report.html").is_file()
    comparison = report["comparison"]
    assert comparison["num_samples"] > 0 and not comparison["data_is_random"]
    assert (run["ended"] == "passed") == comparison["passed"], run["ended"]
    latency = [row for row in report["latency"]["rows"] if row["median_ms"]]
    assert len(latency) == 2  # FP32 and quantized, at the data's own shape
    assert report["counts"]["quantized"] > 0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_the_quantized_model_keeps_what_the_source_carried(compiled, shared_models, name, target):
    source = onnx.load(str(shared_models / f"{name}.onnx"), load_external_data=False)
    quantized = onnx.load(compiled[name, target]["report"]["output"], load_external_data=False)
    ours = {p.key: p.value for p in quantized.metadata_props}
    for prop in source.metadata_props:
        assert ours[prop.key] == prop.value  # every key, unchanged
    assert ours[VERSION_KEY] and ours[SPEC_HASH_KEY] == _digest(compiled[name, target]["report"])
    if source.producer_name:
        assert ours[SOURCE_PRODUCER_KEY].startswith(source.producer_name)
    assert quantized.producer_name == "tao-qc"
    for field in ("doc_string", "model_version", "domain"):
        assert getattr(quantized, field) == getattr(source, field)
    assert quantized.graph.name == source.graph.name and quantized.graph.doc_string == source.graph.doc_string
    docs = {v.name: v.doc_string for v in (*quantized.graph.input, *quantized.graph.output)}
    for value in (*source.graph.input, *source.graph.output):
        if value.name in docs:
            assert docs[value.name] == value.doc_string
    assert [o.name for o in quantized.graph.output] == [o.name for o in source.graph.output]
    opsets = {o.domain or "ai.onnx": o.version for o in quantized.opset_import}
    for opset in source.opset_import:
        assert opsets[opset.domain or "ai.onnx"] >= opset.version  # never downgraded
    assert {(f.domain, f.name) for f in source.functions} <= {(f.domain, f.name) for f in quantized.functions}


def _digest(report: dict) -> str:
    """The digest of the spec the report shows, computed here from its definition."""
    return hashlib.sha256(json.dumps(report["spec"], sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("target", TARGETS)
def test_the_recognizer_reads_with_the_characters_of_the_quantized_model(compiled, shared_models, target):
    """An OCR client decodes with the character list it finds in the model it loads."""
    quantized_path = compiled["ppocrv5_rec", target]["report"]["output"]
    characters = corpus.characters_from_metadata(onnx.load(quantized_path, load_external_data=False))
    assert characters == corpus.characters_from_metadata(onnx.load(str(shared_models / "ppocrv5_rec.onnx")))
    lines = corpus.text_lines().split(CALIBRATION_LINES)[1]
    lines = corpus.TextLines(lines.files[:COMPARED_LINES], lines.texts[:COMPARED_LINES])
    x = corpus.recognizer_input(lines.files)
    fp32 = corpus.ctc_greedy_decode(session(shared_models / "ppocrv5_rec.onnx").run(None, {"x": x})[0], characters)
    assert corpus.character_error_rate(fp32, lines.texts) < 0.05
    decoded = corpus.ctc_greedy_decode(session(quantized_path).run(None, {"x": x})[0], characters)
    assert len(decoded) == len(lines)  # the quantized model's outputs decode with its own list


def test_the_text_detector_compiles_from_the_command_line_without_a_device_and_times_on_this_cpu(
        tmp_path, shared_models, capsys):
    from tao_qc.spec.cpu import this_machine

    pages = corpus.text_pages(corpus.text_lines(), count=3, size=(320, 320), lines_per_page=4)
    np.savez(tmp_path / "pages.npz", x=pages)
    spec = tmp_path / "q.yaml"
    spec.write_text(f"quantize:\n  target: onnxruntime\n  onnxruntime: {{cpu: {this_machine().isa}}}\n"
                    "  calibration: {data: pages.npz}\n")
    code, stdout, stderr = run_cli(["compile", shared_models / "ppocrv5_det.onnx", "--spec", spec, "-o", tmp_path / "out"],
                                   capsys)
    assert code in (0, 1), stderr
    assert "quantize.device: auto: no CUDA device here" in stderr
    for name in ("ppocrv5_det.int8.onnx", "report.json", "report.html"):
        assert (tmp_path / "out" / name).is_file()
    assert "speed vs FP32: " in stdout and "at batch 1 in interleaved rounds" in stdout


def test_data_the_detector_cannot_take_is_one_line_naming_its_constraint(tmp_path, shared_models, capsys):
    pages = corpus.text_pages(corpus.text_lines(), count=2, size=(320, 320), lines_per_page=3)[:, :, :300, :]
    np.savez(tmp_path / "pages.npz", x=pages)
    code, _, stderr = run_cli(["compile", shared_models / "ppocrv5_det.onnx", "--calibration-data", tmp_path / "pages.npz",
                               "-o", tmp_path / "out"], capsys)
    assert code == 2
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("tao-qc: error: quantize.calibration.data: the model fails on x float32[1, 3, 300, 320]")
    assert error.endswith("multiples of 32")
    assert not (tmp_path / "out").exists()


def _faces(outputs: dict[str, np.ndarray], photos: np.ndarray) -> list:
    from tao_qc.evaluate.detection import DEFAULT_SCORE_THRESHOLD

    return [d.above(DEFAULT_SCORE_THRESHOLD) for d in corpus.decode_yunet(outputs, {"input": photos})]


def _yunet_outputs(path: Path, photos: np.ndarray) -> dict[str, np.ndarray]:
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    runs = [s.run(names, {"input": photo[None]}) for photo in photos]
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def test_yunet_decoder_finds_the_faces_of_each_photo(shared_models):
    photos = corpus.photos("yunet_n_320")
    faces = _faces(_yunet_outputs(shared_models / "yunet_n_320.onnx", photos), photos)
    assert len(faces) == len(photos) and all(len(f) >= 2 for f in faces)  # every photo shows people
    for found in faces:
        assert (found.boxes[:, 2:] > found.boxes[:, :2]).all()
        assert found.boxes.min() > -16 and found.boxes.max() < 320 + 16  # in the input's pixels
        sides = found.boxes[:, 2:] - found.boxes[:, :2]
        # face-shaped: upright, as tall as wide or taller (photos squeezed to 320 x 320 stretch them)
        assert np.all((sides[:, 1] / sides[:, 0] > 0.8) & (sides[:, 1] / sides[:, 0] < 3.0))


@pytest.mark.parametrize("target", TARGETS)
def test_yunet_passes_the_default_comparison_with_fallback_and_finds_fp32s_faces(tmp_path, shared_models, target, capsys):
    """Issue 13's goal for YuNet, through the command line: the default comparison (cosine per
    output over the photos) met with fallback auto within its float bound, FP32's faces still found."""
    from tao_qc.evaluate.detection import match_f1

    photos = corpus.photos("yunet_n_320")
    np.savez(tmp_path / "photos.npz", input=photos)
    spec = tmp_path / "q.yaml"
    spec.write_text(f"quantize:\n  target: {target}\n  calibration: {{data: photos.npz}}\n  compare: {{data: photos.npz}}\n")
    code, stdout, stderr = run_cli(["compile", shared_models / "yunet_n_320.onnx", "--spec", spec, "-o", tmp_path / "out"], capsys)
    assert code == 0, stderr
    # The photos without a face at stride 32 read lower alone, and the user is shown so.
    shown = re.search(r"output obj_32: cosine (0\.99\d+), lowest sample (0\.\d+)", stdout)
    assert shown and float(shown[2]) < 0.99, stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["comparison"]["passed"] and report["accuracy"]["reached"]
    assert all(check["passed"] for check in report["comparison"]["checks"] if check["metric"] == "cosine")
    kept = report["accuracy"].get("kept_float") or []
    assert len(kept) <= 0.25 * report["counts"]["candidates"]
    fp32 = _faces(_yunet_outputs(shared_models / "yunet_n_320.onnx", photos), photos)
    int8 = _faces(_yunet_outputs(Path(report["output"]), photos), photos)
    assert np.mean([match_f1(want, got) for want, got in zip(fp32, int8)]) >= 0.95
