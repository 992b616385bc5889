"""Latency: statistics, feeds, and `tao-qc bench` on the ResNet-18-shaped zoo model (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _compile_helpers import ASSETS, MNIST_CNTK, run_cli
from _runtimes_helpers import build_assets, without_tensorrt
from tao_qc.data import InputInfo
from tao_qc.errors import InputError
from tao_qc.evaluate.latency import BatchNotSupported, LatencyResult, measure_latency, summarize, synthetic_feeds


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.getbasetemp())


def test_summarize_statistics():
    times = [0.004, 0.001, 0.002, 0.003, 0.010]
    result = summarize(times, batch_size=8, model="m.onnx", runtime="onnxruntime", threads=2)
    assert result.median_ms == pytest.approx(3.0)
    assert result.p90_ms == pytest.approx(np.percentile(np.array(times) * 1e3, 90))
    assert result.min_ms == pytest.approx(1.0) and result.mean_ms == pytest.approx(4.0)
    assert result.throughput == pytest.approx(8 / 0.003)
    assert result.runs == 5 and result.to_dict()["batch_size"] == 8


def test_synthetic_feeds_follow_the_model_inputs():
    feeds = synthetic_feeds([InputInfo("x", ("batch", 3, 8, 8), np.dtype("float32")),
                             InputInfo("ids", (None, 4), np.dtype("int64"))], 5)
    assert feeds["x"].shape == (5, 3, 8, 8) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (5, 4) and feeds["ids"].dtype == np.int64
    with pytest.raises(BatchNotSupported, match="fixed batch 1"):
        synthetic_feeds([InputInfo("x", (1, 3, 8, 8), np.dtype("float32"))], 8)
    open_sizes = [InputInfo("x", ("n", 3, "h", "w"), np.dtype("float32"))]
    with pytest.raises(InputError, match=r"x float32\[\?,3,\?,\?\] has dynamic dimensions besides the batch "
                                         r"\(axis 2, 3\): give data, or --input-shapes x:1x3xNxN"):
        synthetic_feeds(open_sizes, 1)
    # the open sizes from the data's (or --input-shapes') shape; the batch is the one asked for
    assert synthetic_feeds(open_sizes, 8, shapes={"x": (1, 3, 64, 96)})["x"].shape == (8, 3, 64, 96)
    with pytest.raises(InputError, match=r"--input-shapes: x 1x4x64x96 does not fit the model's input x float32\[\?,3,\?,\?\] \(axis 1\)"):
        synthetic_feeds(open_sizes, 1, shapes={"x": (1, 4, 64, 96)})
    with pytest.raises(InputError, match="x has 3 dimensions"):
        synthetic_feeds(open_sizes, 1, shapes={"x": (1, 64, 96)})


def test_measure_latency_on_a_real_model():
    result = measure_latency(MNIST_CNTK, threads=1, warmup=2, runs=5)
    assert isinstance(result, LatencyResult)
    assert 0 < result.median_ms <= result.p90_ms and result.runs == 5 and result.threads == 1
    assert result.device == "cpu" and result.throughput > 0
    shaped = measure_latency(MNIST_CNTK, {"Input3": (1, 1, 28, 28)}, threads=1, warmup=0, runs=2)
    assert shaped.batch_size == 1
    with pytest.raises(InputError, match="not inputs of the model"):
        measure_latency(MNIST_CNTK, {"image": (1, 1, 28, 28)}, runs=1)


@pytest.mark.slow
def test_bench_prints_ratios_for_resnet18(assets, capsys):
    code, out, err = run_cli(["bench", assets.resnet18_fp32, assets.resnet18_int8, "--batch", "1,2", "--threads", 2,
                              "--warmup", 1, "--runs", 3], capsys)
    assert code == 0, err
    assert "ratio vs first" in out
    lines = [line for line in out.splitlines() if "resnet18" in line]
    assert len(lines) == 4
    assert all(line.rstrip(" │").endswith("x") for line in lines)  # every row has a ratio
    assert "1.00x" in lines[0] and "1.00x" in lines[2]


def test_bench_json_and_fixed_batch_rows_are_skipped(capsys):
    model = MNIST_CNTK
    code, out, err = run_cli(["bench", model, model, "--batch", "1,4", "--runs", 2, "--warmup", 0, "--json"], capsys)
    assert code == 0, err
    table = json.loads(out)
    rows = table["rows"]
    assert [(r["batch_size"], r["note"] is None) for r in rows] == [(1, True), (1, True), (4, False), (4, False)]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert "fixed batch 1" in rows[2]["note"] and rows[2]["median_ms"] is None and rows[2]["ratio"] is None
    assert table["settings"]["threads"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda s: [s / "mnist_cntk.onnx", s / "cnn_mnist_pytorch.onnx"], "models must share inputs"),
        (lambda s: [s / "mnist_cntk.onnx", "--batch", "1,x"], "--batch"),
        pytest.param(lambda s: [s / "mnist_cntk.onnx", "--runtime", "tensorrt"], "TensorRT is not installed",
                     marks=without_tensorrt),
        (lambda s: [s / "nothing.onnx"], "does not exist"),
    ],
    ids=["inputs-differ", "bad-batch", "tensorrt-absent", "missing"],
)
def test_bench_bad_input_exit_2(capsys, args, message):
    code, _, err = run_cli(["bench", *args(ASSETS), "--runs", 1], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("tao-qc: error: ") and message in err


def test_the_quantized_models_speed_is_its_row_against_fp32_at_the_largest_batch(tmp_path):
    """The quantized model's speed (what fallback reports before and after a rebuild) is its row
    against FP32's at the largest batch both were timed at, wherever the rows sit."""
    from tao_qc.evaluate.latency import BenchTable, bench_models
    from tao_qc.testing import zoo

    fp32 = zoo.export_zoo("small_cnn", tmp_path / "a.onnx", dynamic_batch=True)
    other = zoo.export_zoo("small_cnn", tmp_path / "b.onnx", dynamic_batch=True, seed=1)
    table = bench_models([fp32, other], (4, 1), warmup=1, runs=3)
    at_four = next(row for row in table.rows if row.model == str(other) and row.batch_size == 4)
    assert table.speed_against_first() == at_four.ratio
    assert BenchTable(table.runtime, table.settings, table.rows[:1]).speed_against_first() is None
