"""Accuracy-driven quantization on a model with a known culprit.

A CNN trained on scikit-learn's digits is rewritten so that one channel of its first convolution's
output is 1000x larger, and the second convolution reads that channel divided by 1000: the float
model computes exactly what it did, but the second convolution's input now has one huge channel
beside fifteen small ones. Per-tensor INT8 activations flatten the small ones to zero (and every
sample has the huge channel, so clipping the range at a percentile cannot help): conv2 is the
culprit, and only conv2. Sensitivity must rank it first; fallback must keep it, and only it, float.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from _compile_helpers import run_cli, session
from _frontends_helpers import DigitsCNN, digits_split, train
from tao_qc.spec.cpu import this_machine
from tao_qc.testing import zoo

pytestmark = pytest.mark.slow

CULPRIT = "/conv2/Conv"


@pytest.fixture(scope="module")
def culprit(tmp_path_factory):
    """(folder, model path, clean model path): the rewritten CNN, its untouched twin, and data."""
    root = tmp_path_factory.mktemp("accuracy")
    x_train, y_train, x_test, y_test = digits_split()
    model = train(DigitsCNN(), x_train, y_train, epochs=8)
    zoo.export_onnx(model, torch.from_numpy(x_test[:1]), root / "clean.onnx", dynamic_batch=True)
    with torch.no_grad():
        model.conv1.weight[0] *= 1000.0
        model.conv1.bias[0] *= 1000.0
        model.conv2.weight[:, 0] /= 1000.0
    zoo.export_onnx(model, torch.from_numpy(x_test[:1]), root / "culprit.onnx", dynamic_batch=True)
    np.savez(root / "calibration.npz", input=x_train[:64])
    np.savez(root / "held.npz", input=x_test[:120])
    np.save(root / "held_labels.npy", y_test[:120])
    np.savez(root / "test.npz", input=x_test[120:320])
    np.save(root / "test_labels.npy", y_test[120:320])
    return root


def _spec(root: Path, name: str, **accuracy) -> Path:
    lines = ["quantize:", "  target: onnxruntime", "  calibration: {data: calibration.npz, batch_size: 8}",
             "  compare: {data: test.npz, labels: test_labels.npy}",
             "  accuracy:", "    data: held.npz", "    labels: held_labels.npy"]
    lines += [f"    {key}: {value}" for key, value in accuracy.items()]
    path = root / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _float_nodes(path: Path) -> set[str]:
    """Conv/Gemm nodes of a saved model that read no quantized input."""
    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and not set(n.input[:2]) & dq}


def _agreement(root: Path, model: Path) -> float:
    x = np.load(root / "test.npz")["input"]
    reference = session(root / "culprit.onnx").run(None, {"input": x})[0].argmax(1)
    return float(np.mean(session(model).run(None, {"input": x})[0].argmax(1) == reference))


def test_the_culprit_breaks_plain_int8_and_fallback_off_says_so(culprit, capsys):
    out = culprit / "off"
    code, stdout, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", _spec(culprit, "off", fallback="off"),
                                    "-o", out], capsys)
    assert code == 1, stderr
    assert "top-1 agreement" in stderr and (out / "report.html").is_file()
    assert _float_nodes(out / "culprit.int8.onnx") == set()  # as before: nothing kept float
    assert _agreement(culprit, out / "culprit.int8.onnx") < 0.9
    assert "accuracy" not in json.loads((out / "report.json").read_text())  # as before: the comparison decides


def test_fallback_keeps_only_the_culprit_in_float(culprit, capsys):
    out = culprit / "auto"
    code, stdout, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", _spec(culprit, "auto"), "-o", out],
                                   capsys)
    assert code == 0, stderr
    model = out / "culprit.int8.onnx"
    assert _float_nodes(model) == {CULPRIT}
    assert _agreement(culprit, model) >= 0.99  # on data the search never saw
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert accuracy["ran"] and accuracy["reached"] and not accuracy["met_before_fallback"]
    assert accuracy["clipping"] is not None and not accuracy["clipping"]["met"]  # tried first, not enough
    search = accuracy["search"]
    assert [k["name"] for k in search["kept_float"]] == [CULPRIT]
    ranked = sorted(search["sensitivity"]["nodes"], key=lambda n: n["rank"])
    assert ranked[0]["name"] == CULPRIT and ranked[0]["gain"] > 0.3
    assert all(node["score"] < ranked[0]["score"] / 4 for node in ranked[1:])
    # within the cost the field aims at: log2 of the bound, a check, and putting nodes back
    assert search["evaluations"]["full"] <= 4
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["decisions"] if r["name"] == CULPRIT)
    assert not row["quantized"] and "accuracy fallback" in row["reason"] and "rank 1 of 4" in row["reason"]
    assert "accuracy fallback" in (out / "report.html").read_text()
    code, stdout, _ = run_cli(["inspect", out], capsys)
    assert code == 0 and "accuracy fallback" in stdout


def test_the_speed_check_on_this_cpu_times_the_model_fallback_rebuilt(culprit, capsys):
    # Timings speak for the CPU that takes them: compiled for this machine by name.
    spec = _spec(culprit, "speed-here")
    spec.write_text(spec.read_text().replace("  target: onnxruntime\n",
                                             f"  target: onnxruntime\n  onnxruntime: {{cpu: {this_machine().isa}}}\n"))
    out = culprit / "speed-here"
    code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert _float_nodes(out / "culprit.int8.onnx") == {CULPRIT}
    assert report["speed"]["mode"] == "check" and set(report["speed"]["final_vs_fp32"]) == {"1", "8"}
    assert report["speed"]["cpu"] == this_machine().isa


def test_a_model_that_passes_is_untouched_by_fallback(culprit, capsys):
    built = {}
    for mode in ("auto", "off"):
        spec = _spec(culprit, f"clean-{mode}", fallback=mode)
        code, _, stderr = run_cli(["compile", culprit / "clean.onnx", "--spec", spec, "-o", culprit / f"clean-{mode}"], capsys)
        assert code == 0, stderr
        model = onnx.load(str(culprit / f"clean-{mode}" / "clean.int8.onnx"))
        del model.metadata_props[:]  # the spec digest records `fallback`, the graph must not differ
        built[mode] = model.SerializeToString()
    assert built["auto"] == built["off"]


def test_a_user_metric_from_beside_the_spec(culprit, capsys):
    (culprit / "my_metrics.py").write_text(
        "import numpy as np\n\n"
        "def digits_accuracy(reference, candidate, labels):\n"
        "    [logits] = candidate.values()\n"
        "    return float(np.mean(logits.argmax(1) == labels))\n")
    out = culprit / "user"
    spec = _spec(culprit, "user", metric="my_metrics:digits_accuracy", max_drop=0.02)
    code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert accuracy["metric"] == "my_metrics:digits_accuracy"
    assert accuracy["final"]["value"] >= accuracy["final"]["fp32"] - 0.02 and accuracy["final"]["met"]
    assert [k["name"] for k in accuracy["search"]["kept_float"]] == [CULPRIT]


def test_fallback_on_a_local_ray_runtime(culprit, capsys):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = culprit / "ray"
        code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", _spec(culprit, "ray", executor="ray"),
                                   "-o", out], capsys)
    finally:
        ray.shutdown()
    assert code == 0, stderr
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert [k["name"] for k in accuracy["search"]["kept_float"]] == [CULPRIT]
    assert _float_nodes(out / "culprit.int8.onnx") == {CULPRIT}


def test_a_user_metric_that_fails_is_said_once_in_one_line(culprit, monkeypatch, tmp_path, capsys):
    # In a folder only this process has on its sys.path (as a script or a notebook adds one): not
    # beside the spec, not the current folder, not on PYTHONPATH. Its failure is said once, in one
    # line naming it (a worker's InputError comes back as its own line: tao_qc/accuracy/worker.py).
    folder = tmp_path / "only-on-sys-path"
    folder.mkdir()
    (folder / "path_only_failing_metric.py").write_text(
        "def digits_accuracy(reference, candidate, labels):\n    raise ValueError('labels are not digits')\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    spec = _spec(culprit, "failing", metric="path_only_failing_metric:digits_accuracy", max_drop=0.02, workers=2)
    code, out, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", tmp_path / "out"], capsys)
    assert code == 2, stderr
    said = [line for line in stderr.splitlines() if "path_only_failing_metric:digits_accuracy failed" in line]
    assert len(said) == 1, stderr
    assert "ValueError: labels are not digits" in said[0] and "Traceback" not in stderr


def test_sensitivity_command_ranks_the_culprit_first(culprit, capsys):
    out = culprit / "sensitivity"
    code, stdout, stderr = run_cli(["sensitivity", culprit / "culprit.onnx", "--spec", _spec(culprit, "sens"), "-o", out],
                                   capsys)
    assert code == 0, stderr
    assert stdout.index(CULPRIT) < min(stdout.index(n) for n in ("/conv1/Conv", "/fc1/Gemm", "/fc2/Gemm"))
    result = json.loads((out / "sensitivity.json").read_text())
    assert sorted(result["nodes"], key=lambda n: n["rank"])[0]["name"] == CULPRIT
    assert "<svg" in (out / "sensitivity.html").read_text()


def test_without_data_of_its_own_accuracy_is_judged_on_calibration_samples_held_back(culprit, capsys):
    spec = culprit / "calibration-only.yaml"
    spec.write_text("quantize:\n  target: onnxruntime\n  calibration: {data: calibration.npz, batch_size: 8}\n")
    out = culprit / "calibration-only"
    code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    calibration = next(r for r in report["passes"] if r["pass"] == "check-calibration")
    assert (calibration["stats"]["samples"], calibration["stats"]["held_back"]) == (51, 13)  # of 64
    assert any("last 13, held back from calibration" in note for note in calibration["notes"])
    assert "last 13, held back" in report["accuracy"]["data"]
    assert not report["accuracy"]["judged_on_calibration_data"]
    assert _float_nodes(out / "culprit.int8.onnx") == {CULPRIT}
    # On data neither calibration nor the search saw; plain INT8 agrees on fewer than 90%. The twin
    # without the culprit agrees on 98.5-99% after INT8, so that is the ceiling here, not 100%.
    assert _agreement(culprit, out / "culprit.int8.onnx") >= 0.975


def test_ranges_chosen_per_tensor_take_back_the_culprit_with_every_node_int8(culprit, capsys):
    """`steps: [ranges, corrections, float]`: choosing conv2's input range by the error at conv2's
    output narrows it past the huge channel (which conv2 divides by 1000 anyway): the target is met
    with every node INT8, and neither corrections nor float fallback run."""
    out = culprit / "steps"
    spec = _spec(culprit, "steps", steps="[ranges, corrections, float]")
    code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", out], capsys)
    assert code in (0, 1), stderr  # 1: the comparison's own default check (top-1 agreement >= 99%) decides
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert [s["step"] for s in accuracy["steps"]] == ["ranges"] and accuracy["steps"][0]["met"]
    assert "search" not in accuracy and "step corrections" not in stderr
    assert _float_nodes(out / "culprit.int8.onnx") == set()
    assert _agreement(culprit, out / "culprit.int8.onnx") >= 0.97  # plain INT8: below 0.9


def test_corrections_run_before_any_node_goes_float(culprit, capsys):
    """`steps: [corrections, float]`: AdaRound and bias correction are measured first; neither can undo
    conv2's per-tensor input range, so only then does fallback keep conv2, and only it, in float."""
    out = culprit / "corrections"
    spec = _spec(culprit, "corrections", steps="[corrections, float]")
    code, _, stderr = run_cli(["compile", culprit / "culprit.onnx", "--spec", spec, "-o", out], capsys)
    assert code == 0, stderr
    accuracy = json.loads((out / "report.json").read_text())["accuracy"]
    assert [s["step"] for s in accuracy["steps"]] == ["corrections"] and not accuracy["steps"][0]["met"]
    assert stderr.index("step corrections") < stderr.index("ranking")
    assert [k["name"] for k in accuracy["search"]["kept_float"]] == [CULPRIT]
    assert _float_nodes(out / "culprit.int8.onnx") == {CULPRIT}
    assert _agreement(culprit, out / "culprit.int8.onnx") >= 0.99
