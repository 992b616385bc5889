"""Loading a user's model, and the quantize / evaluate / inference verbs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from _frontends_helpers import DigitsCNN, accuracy, digits_split, train
from tao_qc.cli import main
from tao_qc.errors import InputError
from tao_qc.frontends.loading import load_pytorch_model

FACTORY = "_frontends_helpers:DigitsCNN"


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits):
    """A trained checkpoint, calibration and test data on disk, as a user would have them."""
    root = tmp_path_factory.mktemp("frontends_cli")
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = train(DigitsCNN(), x_train, y_train, epochs=6)
    torch.save({"epoch": 6, "model_state_dict": model.state_dict()}, root / "digits.pth")
    np.save(root / "calib.npy", x_train[:64])
    np.save(root / "test_x.npy", x_test)
    np.save(root / "test_y.npy", y_test)
    return root, model


def write_yaml(path, document) -> str:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- loading


def test_state_dict_with_factory_loads_the_same_model(workspace, digits):
    root, model = workspace
    loaded = load_pytorch_model(root / "digits.pth", FACTORY)
    x = torch.from_numpy(digits[2][:16])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_torchscript_and_export_programs_load(workspace, digits, tmp_path):
    _, model = workspace
    x = torch.from_numpy(digits[2][:4])
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "scripted.pt")
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "program.pt2")
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(load_pytorch_model(tmp_path / "scripted.pt")(x), expected)
        assert torch.allclose(load_pytorch_model(tmp_path / "program.pt2")(x), expected, atol=1e-6)


def test_checkpoint_that_does_not_fit_names_the_keys(workspace):
    root, _ = workspace
    with pytest.raises(InputError) as info:
        load_pytorch_model(root / "digits.pth", "tao_qc.zoo:SmallResidualCNN")
    message = str(info.value)
    assert "\n" not in message
    assert "does not fit the model from the factory (SmallResidualCNN)" in message
    assert "missing keys: block.bn1.bias, block.bn1.num_batches_tracked, block.bn1.running_mean, block.bn1.running_var and" in message
    assert "unexpected keys: conv1.bias, conv1.weight, conv2.bias, conv2.weight and 4 more" in message


def test_size_mismatch_is_one_line(workspace):
    root, _ = workspace
    with pytest.raises(InputError, match=r"^model: .*digits.pth does not fit .*size mismatch for fc2.weight"):
        load_pytorch_model(root / "digits.pth", FACTORY, {"num_classes": 4})


def test_bad_inputs_are_one_line_errors(workspace, tmp_path):
    root, _ = workspace
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"is not a PyTorch checkpoint \(valid: a checkpoint or state_dict .*TorchScript.*\.pt2"):
        load_pytorch_model(text, FACTORY)
    with pytest.raises(InputError, match=r"cannot import module 'no_such_pkg.models'.*module:callable"):
        load_pytorch_model(root / "digits.pth", "no_such_pkg.models:build")
    with pytest.raises(InputError, match=r"^--model-factory: module 'tao_qc.zoo' has no callable 'Nope' \(callables there: .*MobileNetStyle"):
        load_pytorch_model(root / "digits.pth", "tao_qc.zoo:Nope")
    with pytest.raises(InputError, match=r"is not of the form module:callable"):
        load_pytorch_model(root / "digits.pth", "tao_qc.zoo.ResNet18")
    with pytest.raises(InputError, match=r"is a state_dict; name the architecture with --model-factory"):
        load_pytorch_model(root / "digits.pth")



def test_a_missing_factory_is_answered_with_the_modules_own_callables(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(
        "from pathlib import Path\nfrom dataclasses import dataclass\n\n"
        "def build_net():\n    return None\n\nclass Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    torch.save(DigitsCNN().state_dict(), tmp_path / "weights.pth")
    with pytest.raises(InputError) as error:
        load_pytorch_model(tmp_path / "weights.pth", "user_models:build")
    # Path and dataclass are imports, not what the user can name.
    assert str(error.value) == "--model-factory: module 'user_models' has no callable 'build' (callables there: Net, build_net)"


# ----------------------------------------------------------------------------- CLI


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchao", "modelopt"])
def test_quantize_then_evaluate_and_infer(backend, workspace, digits, tmp_path, capsys):
    root, model = workspace
    results = tmp_path / "results"
    experiment = write_yaml(tmp_path / "experiment.yaml", {
        "quantize": {
            "backend": backend, "device": "cpu", "model_path": str(root / "digits.pth"), "results_dir": "results",
            "calibration": {"data": str(root / "calib.npy"), "batch_size": 16},
        },
        "evaluate": {"is_quantized": True, "data": str(root / "test_x.npy"), "labels": str(root / "test_y.npy"), "batch_size": 64},
        "inference": {"is_quantized": True, "data": str(root / "test_x.npy"), "results_dir": "predictions"},
    })
    code, out, err = run_cli(["quantize", "--spec", experiment, "--model-factory", FACTORY, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    name = "quantized_model_torchao.pth" if backend == "torchao" else "quantized_model_modelopt.pth"
    assert report["artifact"] == str(results / name) and (results / name).is_file()
    assert report["quantized_modules"] == 4
    assert json.loads((results / "quantize_report.json").read_text())["model_factory"] == FACTORY

    # The factory is read back from the quantize report.
    code, out, err = run_cli(["evaluate", "-e", experiment, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == len(digits[3])
    assert abs(result["top1"] - accuracy(model, digits[2], digits[3])) <= 0.01

    code, out, err = run_cli(["inference", "-e", experiment], capsys)
    assert code == 0, err
    predictions = np.load(tmp_path / "predictions" / "predictions.npy")
    assert predictions.shape == (len(digits[3]),)
    assert abs(float((predictions == digits[3]).mean()) - result["top1"]) < 1e-9


def test_evaluate_float_checkpoint(workspace, digits, tmp_path, capsys):
    root, model = workspace
    experiment = write_yaml(tmp_path / "e.yaml", {
        "quantize": {"backend": "torchao", "device": "cpu"},
        "evaluate": {"checkpoint": str(root / "digits.pth"), "data": str(root / "test_x.npy"), "labels": str(root / "test_y.npy")},
    })
    code, out, err = run_cli(["evaluate", "-e", experiment, "--model-factory", FACTORY], capsys)
    assert code == 0, err
    assert out.startswith(f"top-1 accuracy: {accuracy(model, digits[2], digits[3]):.4f}")


def test_cli_errors_exit_2_with_one_line(workspace, tmp_path, capsys):
    root, _ = workspace
    spec = write_yaml(tmp_path / "q.yaml", {"quantize": {"backend": "modelopt.pytorch", "device": "cpu", "results_dir": str(tmp_path / "r"),
                                                         "layers": [{"module_name": "fc1", "weights": {"dtype": "fp8_e5m2"}}],
                                                         "calibration": {"data": str(root / "calib.npy")}}})
    cases = [
        (["quantize", "--spec", spec, str(root / "digits.pth"), "--model-factory", FACTORY], "cannot quantize weights of fc1 to fp8_e5m2"),
        (["quantize", "--spec", spec, str(root / "digits.pth"), "--model-factory", "nope.mod:f"], "cannot import module 'nope.mod'"),
        (["quantize", "--spec", spec, str(root / "calib.npy"), "--model-factory", FACTORY], "is not a PyTorch checkpoint"),
        (["quantize", "--spec", spec, str(root / "digits.pth")], "--model-factory"),
        (["quantize", "--spec", spec, str(root / "digits.pth"), "--model-factory", FACTORY, "--factory-kwargs", "{bad"], "--factory-kwargs: not valid JSON"),
        (["quantize", "--spec", spec, "model.onnx"], "is an ONNX model"),
        (["quantize", "--spec", spec, str(root / "digits.pth"), "--model-factory", FACTORY, "--device", "gpu"], "--device: 'gpu' is not a device (valid: cpu, cuda, cuda:N, auto)"),
        (["quantize", "--spec", spec, str(root / "digits.pth"), "--model-factory", FACTORY, "--calibration-data", "random"], "needs its input shape"),
    ]
    for args, expected in cases:
        code, out, err = run_cli(args, capsys)
        lines = [line for line in err.splitlines() if line.startswith("tao-qc: error:")]
        assert code == 2, (args, err)
        assert len(lines) == 1 and expected in lines[0], (expected, err)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_evaluate_errors_exit_2(workspace, tmp_path, capsys):
    root, _ = workspace
    experiment = write_yaml(tmp_path / "e.yaml", {
        "quantize": {"backend": "torchao", "device": "cpu", "results_dir": str(tmp_path / "none")},
        "evaluate": {"is_quantized": True, "data": str(root / "test_x.npy")},
    })
    code, _, err = run_cli(["evaluate", "-e", experiment, "--model-factory", FACTORY], capsys)
    assert code == 2 and "evaluate.labels: required" in err
    experiment = write_yaml(tmp_path / "e2.yaml", {
        "quantize": {"backend": "torchao", "device": "cpu", "results_dir": str(tmp_path / "none")},
        "evaluate": {"is_quantized": True, "data": str(root / "test_x.npy"), "labels": str(root / "test_y.npy")},
    })
    code, _, err = run_cli(["evaluate", "-e", experiment, "--model-factory", FACTORY], capsys)
    assert code == 2 and "quantized_model_torchao.pth does not exist (run `tao-qc quantize` first)" in err
