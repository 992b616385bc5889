"""Fallback with no metric chases the default check that fits the output (issue 26): a reader whose
output is a per-step softmax [N, T, C], as a CTC recognizer's, gets top-1 agreement per step as its
default target, and fallback stops once that holds.

The reader is trained here on rows of four scikit-learn digits (16 steps, four per digit) and then
given a known culprit, as tests/test_accuracy.py does: one channel of conv1's output 1000x larger,
read back /1000 by conv2, so per-tensor INT8 of conv2's input flattens the other fifteen channels.
The float model computes what it did; conv2, and only conv2, needs to stay float.
"""

from __future__ import annotations

import json
import re
from html import escape

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from _compile_helpers import run_cli, session
from _frontends_helpers import digits_split, train
from tao_qc.evaluate.measures import position_top1_agreement
from tao_qc.testing import zoo

pytestmark = pytest.mark.slow

CULPRIT = "/reader/conv2/Conv"
DIGITS_PER_ROW = 4


class DigitRowReader(nn.Module):
    """A row of four 8x8 digits (1x8x32) read as 16 steps of class logits [N, 10, 16] (cross_entropy's
    layout for training; `PerStepSoftmax` gives the deployed [N, T, C] probabilities)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Conv1d(32 * 4, 10, 3, padding=1)  # each step sees its neighbours, as a sequence head does

    def forward(self, x):
        features = self.relu(self.conv2(self.relu(self.conv1(x))))  # [N, 32, 4, 16]
        return self.head(features.flatten(1, 2))


class PerStepSoftmax(nn.Module):
    def __init__(self, reader: nn.Module):
        super().__init__()
        self.reader = reader

    def forward(self, x):
        return torch.softmax(self.reader(x), dim=1).transpose(1, 2)  # [N, T, C]


def _rows(images, labels, count, seed):
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(labels), (count, DIGITS_PER_ROW))
    rows = np.concatenate([images[pick[:, k]] for k in range(DIGITS_PER_ROW)], axis=3)  # [count, 1, 8, 32]
    return rows.astype(np.float32), np.repeat(labels[pick], 4, axis=1)  # four steps per digit


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    x_train, y_train, x_test, y_test = digits_split()
    rows, steps = _rows(x_train, y_train, 1400, seed=1)
    model = train(DigitRowReader(), rows, steps, epochs=6)
    with torch.no_grad():
        model.conv1.weight[0] *= 1000.0
        model.conv1.bias[0] *= 1000.0
        model.conv2.weight[:, 0] /= 1000.0
    held, _ = _rows(x_test, y_test, 120, seed=2)
    test, _ = _rows(x_test, y_test, 200, seed=3)
    zoo.export_onnx(PerStepSoftmax(model).eval(), torch.from_numpy(held[:1]), root / "reader.onnx", dynamic_batch=True)
    np.savez(root / "calibration.npz", input=rows[:64])
    np.savez(root / "held.npz", input=held)
    np.savez(root / "test.npz", input=test)
    return root


def _float_nodes(path):
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and not set(n.input[:2]) & dq}


def test_a_per_step_reader_gets_per_step_agreement_as_its_target_and_fallback_stops_once_it_holds(reader, capsys):
    spec = reader / "q.yaml"
    spec.write_text("quantize:\n  target: onnxruntime\n  calibration: {data: calibration.npz, batch_size: 8}\n"
                    "  compare: {data: test.npz}\n  accuracy: {data: held.npz, max_float_fraction: 0.34}\n")  # 1 of 3 nodes
    out = reader / "out"
    code, _, stderr = run_cli(["compile", reader / "reader.onnx", "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    (output,) = report["comparison"]["outputs"]
    assert output["kind"] == "class_scores" and output["shape"] == [16, 10] and output["class_axis"] == 2
    (check,) = report["comparison"]["checks"]
    assert check["metric"] == "position_top1_agreement" and check["default"] and check["passed"]
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "checks" and not accuracy["met_before_fallback"] and accuracy["reached"]
    # It stopped once per-step agreement held: the culprit alone is float, nothing more.
    assert [k["name"] for k in accuracy["search"]["kept_float"]] == [CULPRIT]
    # Every step named in the check's words, never the margin the search steers by; the speed of one
    # timed pass said to be that, not the headline's.
    html = (out / "report.html").read_text()
    for step in accuracy["search"]["steps"]:
        assert re.fullmatch(r"position top-1 [\d.]+ \(needs 0\.95\)", step["in_words"]), step
        assert escape(step["in_words"]) in html
    assert "Speed against FP32 in one timed pass of each model (the latency table's" in html
    assert not re.search(r"checks -?\d", stderr + html)
    assert _float_nodes(out / "reader.int8.onnx") == {CULPRIT}
    x = np.load(reader / "test.npz")["input"]
    fp32 = session(reader / "reader.onnx").run(None, {"input": x})[0]
    int8 = session(out / "reader.int8.onnx").run(None, {"input": x})[0]
    assert position_top1_agreement(fp32, int8, 2) >= 0.99


def test_the_ocr_recognizer_with_no_metric_stops_at_the_first_step_that_reads_as_fp32(shared_models, tmp_path):
    """PP-OCRv5's recognizer (a CTC head: per-step softmax [N, 40, 18385]), no metric: plain INT8 misses
    its default check, the text read against FP32's (issue 36; per-step agreement before it, the cosine
    before that), clipping the ranges meets it, and fallback stops there with every node INT8, reading
    unseen lines within half a point of FP32's CER. The report names the check, value and floor at
    every step, never the margin the search steers by."""
    from tao_qc.driver import compile_model
    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    np.savez(tmp_path / "cal.npz", x=corpus.recognizer_input(lines.files[:16]))
    np.savez(tmp_path / "held.npz", x=corpus.recognizer_input(lines.files[16:48]))
    spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": "avx512_vnni"},
                         "calibration": {"data": str(tmp_path / "cal.npz"), "batch_size": 8},
                         "accuracy": {"data": str(tmp_path / "held.npz")}}}
    result = compile_model(shared_models / "ppocrv5_rec.onnx", spec, results_dir=tmp_path / "out")
    accuracy = result.report["accuracy"]
    assert accuracy["metric"] == "checks" and not accuracy["met_before_fallback"] and accuracy["reached"]
    assert [step["step"] for step in accuracy["steps"]] == ["clip"] and accuracy["steps"][0]["met"]
    assert "search" not in accuracy and not accuracy.get("kept_float")  # nothing kept float by fallback
    (check,) = result.report["comparison"]["checks"]
    assert check["metric"] == "sequence_agreement" and check["default"] and check["passed"]
    (step,) = accuracy["steps"]
    assert re.fullmatch(r"sequence agreement 0\.\d+ -> 0\.\d+ \(needs 0\.97\)", step["in_words"]), step
    html = (tmp_path / "out" / "report.html").read_text()
    assert f'<td colspan="2">{escape(step["in_words"])}</td>' in html  # the steps table, in the check's words
    assert f"every selected node quantized: {accuracy['quantized_in_words']}." in html
    assert not re.search(r"checks &gt;= 0|checks -?\d", html)

    unseen, texts = corpus.recognizer_input(lines.files[100:164]), lines.texts[100:164]
    characters = corpus.characters_from_metadata(onnx.load(str(result.model_path)))
    fp32 = session(shared_models / "ppocrv5_rec.onnx").run(None, {"x": unseen})[0]
    int8 = session(result.model_path).run(None, {"x": unseen})[0]
    fp32_cer = corpus.character_error_rate(corpus.ctc_greedy_decode(fp32, characters), texts)
    int8_cer = corpus.character_error_rate(corpus.ctc_greedy_decode(int8, characters), texts)
    assert int8_cer <= fp32_cer + 0.005, (int8_cer, fp32_cer)
