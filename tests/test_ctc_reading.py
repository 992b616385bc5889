"""A CTC recognizer's default check reads its text (issue 36): the per-step softmax decoded greedily
(argmax, repeats merged, blanks dropped), compared with FP32's reading by 1 - edits / characters FP32
read. Per-step top-1 agreement stays in the output's figures: most steps are blanks and repeats whose
argmax flips without changing a character read, so it failed models that read exactly as FP32."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import onnx
import pytest
import torch

from _compile_helpers import run_cli, session
from tao_qc.evaluate import ctc_reading
from tao_qc.evaluate.checks import DEFAULT_MIN_POSITION_TOP1_AGREEMENT, DEFAULT_MIN_SEQUENCE_AGREEMENT, checks_for
from tao_qc.evaluate.measures import output_metrics
from tao_qc.spec import CompareSpec

# ---------------------------------------------------------------------------------------------
# The reading itself, on probabilities written by hand


def _one_hot(classes_per_step: list[list[int]], classes: int) -> np.ndarray:
    """[N, T, C] probabilities: 0.9 on each step's class, the rest spread evenly."""
    best = np.asarray(classes_per_step)
    probabilities = np.full((*best.shape, classes), 0.1 / (classes - 1), np.float32)
    np.put_along_axis(probabilities, best[..., None], 0.9, axis=2)
    return probabilities


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    steps = _one_hot([[0, 3, 3, 0, 3, 5, 5, 0, 0, 1]], classes=6)
    assert ctc_reading.greedy_decode(steps, blank=0) == [[3, 3, 5, 1]]
    assert ctc_reading.greedy_decode(steps, blank=5) == [[0, 3, 0, 3, 0, 1]]


@pytest.mark.parametrize(("rows", "classes", "blank"), [
    ([[0, 0, 4, 0, 0, 2, 2, 0]], 6, 0),  # PaddleOCR's and PyTorch CTCLoss's convention: the blank first
    ([[5, 5, 4, 5, 5, 2, 2, 5]], 6, 5),  # TensorFlow's ctc_loss and Keras's: the blank last
    ([[3, 3, 4, 3, 3, 2, 2, 3]], 6, None),  # the commonest class in the middle: no convention puts a blank there
    ([[0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1]], 6, None),  # class 0 at 1 step of 12: a class, not a blank
    ([[0, 0, 1, 0, 0, 1, 0, 0]], 2, None),  # face/background per anchor (UltraFace's [N, 4420, 2]): no alphabet
    ([[0] * 2000 + [3, 3] + [0] * 2000], 6, None),  # thousands of positions: a detector's anchors, not a line
])
def test_the_blank_is_the_commonest_class_where_a_convention_puts_one(rows, classes, blank):
    assert ctc_reading.blank_class(_one_hot(rows, classes)) == blank


def test_a_character_edge_moved_by_a_step_keeps_the_reading_that_per_step_agreement_fails():
    """Issue 36's recognizer: 0.79 per step read as FP32. Here every character's last step turns
    blank (its edge moves by one step): a third of the steps disagree, the text read is the same."""
    fp32 = _one_hot([[0, 7, 7, 0, 3, 3, 0, 9, 9, 0, 0, 0]] * 4, classes=12)
    edges = _one_hot([[0, 7, 0, 0, 3, 0, 0, 9, 0, 0, 0, 0]] * 4, classes=12)
    metrics = output_metrics("softmax", fp32, edges)
    assert metrics.position_top1_agreement == pytest.approx(0.75)  # below DEFAULT_MIN_POSITION_TOP1_AGREEMENT
    assert metrics.position_top1_agreement < DEFAULT_MIN_POSITION_TOP1_AGREEMENT
    assert (metrics.blank_class, metrics.sequence_agreement, metrics.characters_read) == (0, 1.0, 12)
    (check,) = checks_for(metrics, CompareSpec())
    assert check.metric == "sequence_agreement" and check.passed and check.default
    assert check.in_words() == f"sequence agreement 1 (needs {DEFAULT_MIN_SEQUENCE_AGREEMENT:g})"
    assert check.measures and not check.proxy_for and check.floor_basis  # the task's measure, said so


def test_a_changed_character_costs_its_share_of_the_text():
    fp32 = _one_hot([[0, 7, 7, 0, 3, 3, 0, 9, 9, 0]] * 2, classes=12)
    misread = _one_hot([[0, 7, 7, 0, 3, 3, 0, 9, 9, 0], [0, 7, 7, 0, 4, 4, 0, 9, 9, 0]], classes=12)
    metrics = output_metrics("softmax", fp32, misread)
    assert metrics.sequence_agreement == pytest.approx(1 - 1 / 6)  # one edit in six characters
    (check,) = checks_for(metrics, CompareSpec())
    assert not check.passed and check.in_words() == f"sequence agreement 0.833 (needs {DEFAULT_MIN_SEQUENCE_AGREEMENT:g})"


# ---------------------------------------------------------------------------------------------
# A second recognizer (tests/_ctc_helpers.py): 11 classes, the blank last, trained here


@pytest.fixture(scope="module")
def digit_string_recognizer(tmp_path_factory):
    """The recognizer exported, its data (calibration, held-out accuracy data, a test set with its
    text), and a broken twin: one channel of conv1 1000x larger, read back /1000 by conv2, so
    per-tensor INT8 of conv2's input flattens the other channels (a known culprit, as in
    tests/test_accuracy.py); the float twin computes what the recognizer does."""
    from _ctc_helpers import PerStepSoftmax, trained_recognizer
    from tao_qc.testing import zoo

    root = tmp_path_factory.mktemp("ctc")
    model, data = trained_recognizer()
    zoo.export_onnx(PerStepSoftmax(model).eval(), torch.from_numpy(data["calibration"][:1]), root / "reader.onnx",
                    dynamic_batch=True)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.conv1.weight[0] *= 1000.0
        broken.conv1.bias[0] *= 1000.0
        broken.conv2.weight[:, 0] /= 1000.0
    zoo.export_onnx(PerStepSoftmax(broken).eval(), torch.from_numpy(data["calibration"][:1]), root / "broken.onnx",
                    dynamic_batch=True)
    for name in ("calibration", "held", "test"):
        np.savez(root / f"{name}.npz", input=data[name])
    (root / "texts.json").write_text(json.dumps(data["test_texts"]))
    return root


def _spec(folder, accuracy: str) -> str:
    path = folder / "q.yaml"
    path.write_text("quantize:\n  target: onnxruntime\n  calibration: {data: calibration.npz, batch_size: 8}\n"
                    f"  compare: {{data: test.npz}}\n  accuracy: {accuracy}\n")
    return path


def _float_nodes(path):
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and not set(n.input[:2]) & dq}


def _reading(model, folder):
    x = np.load(folder / "test.npz")["input"]
    return session(model).run(None, {"input": x})[0]


def test_a_second_recognizer_with_no_metric_passes_its_reading_with_every_node_int8(digit_string_recognizer, capsys):
    """Issue 36's done-when, on a recognizer unlike PP-OCRv5's: no metric, `fallback: auto`, exit 0,
    nothing kept float, its text within the floor of FP32's; the report and the terminal name the
    check with its value and floor, never a margin."""
    folder = digit_string_recognizer
    out = folder / "out"
    code, stdout, stderr = run_cli(["compile", folder / "reader.onnx", "--spec",
                                    _spec(folder, "{data: held.npz, fallback: auto}"), "-o", out], capsys)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    (output,) = report["comparison"]["outputs"]
    assert (output["kind"], output["blank_class"]) == ("class_scores", 10)
    (check,) = report["comparison"]["checks"]
    assert check["metric"] == "sequence_agreement" and check["default"] and check["passed"]
    assert not report["accuracy"].get("kept_float") and _float_nodes(out / "reader.int8.onnx") == set()
    agreement, _ = ctc_reading.sequence_agreement(_reading(folder / "reader.onnx", folder),
                                                  _reading(out / "reader.int8.onnx", folder), blank=10)
    assert agreement == pytest.approx(check["value"]) and agreement >= DEFAULT_MIN_SEQUENCE_AGREEMENT

    said = f"sequence agreement {_words(check['value'], check['threshold'])} (needs {check['threshold']:g})"
    assert said in stdout
    html = (out / "report.html").read_text()
    assert '<div class="about" data-check="sequence_agreement">Measures the text read greedily' in html
    assert "Is the task's own measure" in html
    assert not re.search(r"checks -?\d", stderr + stdout + html)  # no bare margin anywhere


def _words(value, floor):
    from tao_qc.evaluate.results import value_in_words

    return value_in_words(value, floor)


def test_the_reading_check_fails_a_recognizer_whose_int8_text_is_lost(digit_string_recognizer, capsys):
    """The floor separates: plain INT8 of the broken twin reads worse text than FP32 by far, and the
    default check fails it (exit 1), naming the check, its value and its floor."""
    from tao_qc.testing.corpus import character_error_rate

    folder = digit_string_recognizer
    out = folder / "broken-out"
    code, _, stderr = run_cli(["compile", folder / "broken.onnx", "--spec",
                               _spec(folder, "{data: held.npz, fallback: off}"), "-o", out], capsys)
    report = json.loads((out / "report.json").read_text())
    (check,) = report["comparison"]["checks"]
    assert code == 1 and check["metric"] == "sequence_agreement" and not check["passed"], stderr
    texts = ["".join(map(str, t)) for t in json.loads((folder / "texts.json").read_text())]

    def cer(model):
        read = ctc_reading.greedy_decode(_reading(model, folder), blank=10)
        return character_error_rate(["".join(map(str, r)) for r in read], texts)

    assert cer(out / "broken.int8.onnx") > cer(folder / "broken.onnx") + 0.01
    assert "sequence agreement" in stderr and f"needs >= {check['threshold']:g}" in stderr
