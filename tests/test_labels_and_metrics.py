"""Labels and metrics checked together when the spec is read (issue 26): which data set each measure
runs on, which labels go with it, and a one-line spec error, before any calibration, where a metric
that needs labels would run on data without them."""

from __future__ import annotations

import pytest

from tao_qc.errors import SpecError
from tao_qc.spec import load_spec
from tao_qc.spec.datasets import ACCURACY_DATA, CALIBRATION_DATA, COMPARE_DATA, measures

USER_METRIC = "tao_qc.corpus:text_accuracy"


def _spec(tmp_path, text: str):
    path = tmp_path / "q.yaml"
    path.write_text(text)
    for name in ("held.npz", "held_texts.npy", "test.npz", "test_texts.npy", "cal.npz"):
        (tmp_path / name).write_bytes(b"")
    return load_spec(path)


def test_the_issues_spec_measures_the_final_metric_on_the_labelled_accuracy_data_and_says_so(tmp_path):
    """accuracy with data, labels and a user metric; compare.data without labels (issue 26's run,
    whose report read "TypeError: 'NoneType' object is not iterable")."""
    spec = _spec(tmp_path, "quantize:\n"
                           "  compare: {data: test.npz}\n"
                           f"  accuracy: {{data: held.npz, labels: held_texts.npy, metric: '{USER_METRIC}', max_drop: 0.01}}\n")
    plan = measures(spec)
    assert plan.metric_needs_labels
    assert plan.comparison.key == COMPARE_DATA and plan.comparison.labels is None
    assert plan.final.key == ACCURACY_DATA and plan.final.labels.endswith("held_texts.npy")
    assert "needs labels and quantize.compare.data has none" in plan.final_note
    assert "quantize.compare.labels" in plan.final_note


def test_labelled_comparison_data_keeps_the_final_metric_on_held_out_data(tmp_path):
    spec = _spec(tmp_path, "quantize:\n"
                           "  compare: {data: test.npz, labels: test_texts.npy}\n"
                           f"  accuracy: {{data: held.npz, labels: held_texts.npy, metric: '{USER_METRIC}'}}\n")
    plan = measures(spec)
    assert plan.final.key == COMPARE_DATA and plan.final.labels.endswith("test_texts.npy") and plan.final_note is None
    assert plan.accuracy.labels.endswith("held_texts.npy")


def test_compare_labels_never_label_the_accuracy_data(tmp_path):
    with pytest.raises(SpecError) as error:
        _spec(tmp_path, "quantize:\n"
                        "  compare: {data: test.npz, labels: test_texts.npy}\n"
                        "  accuracy:\n"
                        "    data: held.npz\n"
                        f"    metric: '{USER_METRIC}'\n")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'q.yaml'}:4:") and "quantize.accuracy.data:" in message
    assert f"accuracy.metric {USER_METRIC} needs labels; accuracy.data has none" in message
    assert "give accuracy.labels" in message


def test_top1_accuracy_without_any_labels_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match=r"quantize\.accuracy\.metric: metric top1_accuracy needs labels"):
        _spec(tmp_path, "quantize:\n  accuracy: {metric: top1_accuracy}\n")


def test_metrics_that_read_no_labels_run_on_the_comparison_data(tmp_path):
    for metric in ("cosine", "top1_agreement", USER_METRIC):  # a user metric with no labels anywhere gets None
        spec = _spec(tmp_path, f"quantize:\n  compare: {{data: test.npz}}\n  accuracy: {{data: held.npz, metric: '{metric}'}}\n")
        plan = measures(spec)
        assert not plan.metric_needs_labels
        assert plan.final.key == COMPARE_DATA and plan.final_note is None


def test_labels_without_data_follow_the_calibration_samples(tmp_path):
    spec = _spec(tmp_path, f"quantize:\n  accuracy: {{labels: held_texts.npy, metric: '{USER_METRIC}'}}\n")
    plan = measures(spec)
    assert plan.accuracy.key == plan.comparison.key == plan.final.key == CALIBRATION_DATA
    assert plan.comparison.labels.endswith("held_texts.npy") and plan.final_note is None


# ---------------------------------------------------------------------------------------------
# Issue 26's run, end to end on the real PP-OCRv5 recognizer (a few lines: the point is where each
# measure runs and what the report says, not the accuracy reached)


def test_the_ocr_spec_of_issue_26_reports_the_text_accuracy_and_no_python_error(shared_models, tmp_path, capsys):
    import json

    import numpy as np

    from _compile_helpers import run_cli
    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    np.savez(tmp_path / "cal.npz", x=corpus.recognizer_input(lines.files[:4]))
    np.savez(tmp_path / "held.npz", x=corpus.recognizer_input(lines.files[4:8]))
    np.save(tmp_path / "held_texts.npy", np.array(lines.texts[4:8]))
    np.savez(tmp_path / "test.npz", x=corpus.recognizer_input(lines.files[8:12]))
    # max_drop 1: met whatever plain INT8 reads, so no fallback runs (this is about the report).
    spec = tmp_path / "q.yaml"
    spec.write_text("quantize:\n  target: onnxruntime\n  calibration: {data: cal.npz, batch_size: 4}\n"
                    "  compare: {data: test.npz}\n"
                    f"  accuracy: {{data: held.npz, labels: held_texts.npy, metric: '{USER_METRIC}', max_drop: 1.0}}\n")
    code, out, err = run_cli(["compile", shared_models / "ppocrv5_rec.onnx", "--spec", spec, "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    final = json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]["final"]
    assert final["metric"] == USER_METRIC and "error" not in final, final
    assert final["data_key"] == ACCURACY_DATA and "quantize.accuracy.data" in final["data"]
    assert 0.9 <= final["fp32"] <= 1.0  # FP32 reads the held lines (1 - CER)
    assert "quantize.compare.data has none" in final["note"]
    html = (tmp_path / "out" / "report.html").read_text()
    for text in (html, (tmp_path / "out" / "report.json").read_text(), out + err):
        for python_error in ("TypeError", "NoneType", "Traceback", "not iterable"):
            assert python_error not in text
