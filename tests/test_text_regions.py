"""Issue 36: a text detector is checked by the text regions it finds, FP32's against the quantized
model's, on a DB-style detector whose max ranges lose text that clipped ranges keep: the zoo's
(`tests/_text_map_helpers.py`), trained here, with one rare outlier channel."""

from __future__ import annotations

import json
import re
from html import escape

import pytest

from _text_map_helpers import TextOrPaper, compile_inputs, trained_detector, with_outlier_channel
from tao_qc.driver import compile_model
from tao_qc.errors import AccuracyError

pytestmark = pytest.mark.xdist_group("text_map_detector")
OUTLIER = 100.0


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-map")
    compile_inputs(lambda pages: with_outlier_channel(trained_detector(), OUTLIER, pages), folder, "text_map", "maps")
    return folder


def _spec(folder, **quantize):
    return {"quantize": {"target": "onnxruntime", "onnxruntime": {"speed": "off"},
                         "calibration": {"data": str(folder / "cal.npz"), "batch_size": 8},
                         "compare": {"data": str(folder / "held.npz")}, **quantize}}


def _check(results):
    (check,) = json.loads((results / "report.json").read_text())["comparison"]["checks"]
    return check


def test_max_ranges_that_lose_lines_fail_the_default_check_and_clipped_ranges_pass(detector):
    results = detector / "max"
    with pytest.raises(AccuracyError, match="text regions found"):
        compile_model(detector / "text_map.onnx", _spec(detector, algorithm="max", accuracy={"fallback": "off"}),
                      results_dir=results)
    lost = _check(results)
    assert lost["metric"] == "region_agreement" and lost["default"] and not lost["passed"]
    clipped = compile_model(detector / "text_map.onnx", _spec(detector, algorithm="percentile",
                                                                 accuracy={"fallback": "off"}),
                            results_dir=detector / "percentile").report
    (output,) = clipped["comparison"]["outputs"]
    (check,) = clipped["comparison"]["checks"]
    assert check["metric"] == "region_agreement" and check["passed"] and check["value"] > lost["value"]
    assert output["regions"]["fp32"] >= 40  # the 16 held pages' lines


def test_the_default_compile_keeps_clipped_ranges_and_no_node_float(detector):
    """No metric, fallback's defaults: the clip step's ranges meet the region check, so nothing is
    kept float and the run exits 0."""
    spec = _spec(detector, accuracy={"data": str(detector / "held.npz")})
    report = compile_model(detector / "text_map.onnx", spec, results_dir=detector / "default").report
    (check,) = report["comparison"]["checks"]
    assert check["metric"] == "region_agreement" and check["passed"]
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "checks" and not accuracy["met_before_fallback"] and accuracy["reached"]
    assert "clipped" in accuracy["clipping"]["chosen"] and not (accuracy.get("search") or {}).get("kept_float")
    (step,) = accuracy["steps"]
    assert step["step"] == "clip" and re.fullmatch(r"text regions found [\d.]+ -> [\d.]+ \(needs 0\.97\)", step["in_words"])
    assert escape(step["in_words"]) in (detector / "default" / "report.html").read_text()


def test_a_segmenter_that_loses_text_fails_its_label_map_check_and_clipped_ranges_pass(tmp_path):
    """The zoo's detector read as a text/paper segmenter ([N, 2, H, W]), with a 50x outlier channel:
    max ranges lose text (bench/results/default-checks.md: 14 points of text IoU on unseen pages,
    while agreement per pixel, the default before, passed); its default check is the mIoU of the
    label maps, which fails them, and passes clipped ranges."""
    path = compile_inputs(lambda pages: TextOrPaper(with_outlier_channel(trained_detector(), 50.0, pages)).eval(),
                          tmp_path, "segmenter", "classes")
    with pytest.raises(AccuracyError, match="mIoU of the label maps"):
        compile_model(path, _spec(tmp_path, algorithm="max", accuracy={"fallback": "off"}), results_dir=tmp_path / "max")
    lost = _check(tmp_path / "max")
    assert lost["metric"] == "label_map_iou" and not lost["passed"] and lost["value"] < 0.93
    compile_model(path, _spec(tmp_path, algorithm="percentile", accuracy={"fallback": "off"}),
                  results_dir=tmp_path / "percentile")
    clipped = json.loads((tmp_path / "percentile" / "report.json").read_text())
    (check,) = clipped["comparison"]["checks"]
    (output,) = clipped["comparison"]["outputs"]
    assert check["metric"] == "label_map_iou" and check["passed"] and check["value"] == output["label_map_iou"]
    assert set(output["class_iou"]) == {"0", "1"} and min(output["class_iou"].values()) > 0.9
    assert "label-map mIoU" in (tmp_path / "percentile" / "report.html").read_text()
