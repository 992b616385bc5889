"""`tao-qc compile` on a PyTorch checkpoint: lowered to ONNX, then the same pipeline and spec."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tao_qc.testing import zoo
from tao_qc.cli import main


@pytest.mark.slow  # compiles a model
def test_checkpoint_is_lowered_and_compiled_with_the_same_patterns(tmp_path, capsys):
    torch.save(zoo.build("small_cnn").state_dict(), tmp_path / "small.pth")
    np.savez(tmp_path / "calib.npz", images=np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32))
    (tmp_path / "q.yaml").write_text(
        "quantize:\n  backend: modelopt\n  device: auto\n  target: onnxruntime\n"
        "  layers: [{module_name: Conv2d}]\n  skip_names: [down.0]\n"
        "  calibration: {data: calib.npz}\n  compare: {min_top1_agreement: 0.9}\n"
    )
    code = main(["-q", "compile", str(tmp_path / "small.pth"), "--spec", str(tmp_path / "q.yaml"),
                 "--model-factory", "tao_qc.zoo:SmallResidualCNN", "-o", str(tmp_path / "out"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    decisions = {d["name"]: d for d in report["decisions"]}
    # PyTorch class and module-path patterns select the lowered graph's nodes
    assert {n for n, d in decisions.items() if d["quantized"]} == {"/stem/stem.0/Conv", "/block/conv1/Conv", "/block/conv2/Conv"}
    assert decisions["/down/down.0/Conv"]["skipped_by"].startswith("skip_names[0] 'down.0'")
    assert not decisions["/head/Gemm"]["quantized"]
    lowered = onnx.load(tmp_path / "out" / "small.fp32.onnx")
    # The report names the lowered graph where it ends up, not in the staging folder renamed into place.
    assert report["model"] == str(tmp_path / "out" / "small.fp32.onnx")
    assert ".partial" not in (tmp_path / "out" / "report.json").read_text()
    assert [i.name for i in lowered.graph.input] == ["images"]  # named by the calibration archive
    assert (tmp_path / "out" / "small.int8.onnx").is_file()
    assert report["comparison"]["passed"]


def test_checkpoint_without_factory_is_a_one_line_error(tmp_path, capsys):
    torch.save(zoo.build("small_cnn").state_dict(), tmp_path / "small.pth")
    code = main(["compile", str(tmp_path / "small.pth"), "--calibration-data", "random", "--device", "cpu",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("tao-qc: error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and "--model-factory" in errors[0]
    assert not (tmp_path / "out").exists()
