"""In-framework quantization of a trained model: accuracy, artifacts that restore exactly,
per-module dtypes, and the errors a user meets."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from _frontends_helpers import DigitsCNN, WideMLP, accuracy, digits_split, train
from tao_qc.errors import InputError
from tao_qc.frontends.quantizer import ModelQuantizer, load_quantized

FACTORY = "_frontends_helpers:DigitsCNN"


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def trained(digits):
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    return train(DigitsCNN(), x_train, y_train)


@pytest.fixture(scope="module")
def fp32_accuracy(trained, digits):
    return accuracy(trained, digits[2], digits[3])


def calibration_loader(digits, samples: int = 128, batch: int = 32):
    x_train, y_train = digits[0][:samples], digits[1][:samples]
    # (inputs, labels) batches, the shape of a typical torch DataLoader
    return [(torch.from_numpy(x_train[i : i + batch]), torch.from_numpy(y_train[i : i + batch])) for i in range(0, samples, batch)]


def quantizer(**spec):
    return ModelQuantizer({"device": "cpu", **spec})


def test_fp32_model_learns_digits(fp32_accuracy):
    assert fp32_accuracy > 0.93


def test_torchao_int8_keeps_accuracy_and_restores_exactly(trained, digits, fp32_accuracy, tmp_path, caplog):
    q = quantizer(backend="torchao", layers=[{"module_name": "*", "weights": {"dtype": "int8"}}])
    with caplog.at_level(logging.WARNING, logger="tao_qc"):
        model = q.quantize_model(copy.deepcopy(trained))
    # Linear weights are torchao int8 tensors; convolutions stay float and are named in a warning.
    assert type(model.fc1.weight).__name__ == "Int8Tensor" and type(model.fc2.weight).__name__ == "Int8Tensor"
    assert type(model.conv1.weight) is nn.Parameter and model.conv1.weight.dtype == torch.float32
    assert "conv1 (Conv2d)" in caplog.text and "conv2 (Conv2d)" in caplog.text
    x_test, y_test = digits[2], digits[3]
    quantized_accuracy = accuracy(model, x_test, y_test)
    assert quantized_accuracy >= fp32_accuracy - 0.01
    with torch.no_grad():
        before = model(torch.from_numpy(x_test))
        assert not torch.equal(before, trained(torch.from_numpy(x_test)))  # the weights really changed

    path = q.save_model(model, tmp_path)
    assert path == tmp_path / "quantized_model_torchao.pth"
    restored = load_quantized(path, FACTORY)
    assert type(restored.fc1.weight).__name__ == "Int8Tensor"
    with torch.no_grad():
        assert torch.equal(restored(torch.from_numpy(x_test)), before)


def test_modelopt_int8_keeps_accuracy_and_restores_exactly(trained, digits, fp32_accuracy, tmp_path):
    q = quantizer(backend="modelopt", mode="static_ptq")
    assert q.backend.name == "modelopt.pytorch"  # the short form, for a PyTorch model
    model = q.quantize_model(copy.deepcopy(trained), calibration_loader(digits))
    for name in ("conv1", "conv2", "fc1", "fc2"):
        module = getattr(model, name)
        assert module.weight_quantizer.is_enabled and module.input_quantizer.is_enabled
        assert module.weight_quantizer.num_bits == 8 and module.input_quantizer.amax is not None
    x_test, y_test = digits[2], digits[3]
    assert accuracy(model, x_test, y_test) >= fp32_accuracy - 0.01
    with torch.no_grad():
        before = model(torch.from_numpy(x_test))
        assert not torch.equal(before, trained(torch.from_numpy(x_test)))

    path = q.save_model(model, tmp_path)
    artifact = torch.load(path, weights_only=False)
    assert set(artifact) >= {"model_state_dict", "modelopt_state"}
    restored = load_quantized(path, FACTORY)
    with torch.no_grad():
        assert torch.equal(restored(torch.from_numpy(x_test)), before)


@pytest.mark.slow
def test_modelopt_entropy_calibration_uses_histograms(trained, digits, fp32_accuracy):
    # The raw digit pixels take 17 discrete values, mostly 0: entropy's KL search collapses on
    # them (amax 1/16, accuracy near chance), as it does in TensorRT's entropy calibrator. Entropy
    # is for continuous activations, so the input layer stays in float here.
    q = quantizer(backend="modelopt.pytorch", algorithm="entropy", skip_names=["conv1"])
    model = q.quantize_model(copy.deepcopy(trained), calibration_loader(digits))
    maxed = quantizer(backend="modelopt.pytorch", algorithm="minmax", skip_names=["conv1"]).quantize_model(
        copy.deepcopy(trained), calibration_loader(digits))
    assert type(model.fc1.input_quantizer._calibrator).__name__ == "HistogramCalibrator"
    assert type(maxed.fc1.input_quantizer._calibrator).__name__ == "MaxCalibrator"
    # Entropy clips outliers: its ranges are never wider than max calibration's (up to the
    # histogram's bin width), and some are clearly narrower.
    pairs = [(getattr(model, n).input_quantizer.amax.item(), getattr(maxed, n).input_quantizer.amax.item())
             for n in ("conv2", "fc1", "fc2")]
    assert all(e <= m * 1.01 for e, m in pairs) and any(e < m * 0.95 for e, m in pairs)
    assert accuracy(model, digits[2], digits[3]) >= fp32_accuracy - 0.02


def test_modelopt_per_layer_dtypes_and_skips(trained, digits, tmp_path):
    spec = {
        "backend": "modelopt.pytorch",
        "layers": [
            {"module_name": "Conv2d", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}},
            {"module_name": "fc1", "weights": {"dtype": "fp8_e4m3fn"}, "activations": {"dtype": "fp8_e4m3fn"}},
            {"module_name": "fc2", "weights": {"dtype": "int8"}, "activations": {"dtype": "native"}},
        ],
        "skip_names": ["conv1"],
    }
    q = quantizer(**spec)
    model = q.quantize_model(copy.deepcopy(trained), calibration_loader(digits, 64))
    assert not model.conv1.weight_quantizer.is_enabled and not model.conv1.input_quantizer.is_enabled
    assert model.conv2.weight_quantizer.num_bits == 8
    assert model.fc1.weight_quantizer.num_bits == (4, 3) and model.fc1.input_quantizer.num_bits == (4, 3)
    assert model.fc2.weight_quantizer.is_enabled and not model.fc2.input_quantizer.is_enabled
    x = torch.from_numpy(digits[2][:64])
    with torch.no_grad():
        before = model(x)
    restored = load_quantized(q.save_model(model, tmp_path), FACTORY)
    with torch.no_grad():
        assert torch.equal(restored(x), before)
    assert not restored.conv1.input_quantizer.is_enabled and restored.fc1.input_quantizer.num_bits == (4, 3)


def test_modelopt_fp8_e5m2_is_a_clear_error(trained):
    spec = {"backend": "modelopt.pytorch", "layers": [{"module_name": "fc1", "weights": {"dtype": "fp8_e5m2"}}]}
    with pytest.raises(InputError, match=r"cannot quantize weights of fc1 to fp8_e5m2: ModelOpt says .*valid for static PTQ: int8, fp8_e4m3fn, native"):
        quantizer(**spec).prepare(copy.deepcopy(trained))


def test_modelopt_backend_kwargs_merge_after_ours(trained, digits):
    kwargs = {"quant_cfg": [{"quantizer_name": "fc2.*", "enable": False}]}
    q = quantizer(backend="modelopt.pytorch", backend_kwargs=kwargs)
    model = q.quantize_model(copy.deepcopy(trained), calibration_loader(digits, 32))
    assert model.fc1.input_quantizer.is_enabled and not model.fc2.input_quantizer.is_enabled
    assert q.backend.config["quant_cfg"][-1] == {"quantizer_name": "fc2.*", "enable": False}


def test_modelopt_without_calibration_data_is_an_error(trained):
    q = quantizer(backend="modelopt.pytorch")
    with pytest.raises(InputError, match="needs calibration data"):
        q.quantize_model(copy.deepcopy(trained))


@pytest.mark.parametrize("dtype, torch_dtype", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_torchao_fp8_weights_on_cpu(digits, dtype, torch_dtype, tmp_path):
    torch.manual_seed(0)
    model = train(WideMLP(width=128), digits[0], digits[1], epochs=3)
    x = torch.from_numpy(digits[2])
    with torch.no_grad():
        reference = model(x)
    q = quantizer(backend="torchao", layers=[{"module_name": "Linear", "weights": {"dtype": dtype}}], skip_names=["head"])
    quantized = q.quantize_model(model)
    weight = quantized.fc2.weight
    assert type(weight).__name__ == "Float8Tensor" and weight.qdata.dtype == torch_dtype
    assert type(quantized.head.weight) is nn.Parameter  # skip_names
    with torch.no_grad():
        out = quantized(x)
    assert not torch.equal(out, reference)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() > 0.95
    restored = load_quantized(q.save_model(quantized, tmp_path), "_frontends_helpers:WideMLP", {"width": 128})
    with torch.no_grad():
        assert torch.equal(restored(x), out)


def test_torchao_int8_file_is_under_30_percent_of_fp32(digits, tmp_path):
    model = WideMLP(width=512).eval()
    fp32_path = tmp_path / "fp32.pth"
    torch.save(model.state_dict(), fp32_path)
    q = quantizer(backend="torchao", results_dir=str(tmp_path / "out"))
    path = q.save_model(q.quantize_model(model))
    ratio = path.stat().st_size / fp32_path.stat().st_size
    assert ratio <= 0.30, ratio


def test_torchao_per_module_dtypes_run_once_per_group(digits):
    model = WideMLP(width=64).eval()
    spec = {"backend": "torchao", "layers": [
        {"module_name": "fc*", "weights": {"dtype": "int8"}},
        {"module_name": "fc3", "weights": {"dtype": "fp8_e4m3fn"}},
    ]}
    quantized = quantizer(**spec).quantize_model(model)
    assert type(quantized.fc1.weight).__name__ == "Int8Tensor" and type(quantized.fc2.weight).__name__ == "Int8Tensor"
    assert type(quantized.fc3.weight).__name__ == "Float8Tensor"
    assert type(quantized.head.weight) is nn.Parameter  # not selected by any entry


def test_quantizer_accepts_typed_and_mapping_specs():
    from tao_qc.spec import load_spec

    typed = load_spec({"backend": "torchao", "device": "cpu"})
    assert ModelQuantizer(typed).spec is typed
    assert ModelQuantizer({"quantize": {"backend": "torchao", "device": "cpu"}}).backend.name == "torchao"


def test_calibrate_is_a_no_op_for_torchao(trained):
    q = quantizer(backend="torchao")
    model = q.prepare(copy.deepcopy(trained))
    q.calibrate(model, [torch.full((1, 1, 8, 8), float("nan"))])  # never read
    assert type(q.quantize(model).fc1.weight).__name__ == "Int8Tensor"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA device exists")
def test_cuda_without_a_gpu_is_an_error_and_the_default_is_cpu_with_a_note(caplog):
    with pytest.raises(InputError, match=r"quantize.device: 'cuda' asked for, but no CUDA device is available here \(valid here: cpu, or auto"):
        ModelQuantizer({"backend": "torchao", "device": "cuda"})
    with caplog.at_level(logging.INFO, logger="tao_qc"):
        assert ModelQuantizer({"backend": "torchao"}).device == "cpu"  # the default: auto
    assert "quantize.device: auto: no CUDA device here, quantizing on CPU" in caplog.text


def test_onnx_backend_is_refused_by_the_pytorch_api():
    with pytest.raises(InputError, match="does not quantize PyTorch models in-framework .*tao-qc compile"):
        ModelQuantizer({"backend": "modelopt.onnx", "device": "cpu"})


def test_torchao_backend_kwargs_win_over_ours():
    model = WideMLP(width=64).eval()
    # Our filter selects every Linear; the user's filter_fn replaces it.
    q = quantizer(backend="torchao", backend_kwargs={"filter_fn": lambda module, fqn: fqn == "fc1"})
    quantized = q.quantize_model(model)
    assert type(quantized.fc1.weight).__name__ == "Int8Tensor"
    assert type(quantized.fc2.weight) is nn.Parameter and type(quantized.head.weight) is nn.Parameter


def test_compiled_models_are_refused_with_the_valid_forms(trained):
    scripted = torch.jit.trace(trained, torch.zeros(1, 1, 8, 8))
    with pytest.raises(InputError, match="TorchScript model keeps no nn.Linear / nn.Conv2d modules.*--model-factory"):
        quantizer(backend="torchao").prepare(scripted)
    program = torch.export.export(trained, (torch.zeros(1, 1, 8, 8),)).module()
    with pytest.raises(InputError, match="torch.export / FX graph"):
        quantizer(backend="modelopt.pytorch").prepare(program)
