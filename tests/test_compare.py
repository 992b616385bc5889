"""compare: FP32 vs INT8 through polygraphy on real models and a real labelled digit set."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

from _compile_helpers import ASSETS, run_cli
from _runtimes_helpers import build_assets, without_tensorrt
from tao_qc.driver import raise_if_failed
from tao_qc.evaluate.checks import DEFAULT_MIN_COSINE, checks_for
from tao_qc.evaluate.compare import compare_models, evaluate_quantized
from tao_qc.evaluate.measures import output_metrics
from tao_qc.data import model_inputs, open_inputs
from tao_qc.errors import AccuracyError, InputError, MissingDependencyError
from tao_qc.spec import CompareSpec, QuantizeSpec

SAMPLES = 600  # of 1797 digits: enough for a 0.99 agreement check to mean something, quick to run


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def digits(assets):
    inputs = model_inputs(onnx.load(str(assets.mnist_fp32)))
    return open_inputs(assets.digits, inputs, max_samples=SAMPLES, key="--data")


@pytest.fixture(scope="module")
def few_digits(assets):
    """Fewer samples where polygraphy's per-iteration element-wise check runs (it is slow per iteration)."""
    inputs = model_inputs(onnx.load(str(assets.mnist_fp32)))
    return open_inputs(assets.digits, inputs, max_samples=150, key="--data")


@pytest.fixture(scope="module")
def labels(assets):
    return np.load(assets.labels)[:SAMPLES]


@pytest.fixture(scope="module")
def int8_result(assets, digits, labels):
    return compare_models(assets.mnist_fp32, assets.mnist_int8, digits, labels=labels, settings=CompareSpec())


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_real_digits(int8_result):
    result = int8_result
    assert result.passed, result.failures
    assert result.num_samples == SAMPLES
    (out,) = result.outputs
    assert out.is_classifier
    assert out.top1_agreement >= 0.99
    # FP32 reads these upscaled digits at about 89%; INT8 must land within a point of it.
    assert 0.85 <= out.reference_top1 <= 0.95
    assert abs(out.candidate_top1 - out.reference_top1) <= 0.01
    # Real quantization error: present, small against logits in the thousands.
    assert 0 < out.mean_abs_error < out.p99_abs_error <= out.max_abs_error
    assert out.cosine > 0.999
    assert [c.metric for c in result.checks] == ["top1_agreement"]


def test_model_against_itself_is_exact(assets, few_digits, labels):
    result = compare_models(assets.mnist_fp32, assets.mnist_fp32, few_digits, labels=labels, settings=CompareSpec(atol=0.0))
    (out,) = result.outputs
    assert result.passed
    assert out.max_abs_error == 0 and out.mean_abs_error == 0 and out.p99_abs_error == 0
    assert out.top1_agreement == 1.0 and out.cosine == pytest.approx(1.0)
    assert out.within_tolerance == 1.0 and out.polygraphy_passed is True
    assert out.error_histogram["zeros"] == out.error_histogram["total"] == 150 * 10


def test_tolerances_go_through_polygraphy(assets, few_digits):
    strict = compare_models(assets.mnist_fp32, assets.mnist_int8, few_digits, settings=CompareSpec(atol=0.5))
    (out,) = strict.outputs
    assert not strict.passed and out.polygraphy_passed is False
    assert 0 < out.within_tolerance < 1
    assert "within atol=0.5, rtol=0" in strict.failures[0]
    loose = compare_models(assets.mnist_fp32, assets.mnist_int8, few_digits, settings=CompareSpec(atol=out.max_abs_error * 1.01))
    assert loose.passed and loose.outputs[0].polygraphy_passed is True


def test_corrupted_candidate_fails_and_exits_1(assets, capsys):
    code, out, err = run_cli(["compare", assets.mnist_fp32, assets.mnist_corrupted, "--data", assets.digits,
                              "--labels", assets.labels, "--max-samples", 200], capsys)
    assert code == 1, err
    assert "FAILED" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("tao-qc: error: mnist_corrupted.onnx failed the comparison with mnist_fp32.onnx")
    assert "top-1 agreement" in last


@pytest.mark.slow
def test_cli_json_passes_on_int8(assets, capsys):
    code, out, err = run_cli(["compare", assets.mnist_fp32, assets.mnist_int8, "--data", assets.digits,
                              "--labels", assets.labels, "--max-samples", 300, "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["passed"] and data["num_samples"] == 300
    assert data["outputs"][0]["top1_agreement"] >= 0.99
    assert data["engines"]["candidate"]["device"] == "cpu"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda a, s: [a.mnist_fp32, s / "cnn_mnist_pytorch.onnx", "--data", a.digits], "the models' inputs differ"),
        (lambda a, s: [a.mnist_fp32, a.mnist_int8, "--data", a.labels], "needs float32"),
        pytest.param(lambda a, s: [a.mnist_fp32, a.mnist_int8, "--data", a.digits, "--runtime", "tensorrt"],
                     "TensorRT is not installed", marks=without_tensorrt),
        (lambda a, s: [a.mnist_fp32, a.root / "missing.onnx"], "does not exist"),
    ],
    ids=["inputs-differ", "data-fits-neither", "tensorrt-absent", "missing-file"],
)
def test_bad_input_is_one_line_exit_2(assets, capsys, make_args, message):
    code, _, err = run_cli(["compare", *make_args(assets, ASSETS)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tao-qc: error: ") and message in lines[-1]
    assert "Traceback" not in err


def test_data_for_a_different_model_is_rejected(assets, tmp_path):
    # Right shape, wrong input name: fits neither model's input.
    np.savez(tmp_path / "other.npz", x=np.zeros((4, 1, 28, 28), np.float32), y=np.zeros((4, 1, 28, 28), np.float32))
    inputs = model_inputs(onnx.load(str(assets.mnist_fp32)))
    with pytest.raises(InputError, match="no array named 'Input3'"):
        open_inputs(tmp_path / "other.npz", inputs, key="--data")


def test_random_default_warns(assets, capsys):
    code, out, err = run_cli(["compare", assets.mnist_fp32, assets.mnist_fp32, "--max-samples", 8], capsys)
    assert code == 0
    assert "RANDOM" in err and "RANDOM" in out


def test_metrics_on_known_arrays():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]], np.float32)
    cand = np.array([[1.0, 2.5, 3.0], [1.0, 3.0, 0.0]], np.float32)
    m = output_metrics("logits", ref, cand, labels=np.array([2, 1]), atol=0.6)
    assert m.max_abs_error == pytest.approx(2.0)
    assert m.mean_abs_error == pytest.approx((0.5 + 2 + 2) / 6)
    assert m.top1_agreement == 0.5  # sample 0 agrees on class 2; sample 1 flips 0 -> 1
    assert m.reference_top1 == 0.5 and m.candidate_top1 == 1.0
    assert m.within_tolerance == pytest.approx(4 / 6)
    cos0 = (1 + 5 + 9) / (np.linalg.norm([1, 2, 3]) * np.linalg.norm([1, 2.5, 3]))
    cos1 = (3 + 3) / (np.linalg.norm([3, 1, 0]) * np.linalg.norm([1, 3, 0]))
    whole = (1 + 5 + 9 + 3 + 3) / (np.linalg.norm([1, 2, 3, 3, 1, 0]) * np.linalg.norm([1, 2.5, 3, 1, 3, 0]))
    assert m.cosine == pytest.approx(whole)  # over the data set, not the mean of the two
    assert m.min_cosine == pytest.approx(min(cos0, cos1))


def test_default_checks_for_non_classifier_outputs():
    ref = np.linspace(-1, 1, 2 * 4 * 5).reshape(2, 4, 5).astype(np.float32)
    good = output_metrics("boxes", ref, ref * 1.01)
    bad = output_metrics("boxes", ref, -ref)
    assert not good.is_classifier and good.top1_agreement is None
    (check,) = checks_for(good, CompareSpec())
    assert check.metric == "cosine" and check.threshold == DEFAULT_MIN_COSINE and check.passed
    (check,) = checks_for(bad, CompareSpec())
    assert not check.passed and "cosine -1.00000" in check.describe()


def test_default_cosine_weighs_samples_by_their_signal():
    """A detector's objectness: one photo with faces, one with none (probabilities of 1e-5). INT8's
    relative error on the empty photo's tiny values (exp of a logit off by 0.3) fails a per-sample
    cosine although no face changes; the same error on the photo with faces must still fail."""
    rng = np.random.default_rng(0)
    logits = np.stack([rng.normal(-4, 3, 400), rng.normal(-11.5, 0.5, 400)])[..., None]  # [N, cells, 1]
    ref = 1 / (1 + np.exp(-logits))
    near = 1 / (1 + np.exp(-(logits + rng.normal(0, 0.05, logits.shape))))
    empty_noisy = near.copy()
    empty_noisy[1] = 1 / (1 + np.exp(-(logits[1] + rng.normal(0, 0.3, (400, 1)))))
    metrics = output_metrics("obj", ref, empty_noisy)
    assert metrics.min_cosine < 0.99  # what a per-sample check would have failed on
    (check,) = checks_for(metrics, CompareSpec())
    assert check.passed and metrics.cosine > 0.999

    faces_wrong = near.copy()
    faces_wrong[0] = 1 / (1 + np.exp(-(logits[0] + rng.normal(0, 1.0, (400, 1)))))
    (check,) = checks_for(output_metrics("obj", ref, faces_wrong), CompareSpec())
    assert not check.passed


def test_samples_that_pull_the_cosine_down_rank_first():
    """Fallback's ranking subset: the sample whose error carries the most of the output's energy, not
    the one whose tiny output has the worst cosine."""
    from tao_qc.accuracy.metrics import per_sample_cosine, sample_errors

    ref = np.stack([np.full(50, 1.0), np.full(50, 1e-4), np.full(50, 1.0)])[..., None]
    cand = ref * np.array([1.0, 1.0, 0.9])[:, None, None]
    cand[1, ::2] = 3e-4  # the empty sample, way off relatively
    assert np.argmin(per_sample_cosine(ref, cand)) == 1
    errors = sample_errors({"y": ref}, {"y": cand})
    assert list(np.argsort(-errors)) == [2, 1, 0]


def test_nan_in_candidate_fails():
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[0, 1] = np.nan
    metrics = output_metrics("y", ref, cand)
    assert metrics.nonfinite == 1
    assert any(c.metric == "nonfinite" and not c.passed for c in checks_for(metrics, CompareSpec()))


@pytest.mark.slow
def test_evaluate_quantized_gives_typed_results_and_report_sections(assets, digits, labels, tmp_path):
    spec = QuantizeSpec(target="onnxruntime")
    evaluation = evaluate_quantized(assets.mnist_fp32, assets.mnist_int8, digits, spec, labels, runs=3, warmup=1,
                                    artifact_dir=tmp_path)
    assert evaluation.comparison.passed and evaluation.failures() == []
    # The runtime's engines (ORT's optimized graphs) are kept in the results folder and named in the report.
    engines = evaluation.sections()["comparison"]["engines"]
    assert engines["candidate"]["artifact"] == str(tmp_path / "mnist_int8.ort-optimized.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist_fp32.ort-optimized.onnx", "mnist_int8.ort-optimized.onnx"]
    rows = evaluation.sections()["latency"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 1] and rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    raise_if_failed(evaluation, spec)  # passes: nothing raised
    # A check that fails, on the typed result: the sentence it gives is what the exit-1 error says.
    failed = evaluation.comparison.checks[0]
    failed.passed = False
    assert evaluation.failures() == [failed.describe()]
    with pytest.raises(AccuracyError, match=re.escape(f"mnist_int8.onnx failed the comparison with mnist_fp32.onnx: {failed.describe()}")):
        raise_if_failed(evaluation, spec)


@without_tensorrt
def test_tensorrt_runtime_absent_is_missing_dependency(assets, digits):
    with pytest.raises(MissingDependencyError, match=r"^TensorRT is not installed: pip install tao-qc\[tensorrt\]"):
        compare_models(assets.mnist_fp32, assets.mnist_int8, digits, runtime="tensorrt")


def test_spec_compare_section_drives_the_cli_and_flags_override(assets, tmp_path, capsys):
    spec = tmp_path / "q.yaml"
    spec.write_text(
        "quantize:\n"
        "  backend: modelopt.onnx\n"
        "  mode: static_ptq\n"
        "  compare:\n"
        f"    data: {assets.digits}\n"
        f"    labels: {assets.labels}\n"
        "    min_top1_agreement: 1.0\n"
    )
    args = ["compare", assets.mnist_fp32, assets.mnist_corrupted, "--spec", spec, "--max-samples", 100, "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 1, err
    data = json.loads(out)
    assert data["tolerances"]["min_top1_agreement"] == 1.0 and data["num_samples"] == 100
    assert data["outputs"][0]["reference_top1"] is not None  # the spec's labels were used
    code, out, err = run_cli([*args, "--min-top1-agreement", 0.5], capsys)
    assert code == 0, err
    assert json.loads(out)["tolerances"]["min_top1_agreement"] == 0.5
