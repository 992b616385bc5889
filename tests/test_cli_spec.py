"""`tao-qc` itself and its `spec` verbs, run as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

TAO_QC = [sys.executable, "-m", "tao_qc.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TAO_QC, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_and_version():
    result = run("--help")
    assert result.returncode == 0
    assert "spec" in result.stdout and "Examples" in result.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("tao-qc, version ")


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from tao_qc.cli import main; main(['--help']); print(sorted(m for m in ('torch','modelopt','onnxruntime') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("[]")


def test_init_writes_a_spec_that_validates(tmp_path):
    result = run("spec", "init", "q.yaml", "--target", "onnxruntime", "--model", "m.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "q.yaml").read_text()
    assert text.count("#") > 10  # commented
    validated = run("spec", "validate", "q.yaml", "--json", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    spec = json.loads(validated.stdout)["quantize"]
    assert spec["backend"] == "modelopt.onnx"  # 'modelopt' resolved by the .onnx model_path
    assert spec["target"] == "onnxruntime"
    assert spec["model_path"] == str(tmp_path / "m.onnx")
    # refuses to overwrite
    again = run("spec", "init", "q.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "exists (use --force" in again.stderr


def test_validate_prints_normalized_yaml(tmp_path):
    (tmp_path / "q.yaml").write_text("quantize:\n  backend: torchao\n  layers:\n  - module_name: fc\n    weights: {dtype: float8_e4m3fn}\n")
    result = run("spec", "validate", str(tmp_path / "q.yaml"))
    assert result.returncode == 0
    data = yaml.safe_load(result.stdout)["quantize"]
    assert data["layers"][0]["weights"]["dtype"] == "fp8_e4m3fn"
    assert data["mode"] == "weight_only_ptq"


def test_bad_spec_is_one_line_exit_2_without_traceback(tmp_path):
    (tmp_path / "q.yaml").write_text("quantize:\n  layers:\n  - module_name: conv\n    weights:\n      dtype: int4\n")
    result = run("spec", "validate", str(tmp_path / "q.yaml"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"tao-qc: error: {tmp_path / 'q.yaml'}:5:14: quantize.layers[0].weights.dtype: 'int4' is not supported "
        "(valid: int8, fp8_e4m3fn, fp8_e5m2, native); did you mean 'int8'?"
    ]
    debug = run("--debug", "spec", "validate", str(tmp_path / "q.yaml"))
    assert "Traceback" in debug.stderr


def test_unknown_verb_and_missing_argument_exit_2():
    assert run("frobnicate").returncode == 2
    assert run("spec", "validate").returncode == 2


def test_log_lines_go_to_stderr_as_it_is_when_they_are_written(monkeypatch):
    """A caller that swaps stderr and closes the old stream (a test's capture, a notebook's redirect)
    leaves no logging error behind: lines follow sys.stderr."""
    import io
    import logging

    from tao_qc.console import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging(0)
    logging.getLogger("tao_qc.test").info("into the first")
    first_text = first.getvalue()
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("tao_qc.test").warning("into the second")
    assert first_text == "tao-qc: into the first\n"
    assert second.getvalue() == "tao-qc: warning: into the second\n"
