"""Detection as a task: decoders, COCO mAP (faster-coco-eval) against annotations or FP32's boxes,
and the comparison on real detectors (UltraFace with `boxes_scores`, FastestDet with a user's own
`module:function` post-processing)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from _compile_helpers import run_cli, session
from tao_qc.evaluate.compare import compare_models
from tao_qc.data import model_inputs, open_inputs
from tao_qc.evaluate.detection import (
    Detections,
    batched_nms,
    coco_map,
    decode,
    decode_boxes_scores,
    decode_rtdetr,
    load_annotations,
    load_decoder,
    map_against_reference,
    map_metric,
    match_f1,
)
from tao_qc.errors import InputError, SpecError
from tao_qc.spec import CalibrationSpec, CompareSpec, load_spec

REPO = Path(__file__).resolve().parent.parent
ULTRAFACE = REPO / "examples" / "ultraface"


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(labels, np.int64))


# ---------------------------------------------------------------------------------------------
# COCO mAP


def test_half_the_boxes_found_is_cocos_101_point_ap():
    truth = {"images": [{"id": 7, "width": 200, "height": 200}, {"id": 9, "width": 200, "height": 200}],
             "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
                             {"id": 2, "image_id": 9, "category_id": 3, "bbox": [80, 80, 40, 40], "area": 1600, "iscrowd": 0}],
             "categories": [{"id": 3, "name": "face"}]}
    found = [dets([[10, 10, 60, 60]], [0.9], [3]), Detections.empty()]
    result = coco_map(truth, found, [7, 9])
    # Recall reaches 0.5 at precision 1: COCO's 101-point interpolation gives 51/101 at every IoU.
    assert result.map == pytest.approx(51 / 101)
    assert result.map50 == pytest.approx(51 / 101)
    assert result.per_class == {3: (pytest.approx(51 / 101), pytest.approx(51 / 101))}
    assert (result.truth_boxes, result.predicted_boxes) == (2, 1)


def test_fp32_against_its_own_boxes_is_one_and_a_shift_costs_the_strict_thresholds():
    rng = np.random.default_rng(0)
    reference = []
    for _ in range(6):
        corners = rng.uniform(0, 200, (5, 2))
        boxes = np.c_[corners, corners + rng.uniform(20, 80, (5, 2))]
        reference.append(dets(boxes, rng.uniform(0.2, 1.0, 5), rng.integers(0, 3, 5)))
    sizes = [(320, 240)] * 6
    assert map_against_reference(reference, reference, sizes, 0.5).map == pytest.approx(1.0)

    # One box, its copy 18% shorter: IoU 0.82 matches at IoU thresholds 0.50..0.80 (7 of 10).
    truth = [dets([[0, 0, 100, 100]], [0.9], [0])]
    shorter = [dets([[0, 0, 100, 82]], [0.9], [0])]
    result = map_against_reference(truth, shorter, [(320, 240)], 0.5)
    assert result.map50 == pytest.approx(1.0)
    assert result.map == pytest.approx(0.7)


def test_reference_boxes_below_the_threshold_are_not_truth():
    reference = [dets([[0, 0, 50, 50], [100, 100, 150, 150]], [0.9, 0.3], [0, 0])]
    only_first = [dets([[0, 0, 50, 50]], [0.9], [0])]
    assert map_against_reference(reference, only_first, [(200, 200)], 0.5).map == pytest.approx(1.0)
    assert map_against_reference(reference, only_first, [(200, 200)], 0.2).map < 0.6
    nothing = map_against_reference([Detections.empty()], only_first, [(200, 200)], 0.5)
    assert nothing.map is None and nothing.truth_boxes == 0


def test_nms_suppresses_overlaps_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([1, 1, 2, 1])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]


def test_match_f1_counts_same_label_overlaps():
    a = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.9], [0, 0])
    assert match_f1(a, a) == 1.0
    assert match_f1(a, dets([[0, 0, 10, 10]], [0.9], [0])) == pytest.approx(2 / 3)
    assert match_f1(a, dets([[0, 0, 10, 10]], [0.9], [1])) == 0.0
    assert match_f1(Detections.empty(), Detections.empty()) == 1.0


# ---------------------------------------------------------------------------------------------
# Decoders


def test_rtdetr_decoder_scales_normalized_boxes_to_the_input():
    image = np.zeros((2, 3, 64, 128), np.float32)
    outputs = {"labels": np.array([[1, 0], [2, 2]]), "boxes": np.array([[[0.5, 0.5, 1, 1], [0, 0, 0.25, 0.5]]] * 2, np.float32),
               "scores": np.array([[0.9, 0.005], [0.8, 0.6]], np.float32)}
    first, second = decode_rtdetr(outputs, {"images": image})
    np.testing.assert_allclose(first.boxes, [[64, 32, 128, 64]])  # the 0.005 query is below the rank floor
    assert first.labels.tolist() == [1]
    np.testing.assert_allclose(second.scores, [0.8, 0.6])
    np.testing.assert_allclose(second.boxes[1], [0, 0, 32, 32])


def test_rtdetr_decoder_reads_raw_heads_and_target_sizes():
    logits = np.full((1, 3, 4), -10.0, np.float32)
    logits[0, 2, 1] = 3.0  # query 2, class 1
    boxes = np.array([[[0.5, 0.5, 0.2, 0.2]] * 2 + [[0.25, 0.5, 0.5, 1.0]]], np.float32)  # cxcywh
    (result,) = decode_rtdetr({"pred_logits": logits, "pred_boxes": boxes}, {"images": np.zeros((1, 3, 32, 32), np.float32)})
    assert result.labels[0] == 1
    assert result.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    np.testing.assert_allclose(result.boxes[0], [0, 0, 16, 32])
    # With orig_target_sizes (width, height), boxes come in those units and go back to the input's.
    outputs = {"labels": np.array([[0]]), "boxes": np.array([[[100, 50, 200, 100]]], np.float32), "scores": np.array([[0.9]], np.float32)}
    (result,) = decode_rtdetr(outputs, {"images": np.zeros((1, 3, 32, 64), np.float32), "orig_target_sizes": np.array([[400, 200]])})
    np.testing.assert_allclose(result.boxes[0], [16, 8, 32, 16])


def test_decoder_errors_name_the_decoder_and_what_was_wrong():
    image = {"input": np.zeros((1, 3, 8, 8), np.float32)}
    with pytest.raises(InputError, match="decoder rtdetr: the model's outputs .*logits"):
        decode_rtdetr({"scores": np.zeros((1, 5, 2)), "boxes": np.zeros((1, 5, 4))}, image)
    with pytest.raises(InputError, match=r"decoder boxes_scores: needs per-anchor boxes \[N, A, 4\]"):
        decode_boxes_scores({"out": np.zeros((1, 10))}, image)
    with pytest.raises(InputError, match="returned 2 items for a batch of 1 images"):
        decode(lambda outputs, inputs: [Detections.empty()] * 2, {"o": np.zeros((1, 3))}, image, "mine:f")
    with pytest.raises(InputError, match="image 0 has 2 boxes, 1 scores"):
        decode(lambda outputs, inputs: [(np.zeros((2, 4)), np.zeros(1), np.zeros(2))], {"o": np.zeros((1, 3))}, image, "mine:f")
    with pytest.raises(InputError, match="decoder mine:f failed on a batch of 1 .ZeroDivisionError"):
        decode(lambda outputs, inputs: 1 / 0, {"o": np.zeros((1, 3))}, image, "mine:f")
    with pytest.raises(InputError, match="cannot import module 'no_such_module'"):
        load_decoder("no_such_module:decode")
    with pytest.raises(InputError, match="has no function 'nope'"):
        load_decoder("_detection_helpers:nope")


def test_spec_detection_fields_are_validated_at_the_edge(tmp_path):
    assert load_spec({"compare": {"decoder": "rtdetr"}}).compare.resolved_task == "detection"
    assert load_spec({}).compare.resolved_task == "auto"
    spec_file = tmp_path / "q.yaml"
    spec_file.write_text("quantize:\n  compare:\n    task: detection\n    decoder: rtdert\n    annotations: val.json\n")
    with pytest.raises(SpecError, match=r"q.yaml:4:14: quantize.compare.decoder: 'rtdert' is not a decoder .*did you mean 'rtdetr'"):
        load_spec(spec_file)
    spec_file.write_text("quantize:\n  compare:\n    decoder: rtdetr\n    annotations: val.json\n")
    assert load_spec(spec_file).compare.annotations == str(tmp_path / "val.json")  # beside the spec
    with pytest.raises(SpecError, match="task 'detection' needs a decoder"):
        load_spec({"compare": {"task": "detection"}})
    with pytest.raises(SpecError, match="decoder, score_threshold: only for task 'detection'"):
        load_spec({"compare": {"task": "classification", "decoder": "rtdetr", "score_threshold": 0.3}})


def test_annotations_that_are_not_coco_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "bbox": [1, 2, 3]}]}))
    with pytest.raises(InputError, match=r"annotations\[0\] needs image_id, category_id and bbox"):
        load_annotations(bad)
    bad.write_text("[]")
    with pytest.raises(InputError, match="is not COCO json"):
        load_annotations(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# UltraFace: the demo detector, through compile and compare


def ultraface_photos(spec) -> object:
    inputs = model_inputs(onnx.load(str(ULTRAFACE / "model.onnx")))
    return open_inputs(str(ULTRAFACE / "images"), inputs, calibration=spec.calibration, max_samples=16, key="--data")


@pytest.fixture(scope="module")
def ultraface_int8(tmp_path_factory):
    from tao_qc.driver import compile_model

    from tao_qc.spec import load_spec
    from tao_qc.spec.cpu import this_machine

    # `tao-qc compare` and compare_models run it through this machine's kernels: compiled for them.
    spec = load_spec(ULTRAFACE / "q.yaml")
    spec.onnxruntime.cpu = this_machine().isa
    return compile_model(ULTRAFACE / "model.onnx", spec, results_dir=tmp_path_factory.mktemp("uf") / "out")


@pytest.mark.slow
def test_boxes_scores_finds_the_faces_ultraface_finds():
    spec = load_spec(ULTRAFACE / "q.yaml")
    photos = list(ultraface_photos(spec))
    runner = session(ULTRAFACE / "model.onnx")
    found = []
    for feeds in photos:
        scores, boxes = runner.run(["scores", "boxes"], feeds)
        (detections,) = decode_boxes_scores({"scores": scores, "boxes": boxes}, feeds)
        strong = detections.above(0.7)
        # The same count as thresholding the face column and suppressing overlaps by hand.
        face = scores[0, :, 1] >= 0.7
        kept = batched_nms(boxes[0, face] * [320, 240, 320, 240], scores[0, face, 1], np.ones(face.sum()), 0.5)
        assert len(strong) == len(kept)
        assert set(strong.labels.tolist()) <= {1}
        assert (strong.boxes[:, 2:] > strong.boxes[:, :2]).all() and (strong.boxes >= -5).all()
        assert (strong.boxes[:, [0, 2]] <= 325).all() and (strong.boxes[:, [1, 3]] <= 245).all()
        found.append(len(strong))
    # face_1 is a class photo (dozens of faces); face_13 two men, face_19 five people, face_2 four.
    assert found[0] > 30 and found[1:] == [2, 5, 4]


@pytest.mark.slow
def test_compile_reports_map_against_fp32_and_draws_both_models_boxes(ultraface_int8):
    report = json.loads(ultraface_int8.report_path.read_text())
    section = report["comparison"]["detection"]
    assert report["comparison"]["task"] == "detection"
    assert section["against"] == "fp32" and section["decoder"] == "boxes_scores" and section["images"] == 4
    assert section["truth_boxes"] == section["reference_boxes"] > 40
    # INT8 finds FP32's faces: every one at IoU 0.5, most of them nearly to the pixel.
    assert section["map50"] >= 0.95 and section["map"] >= 0.8
    assert section["map"] == section["vs_fp32"]["map"]
    assert [row["label"] for row in section["per_class"]] == [1]
    checks = report["comparison"]["checks"]
    assert [c["metric"] for c in checks] == ["map50_vs_fp32"] and checks[0]["passed"]

    html = (ultraface_int8.results_dir / "report.html").read_text()
    assert "Detections: quantized against FP32" in html
    figures = re.findall(r'<svg[^>]*aria-label="(FP32|quantized) boxes on sample (\d+)"[^>]*>(.*?)</svg>', html, re.S)
    assert len(figures) == 2 * len(section["samples"]) == 8
    for role, index, body in figures:
        sample = next(s for s in section["samples"] if s["index"] == int(index))
        assert body.count("<rect") == len(sample["fp32" if role == "FP32" else "quantized"])
        assert 'href="data:image/jpeg;base64,' in body
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


@pytest.mark.slow
def test_compare_cli_prints_map_and_per_class_ap(ultraface_int8, capsys):
    code, out, err = run_cli(["compare", ULTRAFACE / "model.onnx", ultraface_int8.model_path, "--data", ULTRAFACE / "images",
                              "--spec", ULTRAFACE / "q.yaml", "--task", "detection", "--decoder", "boxes_scores"], capsys)
    assert code == 0, err
    assert re.search(r"mAP@\[\.5:\.95\] 0\.[89]\d+, mAP@\.5 (1\.0000|0\.9[5-9]\d+)", out), out
    assert "AP per class" in out and "class 1" in out and "PASSED" in out

    code, out, err = run_cli(["compare", ULTRAFACE / "model.onnx", ultraface_int8.model_path, "--data", ULTRAFACE / "images",
                              "--spec", ULTRAFACE / "q.yaml", "--task", "dense", "--decoder", "boxes_scores"], capsys)
    assert code == 2 and "only for task 'detection'" in err


@pytest.mark.slow
def test_annotations_in_original_photo_pixels_are_scaled_to_the_model_input(ultraface_int8, tmp_path):
    """A user's COCO json for the photos as they are on disk (not the model's 320x240): FP32's own
    boxes written there must score 1.0 against it, which only holds if boxes are scaled back right."""
    from PIL import Image

    spec = load_spec(ULTRAFACE / "q.yaml")
    photos = ultraface_photos(spec)
    runner = session(ULTRAFACE / "model.onnx")
    files = sorted((ULTRAFACE / "images").iterdir())
    images, annotations = [], []
    for index, (path, feeds) in enumerate(zip(files, photos)):
        width, height = Image.open(path).size
        images.append({"id": 100 + index, "file_name": path.name, "width": width, "height": height})
        scores, boxes = runner.run(["scores", "boxes"], feeds)
        (faces,) = decode_boxes_scores({"scores": scores, "boxes": boxes}, feeds)
        for x1, y1, x2, y2 in faces.above(0.7).boxes * np.array([width / 320, height / 240] * 2):
            annotations.append({"image_id": 100 + index, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]})
    truth = tmp_path / "faces.json"
    truth.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}))

    settings = spec.compare.model_copy(update={"annotations": str(truth)})
    result = compare_models(ULTRAFACE / "model.onnx", ultraface_int8.model_path, photos, settings=settings)
    section = result.detection
    assert section["against"] == "annotations" and section["truth_boxes"] == len(annotations)
    assert section["fp32"]["map"] == pytest.approx(1.0, abs=1e-6)
    assert section["map50"] >= 0.95 and section["map"] <= section["fp32"]["map"]
    assert section["per_class"][0]["name"] == "face" and section["per_class"][0]["fp32_ap"] == pytest.approx(1.0, abs=1e-6)
    assert [c.metric for c in result.checks] == ["map"]
    assert result.checks[0].threshold == pytest.approx(1.0 - 0.01)

    # The metric the accuracy-driven fallback calls: whole-set arrays in, mAP out.
    feeds = {name: np.concatenate([f[name] for f in photos]) for name in photos.first()}
    fp32_outputs = [runner.run(None, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(4)]
    names = [o.name for o in runner.get_outputs()]
    reference = {n: np.concatenate([o[j] for o in fp32_outputs]) for j, n in enumerate(names)}
    assert map_metric(reference, reference, feeds, settings) == pytest.approx(1.0, abs=1e-6)
    worse = dict(reference, boxes=reference["boxes"] + 0.02)  # every box moved by 2% of the picture
    assert map_metric(reference, worse, feeds, settings) < 0.9
    assert map_metric(reference, worse, feeds, spec.compare) < map_metric(reference, reference, feeds, spec.compare) == 1.0


# ---------------------------------------------------------------------------------------------
# FastestDet: a user's own post-processing as a module:function decoder


@pytest.mark.slow
def test_user_decoder_on_fastestdet(shared_models, tmp_path, capsys):
    from tao_qc.driver import compile_model

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in [shared_models / "fastestdet" / "wolves.jpg", *sorted((shared_models / "images").iterdir()),
                 *sorted((shared_models / "ultraface_rfb320").iterdir())]:
        shutil.copy(path, photos / path.name)
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "calibration": {"data": str(photos), "std": [255.0], "color": "rgb"},
                         "compare": {"decoder": "_detection_helpers:decode_fastestdet", "score_threshold": 0.4}}}
    result = compile_model(shared_models / "fastestdet.onnx", spec, results_dir=tmp_path / "out")
    section = result.report["comparison"]["detection"]
    assert section["decoder"] == "_detection_helpers:decode_fastestdet" and section["images"] == 8
    assert section["reference_boxes"] >= 8  # wolves, faces (COCO class 0, person)
    labels = {row["label"] for row in section["per_class"]}
    assert 0 in labels  # people in the face photos
    assert section["map50"] >= 0.8, section

    code, out, err = run_cli(["compare", shared_models / "fastestdet.onnx", result.model_path, "--data", photos,
                              "--decoder", "_detection_helpers:decode_fastestdet", "--score-threshold", "0.4"], capsys)
    assert "mAP@[.5:.95]" in out and "AP per class" in out, err
    # `compare` runs this machine's kernels; compile measured what the model's CPU computes, the same
    # figure where this machine's kernels compute as that CPU's.
    if result.report["comparison"]["candidate_arithmetic"] == "kernels":
        assert f"{section['map']:.4f}" in out


def _fastestdet_photos(shared_models: Path, folder: Path) -> Path:
    photos = folder / "photos"
    photos.mkdir()
    for path in [shared_models / "fastestdet" / "wolves.jpg", *sorted((shared_models / "images").iterdir()),
                 *sorted((shared_models / "ultraface_rfb320").iterdir())]:
        shutil.copy(path, photos / path.name)
    return photos


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_fallback_on_fastestdet_runs_a_decoder_only_this_process_can_import(shared_models, tmp_path, monkeypatch,
                                                                             executor):
    """The application's own decoder, importable in the compiling process only through a folder on
    its sys.path (here the tests' folder, which pytest put there; for a user, one their script or
    notebook added), with an mAP target plain INT8 misses: every trial worker decodes boxes with it."""
    from tao_qc.driver import compile_model

    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)  # neither the current folder nor the spec's holds the decoder
    photos = _fastestdet_photos(shared_models, tmp_path)
    # The head's Convs only: a dozen candidates keep the search to seconds; an mAP of 0.999 no INT8
    # head reaches makes it run.
    head = {"module_name": "/detect_head/*", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}}
    spec = {"quantize": {"target": "onnxruntime", "device": "cpu", "layers": [head],
                         "calibration": {"data": str(photos), "std": [255.0], "color": "rgb"},
                         "compare": {"decoder": "_detection_helpers:decode_fastestdet", "score_threshold": 0.4},
                         "accuracy": {"metric": "map", "min": 0.999, "steps": ["float"], "max_float_fraction": 0.25,
                                      "ranking_samples": 4, "executor": executor, "workers": 2}}}
    ray = pytest.importorskip("ray") if executor == "ray" else None
    if ray is not None:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = compile_model(shared_models / "fastestdet.onnx", spec, results_dir=tmp_path / "out",
                               raise_on_mismatch=False)
    finally:
        if ray is not None:
            ray.shutdown()
    search = result.report["accuracy"]["search"]
    assert search["executor"] == executor and search["workers"] == 2
    assert search["sensitivity"]["nodes"] and search["evaluations"]["ranking_trials"] > 0
    assert all(node["score"] is not None for node in search["sensitivity"]["nodes"])
