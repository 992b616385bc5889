"""Issue 36: a text detector is checked by the text regions it finds, FP32's against the quantized
model's, on a DB-style detector whose max ranges lose text that clipped ranges keep: the zoo's
(`tests/_text_map_helpers.py`), trained here, with one rare outlier channel."""

from __future__ import annotations

import json
import re
from html import escape

import numpy as np
import pytest
import torch

from _text_map_helpers import text_pages, trained_detector, with_outlier_channel
from tao_qc.driver import compile_model
from tao_qc.errors import AccuracyError

pytestmark = pytest.mark.xdist_group("text_map_detector")
OUTLIER = 100.0


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-map")
    calibration, _ = text_pages(16, seed=31)
    held, _ = text_pages(16, seed=32)
    model = with_outlier_channel(trained_detector(), OUTLIER, calibration)
    path = folder / "text_map.onnx"
    torch.onnx.export(model, torch.from_numpy(calibration[:1]), str(path), dynamo=False, input_names=["x"],
                      output_names=["maps"], dynamic_axes={"x": {0: "n"}, "maps": {0: "n"}})
    np.savez(folder / "cal.npz", x=calibration)
    np.savez(folder / "held.npz", x=held)
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
