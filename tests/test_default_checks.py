"""Default checks that fit what an output is (issue 26): class probabilities per position get top-1
agreement per position, a segmenter's per-pixel ones the mIoU of its label maps, saturated
probability maps the text regions found (issue 36), everything else the data-set cosine; each says
which default it is and why, and is marked `default`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tao_qc.evaluate.checks import (
    DEFAULT_MIN_LABEL_MAP_IOU,
    DEFAULT_MIN_POSITION_TOP1_AGREEMENT,
    DEFAULT_MIN_REGION_AGREEMENT,
    checks_for,
)
from tao_qc.evaluate.measures import output_kind, output_metrics
from tao_qc.evaluate.results import Check, ComparisonResult
from tao_qc.spec import CompareSpec

RNG = np.random.default_rng(0)


def _softmax(logits, axis):
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _steps(samples=4, steps=40, classes=300, blank=True):
    """A per-step softmax, one confident class per step: a CTC head's (blank, class 0, mostly), or with
    `blank` False a per-step classifier's (every class alike: no blank to decode by, so the default
    reads agreement per position; tests/test_ctc_reading.py has the CTC ones)."""
    logits = RNG.normal(0, 1, (samples, steps, classes))
    best = RNG.integers(1, classes, (samples, steps))
    if blank:
        best = np.where(RNG.random((samples, steps)) < 0.7, 0, best)
    np.put_along_axis(logits, best[..., None], 12.0, axis=2)
    return _softmax(logits, 2)


def _only(checks):
    (check,) = checks
    return check


def test_per_step_softmax_is_checked_by_top1_agreement_per_step_not_cosine():
    reference = _steps(blank=False)
    # INT8-like noise on the near-zero probabilities: every argmax kept, the cosine well under 0.99.
    candidate = np.clip(reference + RNG.normal(0, 2e-2, reference.shape) * (reference < 0.01), 0, 1).astype(np.float32)
    metrics = output_metrics("softmax", reference, candidate)
    assert (metrics.kind, metrics.class_axis) == ("class_scores", 2)
    assert metrics.cosine < 0.99 and metrics.position_top1_agreement == 1.0
    check = _only(checks_for(metrics, CompareSpec()))
    assert check.metric == "position_top1_agreement" and check.passed and check.default
    assert check.threshold == DEFAULT_MIN_POSITION_TOP1_AGREEMENT
    assert "class scores per position ([N, 40, 300], probabilities over axis 2)" in check.why
    assert "top-1 agreement per position 100.00%" in check.describe()


def test_a_changed_reading_fails_the_per_step_check():
    reference = _steps(blank=False)
    candidate = reference.copy()
    # 10% of steps read another class; a generator of its own, so that which steps flip (and the
    # measured agreement) does not depend on which tests ran before in this worker.
    flipped = np.random.default_rng(1).random(reference.shape[:2]) < 0.1
    candidate[flipped] = np.roll(reference[flipped], 1, axis=-1)
    check = _only(checks_for(output_metrics("softmax", reference, candidate), CompareSpec()))
    assert not check.passed and 0.85 < check.value < DEFAULT_MIN_POSITION_TOP1_AGREEMENT


def test_log_softmax_and_channel_first_class_maps_are_class_scores():
    assert output_kind(np.log(_steps())) == ("class_scores", 2)
    per_pixel = _softmax(RNG.normal(0, 3, (2, 5, 16, 16)), 1)  # a segmenter's [N, C, H, W]
    assert output_kind(per_pixel) == ("class_scores", 1)


def _label_maps(lost_rows: int = 0):
    """A segmenter's softmax over 3 classes on 4 pages of 64x64: paper (class 0) everywhere, a text
    block (class 1, 16x48 pixels a page) and a small stamp (class 2, 4x4 pixels a page); the candidate
    has `lost_rows` rows of each stamp read as paper."""
    labels = np.zeros((4, 64, 64), np.int64)
    labels[:, 8:24, 8:56] = 1
    labels[:, 40:44, 40:44] = 2
    candidate = labels.copy()
    candidate[:, 40:40 + lost_rows, 40:44] = 0
    one_hot = lambda maps: np.moveaxis(np.eye(3, dtype=np.float32)[maps], -1, 1) * 0.9 + 0.1 / 3  # noqa: E731
    return one_hot(labels), one_hot(candidate)


def test_a_segmenters_label_maps_are_checked_by_their_miou_against_fp32s():
    reference, candidate = _label_maps(lost_rows=0)
    metrics = output_metrics("classes", reference, candidate)
    assert (metrics.kind, metrics.class_axis) == ("class_scores", 1)
    check = _only(checks_for(metrics, CompareSpec()))
    assert check.metric == "label_map_iou" and check.default and check.passed and check.value == 1.0
    assert check.threshold == DEFAULT_MIN_LABEL_MAP_IOU and not check.proxy_for
    assert "segmenter's per-pixel class scores ([N, 3, 64, 64], probabilities over axis 1)" in check.why


def test_a_small_class_lost_fails_the_miou_where_agreement_per_pixel_passed():
    """Half of a small class read as the background: 32 of 16384 pixels, so agreement per pixel is
    0.998; the class's IoU is 0.5, and the mean over the three classes fails."""
    reference, candidate = _label_maps(lost_rows=2)
    metrics = output_metrics("classes", reference, candidate)
    assert metrics.position_top1_agreement > 0.99  # what the default read before
    assert metrics.class_iou[2] == pytest.approx(0.5) and metrics.class_iou[1] == 1.0
    check = _only(checks_for(metrics, CompareSpec()))
    assert not check.passed and check.value == pytest.approx((metrics.class_iou[0] + 1.0 + 0.5) / 3)
    assert "mIoU of the label maps 0.833 against FP32's (needs >= 0.95" in check.describe()


@pytest.mark.parametrize("values", [
    RNG.random((2, 100, 4)).astype(np.float32),  # normalized boxes: in [0, 1], no distribution
    (1 / (1 + np.exp(-RNG.normal(0, 3, (2, 80, 8, 8))))).astype(np.float32),  # multi-label sigmoid heads
    RNG.normal(0, 1, (2, 40, 300)).astype(np.float32),  # logits: nothing in them tells them from features
    RNG.random((2, 1, 32, 32)).astype(np.float32),  # a depth map scaled to [0, 1]: spread, not decided
])
def test_regression_outputs_keep_the_cosine(values):
    metrics = output_metrics("y", values, values * 1.001)
    assert metrics.kind == "values"
    check = _only(checks_for(metrics, CompareSpec()))
    assert check.metric == "cosine" and check.default and "cosine over the data set" in check.why


def _text_map(shift=0, lines=16):
    """A text detector's pages: 0 on the paper, 1 on `lines` lines of text 12 pixels high, a soft
    top edge; the last line of the last page is a short word."""
    pages = np.zeros((4, 1, 128, 128), np.float32)
    for line in range(lines):
        page, row = divmod(line, 4)
        top, width = 8 + 30 * row, 20 if line == lines - 1 else 100
        pages[page, 0, top:top + 12, 8 + shift:8 + shift + width] = 1.0
        pages[page, 0, top - 1, 8:8 + width] = 0.4
    return pages


def test_probability_map_is_checked_by_the_text_regions_found():
    reference = _text_map()
    metrics = output_metrics("maps", reference, _text_map(shift=1))  # every line moved by a pixel
    assert metrics.kind == "probability_map"
    check = _only(checks_for(metrics, CompareSpec()))
    assert check.metric == "region_agreement" and check.default and check.passed and check.value == 1.0
    assert check.threshold == DEFAULT_MIN_REGION_AGREEMENT and "text regions" in check.why
    assert metrics.regions == {"fp32": 16, "quantized": 16, "matched": 16}


def test_a_small_region_lost_fails_the_text_regions_where_the_map_iou_passed():
    """Issue 36's held-out DB detector: text lost at a map IoU of 0.94, which the old floor (0.8)
    passed. Here one short word of sixteen lines is lost."""
    reference = _text_map()
    lost = reference.copy()
    lost[3, 0, 98:110, :] = 0.1
    metrics = output_metrics("maps", reference, lost)
    assert metrics.mask_iou > 0.98  # what the map IoU saw
    check = _only(checks_for(metrics, CompareSpec()))
    assert not check.passed and check.value == pytest.approx(2 * 15 / (16 + 15))
    assert "text regions found 0.968 (needs >= 0.97" in check.describe()


def test_specks_below_the_region_score_are_not_text_and_a_split_line_is():
    """What the application reads: specks of probability 0.4 are dropped by DB's region score (the
    map IoU counted every speck pixel); a line cut in two is two regions, neither matching FP32's."""
    reference = _text_map()
    specks = reference.copy()
    specks[:, 0, 120:124, ::6] = 0.4
    specks[:, 0, 2:5, ::4] = 0.45
    assert _only(checks_for(output_metrics("maps", reference, specks), CompareSpec())).value == 1.0
    split = reference.copy()
    split[0, 0, :, 57:60] = 0.0  # halves of 49 and 48 pixels of 100: IoU 0.49 each
    metrics = output_metrics("maps", reference, split)
    assert metrics.regions == {"fp32": 16, "quantized": 20, "matched": 12}
    assert not _only(checks_for(metrics, CompareSpec())).passed


def test_tolerances_or_min_top1_agreement_replace_the_defaults():
    reference = _steps()
    checks = checks_for(output_metrics("softmax", reference, reference, atol=1e-3), CompareSpec(atol=1e-3))
    assert [(c.metric, c.default) for c in checks] == [("within_tolerance", False)]
    logits = RNG.normal(0, 1, (8, 10)).astype(np.float32)
    check = _only(checks_for(output_metrics("logits", logits, logits), CompareSpec(min_top1_agreement=0.95)))
    assert check.metric == "top1_agreement" and not check.default


def test_default_is_kept_in_report_json():
    result = ComparisonResult("a.onnx", "b.onnx", "onnxruntime", 4, "d", False, {},
                              checks=[Check("y", "cosine", 0.995, 0.99, True, "default for outputs", default=True),
                                      Check("y", "top1_agreement", 0.9, 0.95, False, "min_top1_agreement")])
    rows = json.loads(json.dumps(result.to_dict()))["checks"]
    assert [row["default"] for row in rows] == [True, False]


# ---------------------------------------------------------------------------------------------
# The real models of ../shared/models: FP32's own outputs on a few of their inputs


def test_the_ocr_recognizer_and_detector_outputs_are_recognised(shared_models):
    import onnxruntime as ort

    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    recognizer = ort.InferenceSession(str(shared_models / "ppocrv5_rec.onnx"), providers=["CPUExecutionProvider"])
    steps = recognizer.run(None, {"x": corpus.recognizer_input(lines.files[:2])})[0]
    assert output_kind(steps) == ("class_scores", 2)
    detector = ort.InferenceSession(str(shared_models / "ppocrv5_det.onnx"), providers=["CPUExecutionProvider"])
    pages = corpus.text_pages(lines, count=1, size=(320, 320), lines_per_page=4)
    assert output_kind(detector.run(None, {"x": pages})[0]) == ("probability_map", None)


def test_the_text_detectors_plain_int8_meets_its_default_map_check_that_the_cosine_failed(shared_models, tmp_path):
    """PP-OCRv5's detector, plain INT8 for onnxruntime: every text line found (issue 26: the cosine
    default sent fallback into 16 float nodes where the page reading was unchanged)."""
    from tao_qc.driver import compile_model
    from tao_qc.testing import corpus

    pages = corpus.text_pages(corpus.text_lines(), count=8, size=(320, 320), lines_per_page=4)
    np.savez(tmp_path / "cal.npz", x=pages[:4])
    np.savez(tmp_path / "cmp.npz", x=pages[4:])
    spec = {"quantize": {"target": "onnxruntime", "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 4},
                         "compare": {"data": str(tmp_path / "cmp.npz")}, "accuracy": {"fallback": "off"}}}
    report = compile_model(shared_models / "ppocrv5_det.onnx", spec, results_dir=tmp_path / "out").report
    (output,) = report["comparison"]["outputs"]
    check = _only(report["comparison"]["checks"])
    assert output["kind"] == "probability_map" and output["cosine"] < 0.99  # what the old default failed
    assert check["metric"] == "region_agreement" and check["default"] and check["passed"]
    assert output["mask_iou"] < 0.95 and output["regions"]["matched"] == output["regions"]["fp32"] > 0
