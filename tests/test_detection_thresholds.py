"""One rule for FP32's and the quantized model's confidence in detection (issue 26): a
`module:function` decoder's boxes are the application's, counted on both sides as it returns them;
`compare.score_threshold`, given, cuts both sides. tao-qc's mAP@.5 must equal an independent COCO
count (faster-coco-eval's COCOeval called here, FP32's boxes as the ground truth) of the decoder's
boxes, on a decoder whose boxes score 0.4-0.5.

The two models are real ONNX graphs run by ONNX Runtime: FP32 is `sigmoid(x)` per cell; the
"quantized" one adds a per-cell offset, as quantization error moves scores, so that two of FP32's
boxes at 0.4-0.5 fall under the application's 0.4 and one box appears at 0.45 where FP32 has none.
Measured: mAP@.5 0.868 by the application's boxes; the old rule (FP32 cut at 0.5) read 0.964.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import _detection_helpers
from tao_qc.evaluate.compare import compare_models
from tao_qc.evaluate.detection import map_against_reference, thresholds
from tao_qc.spec import CompareSpec, load_spec

DECODER = "_detection_helpers:decode_cells"
# FP32's scores per cell of one 4x4 image (sample 0), then a second image.
FP32_SCORES = np.array([
    [[0.42, 0.45, 0.48, 0.30], [0.80, 0.60, 0.20, 0.47], [0.10, 0.44, 0.90, 0.35], [0.05, 0.41, 0.70, 0.20]],
    [[0.46, 0.10, 0.85, 0.43], [0.20, 0.49, 0.30, 0.65], [0.10, 0.10, 0.42, 0.10], [0.55, 0.20, 0.10, 0.44]],
])
# The candidate's change per cell (in logits), the same for both images: cell (0, 0) falls under 0.4
# in both (0.42 -> 0.35, 0.46 -> 0.39: two boxes lost), cell (0, 3) rises to 0.45 in image 0 (a box
# FP32 does not have), and two others move a little.
OFFSETS = np.zeros((4, 4))
OFFSETS[0, 0], OFFSETS[0, 3], OFFSETS[1, 1], OFFSETS[2, 1] = -0.3, 0.65, -0.05, 0.08


def _logit(p):
    return np.log(p / (1 - p))


def _model(path, offsets):
    """scores = Sigmoid(x + offsets): x [N, 1, 4, 4] (the image input detection expects)."""
    offset = numpy_helper.from_array(offsets.reshape(1, 1, 4, 4).astype(np.float32), "offset")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], ["logits"]), helper.make_node("Sigmoid", ["logits"], ["scores"])],
        "cells", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, 4, 4])], [offset])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture()
def models(tmp_path):
    fp32 = _model(tmp_path / "fp32.onnx", np.zeros((4, 4)))
    candidate = _model(tmp_path / "candidate.onnx", OFFSETS)
    feeds = [{"x": _logit(FP32_SCORES).reshape(2, 1, 4, 4).astype(np.float32)}]
    return fp32, candidate, feeds


def _decoded(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = {"scores": session.run(None, feeds[0])[0]}
    return _detection_helpers.decode_cells(outputs, feeds[0])


def independent_map50(reference, candidate, floor):
    """COCOeval's mAP@.5 of `candidate`'s boxes at or above `floor` against `reference`'s at or above it."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    images, truth, found = [], [], []
    for image_id, ((rb, rs, rl), (cb, cs, cl)) in enumerate(zip(reference, candidate), start=1):
        images.append({"id": image_id, "width": 80, "height": 80})
        for box, score, label in zip(rb, rs, rl):
            if score >= floor:
                truth.append({"id": len(truth) + 1, "image_id": image_id, "category_id": int(label), "iscrowd": 0,
                              "bbox": [float(box[0]), float(box[1]), 16.0, 16.0], "area": 256.0})
        for box, score, label in zip(cb, cs, cl):
            if score >= floor:
                found.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                              "bbox": [float(box[0]), float(box[1]), 16.0, 16.0]})
    ground = COCO({"images": images, "annotations": truth, "categories": [{"id": 1, "name": "thing"}]},
                  print_function=quiet)
    evaluator = COCOeval_faster(ground, ground.loadRes(found), iouType="bbox", print_function=quiet)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[1])


def test_the_data_has_boxes_at_0_4_to_0_5_that_the_candidate_loses(models):
    fp32, candidate, feeds = models
    reference, found = _decoded(fp32, feeds), _decoded(candidate, feeds)
    fp32_scores = np.concatenate([scores for _, scores, _ in reference])
    assert np.sum((fp32_scores >= 0.4) & (fp32_scores < 0.5)) >= 8
    assert len(found[0][0]) == len(reference[0][0])  # one lost, one gained on image 0
    assert len(found[1][0]) == len(reference[1][0]) - 1


def test_a_user_decoders_boxes_count_on_both_sides_as_an_independent_coco_count_does(models):
    fp32, candidate, feeds = models
    settings = CompareSpec(decoder=DECODER)
    assert thresholds(settings) == (0.0, 0.0)
    result = compare_models(fp32, candidate, feeds, settings=settings)
    section = result.detection
    expected = independent_map50(_decoded(fp32, feeds), _decoded(candidate, feeds), floor=0.0)
    assert section["vs_fp32"]["map50"] == pytest.approx(expected, abs=1e-9)
    assert expected < 0.9  # two of FP32's boxes lost: the default check must see it
    assert section["reference_boxes"] == sum(len(b) for b, _, _ in _decoded(fp32, feeds))
    assert "every box the decoder returns counts" in section["threshold_rule"]
    (check,) = [c for c in result.checks if c.output == "detections"]
    assert check.default and not check.passed

    # What the old rule measured (FP32 cut at 0.5, the candidate kept down to 0.4): the lost boxes
    # were not in the truth, so it read higher than the application's count.
    reference, found = _decoded(fp32, feeds), _decoded(candidate, feeds)
    from tao_qc.evaluate.detection import Detections

    as_detections = [[Detections(b, s.astype(np.float32), lab) for b, s, lab in images] for images in (reference, found)]
    old = map_against_reference(*as_detections, [(80, 80)] * 2, 0.5)
    assert old.map50 > expected + 0.05


def test_an_explicit_score_threshold_cuts_both_models_at_it(models):
    fp32, candidate, feeds = models
    settings = CompareSpec(decoder=DECODER, score_threshold=0.45)
    assert thresholds(settings) == (0.45, 0.45)
    section = compare_models(fp32, candidate, feeds, settings=settings).detection
    expected = independent_map50(_decoded(fp32, feeds), _decoded(candidate, feeds), floor=0.45)
    assert section["vs_fp32"]["map50"] == pytest.approx(expected, abs=1e-9)
    assert "score >= 0.45 count, for FP32 and the quantized model alike" in section["threshold_rule"]


def test_built_in_decoders_keep_the_truth_at_0_5_and_rank_the_candidate():
    assert thresholds(load_spec({"compare": {"decoder": "boxes_scores"}}).compare) == (0.5, None)
    assert thresholds(load_spec({"compare": {"decoder": "rtdetr", "score_threshold": 0.3}}).compare) == (0.3, None)
