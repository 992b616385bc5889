"""TAO's RT-DETR task: the zoo's RT-DETR-shaped detector, trained briefly (seeded) on a labelled
shapes set in COCO format, through the three backends (torchao weight-only, modelopt.pytorch
static, lowered ONNX + compile), with `tao-qc evaluate` printing the quantized artifact's mAP."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _compile_helpers import run_cli
from _frontends_helpers import cached_state
from tao_qc.testing import zoo, zoo_shapes
from tao_qc.evaluate.detection import decode_rtdetr, load_annotations, map_against_annotations
from tao_qc.testing.zoo_shapes import CLASSES, shapes_dataset, train_rtdetr

pytestmark = pytest.mark.slow
FACTORY = "tao_qc.zoo:RTDETRStyle"
MAP_LINE = re.compile(r"mAP@\[\.5:\.95\] (\d\.\d{4}), mAP@\.5 (\d\.\d{4}) \((\d+) images, (\d+) annotated boxes")


def fp32_map(model: torch.nn.Module, images: np.ndarray, truth_path: Path):
    with torch.no_grad():
        labels, boxes, scores = model(torch.from_numpy(images))
    found = decode_rtdetr({"labels": labels.numpy(), "boxes": boxes.numpy(), "scores": scores.numpy()}, {"images": images})
    return map_against_annotations(load_annotations(truth_path), found, [(64, 64)] * len(images))


@pytest.fixture(scope="module")
def rtdetr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rtdetr")
    # Trained once per content of the zoo and the training code (a few minutes on 2 cores), then cached.
    key = hashlib.sha256((inspect.getsource(zoo) + inspect.getsource(zoo_shapes) + torch.__version__).encode()).hexdigest()[:20]
    model = cached_state(zoo.RTDETRStyle(num_classes=len(CLASSES)), f"rtdetr-{key}", lambda: train_rtdetr(seed=0))
    torch.save(model.state_dict(), folder / "rtdetr.pth")
    val, coco = shapes_dataset(200, seed=7)
    np.savez(folder / "val.npz", images=val)
    (folder / "val.json").write_text(json.dumps(coco))
    calibration, _ = shapes_dataset(64, seed=8)
    np.savez(folder / "calib.npz", images=calibration)
    return SimpleNamespace(folder=folder, model=model, val=val, coco=coco, fp32=fp32_map(model, val, folder / "val.json"))


def experiment(folder: Path, backend: str, *, is_quantized: bool = True) -> Path:
    path = folder / f"exp_{backend}_{is_quantized}.yaml"
    path.write_text(
        "quantize:\n"
        f"  backend: {backend}\n  device: cpu\n  layers: []\n"
        "  calibration: {data: calib.npz, max_samples: 64, batch_size: 16}\n"
        f"  results_dir: results_{backend}\n"
        "  compare: {task: detection, decoder: rtdetr}\n"
        "evaluate:\n"
        f"  is_quantized: {str(is_quantized).lower()}\n  checkpoint: rtdetr.pth\n"
        "  data: val.npz\n  labels: val.json\n  batch_size: 50\n"
    )
    return path


def test_trained_briefly_the_detector_finds_the_shapes(rtdetr):
    # Measured: 0.70 mAP@[.5:.95], 0.96 mAP@.5 on 200 held-out images after 300 steps (25 s, 2 cores).
    assert rtdetr.fp32.map >= 0.55 and rtdetr.fp32.map50 >= 0.9
    assert set(rtdetr.fp32.per_class) == set(range(len(CLASSES)))
    assert all(ap >= 0.4 for ap, _ in rtdetr.fp32.per_class.values())


def test_evaluate_prints_fp32_map_of_the_checkpoint(rtdetr, capsys):
    code, out, err = run_cli(["evaluate", "-e", experiment(rtdetr.folder, "torchao", is_quantized=False),
                              "--model-factory", FACTORY], capsys)
    assert code == 0, err
    found = MAP_LINE.search(out)
    assert found, out
    assert float(found[1]) == pytest.approx(rtdetr.fp32.map, abs=5e-5)
    assert int(found[3]) == 200 and int(found[4]) == len(rtdetr.coco["annotations"])
    assert all(f"  {name}: AP@[.5:.95]" in out for name in CLASSES)


@pytest.mark.parametrize("backend, artifact, tolerance", [
    ("torchao", "quantized_model_torchao.pth", 0.01),  # int8 weights of the Linear layers only
    ("modelopt.pytorch", "quantized_model_modelopt.pth", 0.05),  # int8 weights and activations everywhere
])
def test_quantized_artifact_is_evaluated_by_map(rtdetr, capsys, backend, artifact, tolerance):
    spec = experiment(rtdetr.folder, backend)
    code, out, err = run_cli(["-q", "quantize", rtdetr.folder / "rtdetr.pth", "--spec", spec, "--model-factory", FACTORY], capsys)
    assert code == 0, err
    assert (rtdetr.folder / f"results_{backend}" / artifact).is_file()
    code, out, err = run_cli(["evaluate", "-e", spec], capsys)
    assert code == 0, err
    found = MAP_LINE.search(out)
    assert found and artifact in out, out
    quantized = float(found[1])
    assert abs(quantized - rtdetr.fp32.map) <= tolerance, (quantized, rtdetr.fp32.map)
    assert float(found[2]) >= rtdetr.fp32.map50 - tolerance
    code, out, err = run_cli(["evaluate", "-e", spec, "--json"], capsys)
    result = json.loads(out)
    assert result["map"] == pytest.approx(quantized, abs=5e-5) and len(result["per_class"]) == len(CLASSES)


def test_lowered_to_onnx_and_compiled_the_report_holds_map_against_the_annotations(rtdetr, capsys):
    import onnx

    spec = rtdetr.folder / "q_onnx.yaml"
    spec.write_text(
        "quantize:\n  backend: modelopt.onnx\n  target: onnxruntime\n  device: cpu\n"
        "  calibration: {data: calib.npz, max_samples: 64}\n"
        "  compare: {data: val.npz, task: detection, decoder: rtdetr, annotations: val.json}\n"
    )
    code, out, err = run_cli(["compile", rtdetr.folder / "rtdetr.pth", "--spec", spec, "--model-factory", FACTORY,
                              "-o", rtdetr.folder / "onnx"], capsys)
    report = json.loads((rtdetr.folder / "onnx" / "report.json").read_text())
    lowered = onnx.load(rtdetr.folder / "onnx" / "rtdetr.fp32.onnx")
    assert [o.name for o in lowered.graph.output] == ["labels", "boxes", "scores"]
    section = report["comparison"]["detection"]
    assert section["against"] == "annotations" and section["images"] == 200
    # FP32 in ONNX Runtime scores what it scores in PyTorch.
    assert section["fp32"]["map"] == pytest.approx(rtdetr.fp32.map, abs=0.01)
    assert section["map"] >= rtdetr.fp32.map - 0.05 and section["vs_fp32"]["map50"] >= 0.9
    assert [row["name"] for row in section["per_class"]] == list(CLASSES)
    detection_check = next(c for c in report["comparison"]["checks"] if c["output"] == "detections")
    assert detection_check["metric"] == "map" and detection_check["passed"] == (code == 0)
    assert "detections: mAP@[.5:.95]" in out and "FP32 ->" in out
