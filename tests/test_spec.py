"""The `quantize` spec: defaults, aliases, round trips, and every documented error path."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml

from tao_qc.spec import schema as spec_module
from tao_qc.errors import SpecError
from tao_qc.spec import QuantizeSpec, load_experiment, load_spec


def write(tmp_path: Path, text: str, name: str = "q.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(source) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return info.value


@pytest.fixture(autouse=True)
def fresh_warnings():
    spec_module._warned.clear()


def test_defaults_are_the_reference_defaults_but_the_device():
    spec = load_spec({"quantize": {}})
    assert spec.backend == "torchao"
    assert spec.mode == "weight_only_ptq"
    assert spec.algorithm == "minmax"
    assert spec.default_layer_dtype == "native" and spec.default_activation_dtype == "native"
    assert spec.layers == [] and spec.skip_names == []
    # The reference defaults to cuda; ours, auto, is cuda wherever cuda is present (SPEC.md).
    assert spec.backend_kwargs == {} and spec.device == "auto"
    assert spec.target == "tensorrt" and spec.compare.runtime == "onnxruntime"
    assert spec.compare.fail_on_mismatch is True


def test_float8_aliases_are_normalized():
    spec = load_spec(
        {
            "backend": "modelopt.pytorch",
            "layers": [
                {"module_name": "a", "weights": {"dtype": "float8_e4m3fn"}, "activations": {"dtype": "float8_e5m2"}}
            ],
        }
    )
    assert spec.layers[0].weights.dtype == "fp8_e4m3fn"
    assert spec.layers[0].activations.dtype == "fp8_e5m2"


def test_section_alone_and_wrapped_forms_are_equal(tmp_path):
    body = {"backend": "modelopt.onnx", "layers": [{"module_name": "*conv*", "weights": {"dtype": "int8"}}]}
    wrapped = load_spec(write(tmp_path, yaml.safe_dump({"quantize": body}), "a.yaml"))
    alone = load_spec(write(tmp_path, yaml.safe_dump(body), "b.yaml"))
    assert wrapped.normalized() == alone.normalized()


def test_round_trip_through_normalized_yaml(tmp_path):
    original = load_spec(
        {
            "quantize": {
                "backend": "modelopt",
                "algorithm": "max",
                "layers": [{"module_name": "Conv2d", "weights": {"dtype": "float8_e4m3fn"}}],
                "skip_names": ["*head*"],
                "calibration": {"data": "random", "max_samples": 8},
                "compare": {"min_top1_agreement": 0.98},
            }
        }
    )
    again = load_spec(write(tmp_path, yaml.safe_dump({"quantize": original.normalized()})))
    assert again.normalized() == original.normalized()


def test_omegaconf_style_mapping_is_accepted():
    class DictLike(dict):
        """A Mapping that is not a plain dict, as OmegaConf's DictConfig is."""

    from collections.abc import Mapping

    class Config(Mapping):
        def __init__(self, data):
            self._data = data

        def __getitem__(self, key):
            value = self._data[key]
            return Config(value) if isinstance(value, dict) else value

        def __iter__(self):
            return iter(self._data)

        def __len__(self):
            return len(self._data)

    spec = load_spec(Config({"quantize": {"backend": "torchao", "skip_names": ["fc"]}}))
    assert spec.skip_names == ["fc"]
    assert load_spec(DictLike(backend="torchao")).backend == "torchao"


def test_modelopt_short_form_resolves_by_model_format():
    spec = load_spec({"backend": "modelopt"})
    assert spec.mode == "static_ptq"
    assert spec.resolve_backend("m.onnx").backend == "modelopt.onnx"
    assert spec.resolve_backend("m.pth").backend == "modelopt.pytorch"
    with pytest.raises(SpecError, match="quantize.backend"):
        spec.resolve_backend(None)


def test_max_and_minmax_are_the_same_algorithm():
    assert load_spec({"algorithm": "max"}).calibration_algorithm == "minmax"
    assert load_spec({"algorithm": "minmax"}).calibration_algorithm == "minmax"
    assert load_spec({"algorithm": "entropy"}).calibration_algorithm == "entropy"


def test_mode_defaults_to_the_backends_only_mode():
    assert load_spec({"backend": "modelopt.onnx"}).mode == "static_ptq"
    assert load_spec({"backend": "torchao"}).mode == "weight_only_ptq"


@pytest.mark.parametrize(
    "backend, mode",
    [("torchao", "static_ptq"), ("modelopt.onnx", "weight_only_ptq"), ("modelopt.pytorch", "weight_only_ptq")],
)
def test_backend_mode_mismatch_names_both(backend, mode):
    err = error_of({"backend": backend, "mode": mode})
    assert err.key == "quantize.mode"
    assert backend in str(err) and mode in str(err)


def test_onnx_pipeline_uses_modelopt_onnx_unless_backend_says_otherwise():
    assert load_spec({}).for_onnx_pipeline().backend == "modelopt.onnx"
    assert load_spec({}).for_onnx_pipeline().mode == "static_ptq"
    assert load_spec({"backend": "modelopt"}).for_onnx_pipeline().backend == "modelopt.onnx"
    with pytest.raises(SpecError, match="'torchao' cannot quantize an ONNX model"):
        load_spec({"backend": "torchao"}).for_onnx_pipeline()


def test_deprecated_defaults_warn_once_and_point_at_layers(caplog):
    caplog.set_level(logging.WARNING, logger="tao_qc")
    for _ in range(2):
        load_spec({"default_layer_dtype": "int8", "default_activation_dtype": "int8"})
    messages = [r.getMessage() for r in caplog.records]
    assert sum("default_layer_dtype is deprecated" in m for m in messages) == 1
    assert sum("default_activation_dtype is deprecated" in m for m in messages) == 1
    assert any("layers[*].weights.dtype" in m for m in messages)
    assert any("layers[*].activations.dtype" in m for m in messages)


def test_torchao_warns_that_activations_are_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="tao_qc")
    load_spec({"backend": "torchao", "layers": [{"module_name": "fc", "activations": {"dtype": "int8"}}]})
    assert any("activations is ignored" in r.getMessage() for r in caplog.records)


def test_relative_paths_resolve_against_the_spec_file(tmp_path):
    path = write(
        tmp_path,
        """
        quantize:
          model_path: models/m.onnx
          results_dir: out
          calibration: {data: calib.npz}
          compare: {data: random}
        """,
    )
    spec = load_spec(path)
    assert spec.model_path == str(tmp_path / "models/m.onnx")
    assert spec.results_dir == str(tmp_path / "out")
    assert spec.calibration.data == str(tmp_path / "calib.npz")
    assert spec.compare.data == "random"


def test_backend_kwargs_checked_against_the_real_backend_signature():
    # modelopt.onnx.quantization.quantize really takes high_precision_dtype
    assert load_spec({"backend": "modelopt.onnx", "backend_kwargs": {"high_precision_dtype": "fp32"}})
    err = error_of({"backend": "modelopt.onnx", "backend_kwargs": {"calibraton_method": "max"}})
    assert err.key == "quantize.backend_kwargs.calibraton_method"
    assert "did you mean 'calibration_method'" in str(err)
    err = error_of({"backend": "torchao", "backend_kwargs": {"filter": None}})
    assert "valid: config, filter_fn, device" in str(err)
    # ModelOpt's PyTorch config keys
    assert load_spec({"backend": "modelopt.pytorch", "backend_kwargs": {"algorithm": "max"}})


def test_experiment_file_with_evaluate_section(tmp_path):
    path = write(
        tmp_path,
        """
        model: {arch: resnet}
        quantize:
          backend: torchao
          results_dir: out
        evaluate:
          is_quantized: true
          data: test.npz
        """,
    )
    experiment = load_experiment(path)
    assert experiment.quantize.results_dir == str(tmp_path / "out")
    assert experiment.evaluate.is_quantized is True
    assert experiment.evaluate.data == str(tmp_path / "test.npz")
    assert experiment.inference is None


# --- error paths: each its own one-line message naming file:line:col, key, value and valid options


def test_unsupported_dtype_names_location_key_value_and_options(tmp_path):
    path = write(
        tmp_path,
        """
        quantize:
          backend: modelopt.onnx
          layers:
            - module_name: "*"
            - module_name: conv
              weights:
                dtype: int4
        """,
    )
    err = error_of(path)
    assert str(err) == (
        f"{path}:7:16: quantize.layers[1].weights.dtype: 'int4' is not supported "
        "(valid: int8, fp8_e4m3fn, fp8_e5m2, native); did you mean 'int8'?"
    )


def test_unknown_key_suggests_the_closest_spelling(tmp_path):
    err = error_of(write(tmp_path, "quantize:\n  algoritm: max\n"))
    assert err.location.endswith("q.yaml:2:3")
    assert err.key == "quantize.algoritm"
    assert "unknown key 'algoritm'; did you mean 'algorithm'?" in str(err)


def test_unknown_nested_key_lists_that_levels_keys(tmp_path):
    err = error_of(write(tmp_path, "quantize:\n  layers:\n    - module_name: a\n      weight: {dtype: int8}\n"))
    assert err.key == "quantize.layers[0].weight"
    assert "did you mean 'weights'" in str(err)
    assert "valid: module_name, weights, activations" in str(err)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "the spec is empty"),
        ("# only a comment\n", "the spec is empty"),
        ("quantize:\n  backend: [\n", "YAML syntax error"),
        ("train:\n  epochs: 3\n", "no 'quantize' section (top-level keys: train)"),
        ("- a\n- b\n", "expected a mapping with a 'quantize' section at the top, got a list"),
        ("quantize:\n  layers:\n    module_name: x\n", "quantize.layers: expected a list, got a mapping"),
        ("quantize: [1, 2]\n", "expected a mapping, got a list"),
        ("quantize:\n  layers:\n  - {}\n", "quantize.layers[0].module_name: required key is missing"),
        ("quantize:\n  skip_names: '*head*'\n", "expected a list of patterns, got the string '*head*'"),
        ("quantize:\n  device: gpu\n", "'gpu' is not a device (valid: cuda, cpu, cuda:N, auto)"),
        ("quantize:\n  backend: tensorrt\n", "'tensorrt' is not supported (valid: torchao, modelopt.pytorch"),
        ("quantize:\n  algorithm: Entropy\n", "did you mean 'entropy'"),
        ("quantize:\n  backend: torchao\n  backend: modelopt\n", "duplicate key 'backend' (first at line 2)"),
        ("quantize:\n  calibration: {max_samples: many}\n", "quantize.calibration.max_samples: expected an integer"),
        ("quantize:\n  compare: {fail_on_mismatch: maybe}\n", "expected true or false"),
    ],
)
def test_each_bad_file_gets_its_own_message(tmp_path, text, expected):
    assert expected in str(error_of(write(tmp_path, text)))


def test_yaml_syntax_error_gives_its_line(tmp_path):
    err = error_of(write(tmp_path, "quantize:\n  backend: torchao\n  layers: [\n"))
    assert err.location.startswith(str(tmp_path / "q.yaml") + ":4:")


def test_missing_file_and_folder(tmp_path):
    assert "spec file not found" in str(error_of(tmp_path / "nope.yaml"))
    assert "is a folder" in str(error_of(tmp_path))


def test_dict_errors_have_key_but_no_location():
    err = error_of({"quantize": {"layers": [{"module_name": "x", "weights": {"dtype": "int3"}}]}})
    assert err.location is None
    assert str(err).startswith("quantize.layers[0].weights.dtype: 'int3' is not supported")


def test_assignment_is_validated_too():
    from pydantic import ValidationError

    spec = QuantizeSpec()
    with pytest.raises(ValidationError, match=r"target\n  'cpu' is not supported \(valid: tensorrt, onnxruntime\)"):
        spec.target = "cpu"
    assert spec.target == "tensorrt"  # the refused value is not kept
