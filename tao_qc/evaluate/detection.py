"""Detection as a task: boxes, not raw tensors, are the measure of a quantized detector.

A *decoder* turns a detector's raw outputs into boxes per image; COCO mAP (faster-coco-eval, the
reference COCOeval protocol) measures the quantized model's boxes against a COCO json when one is
given, and always against FP32's own detections (FP32's boxes at or above a confidence as ground truth).

One rule for the confidence of both models (`thresholds`):
- A `module:function` decoder is the application's own post-processing: its boxes are the ones the
  application shows, for FP32 and the quantized model alike. Every box it returns counts, on both
  sides, with no second threshold; `compare.score_threshold`, when given, cuts both sides at it.
  (A default 0.5 on FP32's side only would drop from the truth the boxes FP32 finds at 0.4-0.5 that
  the application shows, so a box INT8 loses there would not count as lost.)
- The built-in decoders (`rtdetr`, `boxes_scores`) return every query's or anchor's score: FP32's
  boxes at or above `score_threshold` (default 0.5) are the objects, and the quantized model's boxes
  are ranked by confidence down to `RANK_FLOOR`, as mAP ranks predictions, so a box FP32 scores 0.52
  and INT8 0.48 is found at a lower rank rather than lost.

Decoders (`compare.decoder`):
- `rtdetr`: outputs named `labels` [N, Q], `boxes` [N, Q, 4] (xyxy) and `scores` [N, Q], as RT-DETR
  deploy exports give them; or the raw heads `*logits*` [N, Q, C] and `*boxes*` [N, Q, 4] (cxcywh),
  decoded as RT-DETR's post-processor does (sigmoid, top 100 over queries x classes). Boxes are
  normalized to [0, 1] unless the model takes a second `[N, 2]` input (RT-DETR's
  `orig_target_sizes`, width and height), in whose units its boxes are.
- `boxes_scores`: per-anchor boxes [N, A, 4] (xyxy, normalized to [0, 1]) and class probabilities
  [N, A, C], as SSD-style exports (UltraFace) give them; with C > 1, column 0 is the background and
  the classes are 1..C-1. Per-class non-maximum suppression at IoU 0.5.
- `module:function`: the user's own post-processing (YOLO or PicoDet decoding + NMS),
  `f(outputs, inputs) -> [(boxes_xyxy[K, 4], scores[K], labels[K]) per image]`, where `outputs` and
  `inputs` map names to arrays of a batch of N images and boxes are in the model input's pixels.

Every decoder's boxes end in the model input's pixels. A COCO json's boxes are in its images'
`width`/`height`; where those differ from the input's size, the image is taken as the sample before
a plain resize (what image-folder data does) and boxes are scaled to it. Its category ids are the
decoder's labels. mAP ranks every detection down to `RANK_FLOOR`, at most `MAX_DETECTIONS` per image
(COCO's maxDets).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.spec.schema import BUILTIN_DECODERS, USER_DECODER_RE  # noqa: F401 - the decoders a spec may name
from tao_qc.spec.user_code import load_user_function

log = logging.getLogger("tao_qc.detection")

DEFAULT_SCORE_THRESHOLD = 0.5
RANK_FLOOR = 0.01  # detections below this confidence are not ranked (they cannot move mAP visibly)
MAX_DETECTIONS = 100  # COCO's maxDets
NMS_IOU = 0.5
# Default checks: without annotations, the quantized model finds FP32's boxes (mAP@.5 against them);
# with annotations, it loses at most one point of mAP@[.5:.95] against FP32's.
DEFAULT_MIN_MAP50_VS_FP32 = 0.9
DEFAULT_MAX_MAP_DROP = 0.01
SAMPLES_SHOWN = 4
_THUMBNAIL_SIDE = 360

Decoder = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], Sequence[Any]]


@dataclass
class Detections:
    """One image's boxes: xyxy in the model input's pixels, scores, integer labels."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detections:
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep])

    def ranked(self) -> Detections:
        """At most MAX_DETECTIONS, best first, none below RANK_FLOOR."""
        kept = self.above(RANK_FLOOR)
        order = np.argsort(-kept.scores, kind="stable")[:MAX_DETECTIONS]
        return Detections(kept.boxes[order], kept.scores[order], kept.labels[order])

    def scaled(self, sx: float, sy: float) -> Detections:
        return Detections(self.boxes * np.array([sx, sy, sx, sy], np.float32), self.scores, self.labels)

    def to_list(self, digits: int = 1) -> list[dict[str, Any]]:
        return [{"box": [round(float(v), digits) for v in box], "score": round(float(score), 3), "label": int(label)}
                for box, score, label in zip(self.boxes, self.scores, self.labels)]


# ---------------------------------------------------------------------------------------------
# Decoders


def load_decoder(name: str, key: str = "quantize.compare.decoder") -> Decoder:
    """The decoder named `rtdetr`, `boxes_scores` or `module:function` (imported from the current
    folder or PYTHONPATH)."""
    if name == "rtdetr":
        return decode_rtdetr
    if name == "boxes_scores":
        return decode_boxes_scores
    if not isinstance(name, str) or not USER_DECODER_RE.match(name):
        raise InputError(f"{key}: {name!r} is not a decoder (valid: rtdetr, boxes_scores, or module:function)")
    return load_user_function(name, key)


def decode(decoder: Decoder, outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
           name: str = "decoder") -> list[Detections]:
    """Run `decoder` on one batch and check what it returns: one (boxes, scores, labels) per image."""
    batch = _batch_size(inputs, outputs)
    try:
        result = decoder(outputs, inputs)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's decoder may raise anything; say whose it was
        raise InputError(f"decoder {name} failed on a batch of {batch} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(result, (list, tuple)) or len(result) != batch:
        got = f"{len(result)} items" if isinstance(result, (list, tuple)) else type(result).__name__
        raise InputError(f"decoder {name} returned {got} for a batch of {batch} images "
                         "(expected a list of (boxes_xyxy[K, 4], scores[K], labels[K]), one per image)")
    images = []
    for index, item in enumerate(result):
        if isinstance(item, Detections):
            images.append(item)
            continue
        try:
            boxes, scores, labels = (np.asarray(part) for part in item)
        except (TypeError, ValueError):
            raise InputError(f"decoder {name}: image {index} is not a (boxes, scores, labels) triple") from None
        boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4))
        if not (len(boxes) == scores.reshape(-1).size == labels.reshape(-1).size):
            raise InputError(f"decoder {name}: image {index} has {len(boxes)} boxes, {scores.size} scores and "
                             f"{labels.size} labels (they must match)")
        images.append(Detections(boxes.astype(np.float32), scores.reshape(-1).astype(np.float32),
                                 labels.reshape(-1).astype(np.int64)))
    return images


def decode_rtdetr(outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> list[Detections]:
    """RT-DETR's outputs: `labels`/`boxes`/`scores` per query, or the raw `logits`/`boxes` heads."""
    labels = _output(outputs, "label")
    boxes = _output(outputs, "box")
    scores = _output(outputs, "score")
    logits = _output(outputs, "logit")
    per_query = labels is not None and scores is not None and labels.ndim == 2 and scores.shape == labels.shape
    if boxes is None or boxes.ndim != 3 or boxes.shape[-1] != 4 or not (per_query or (logits is not None and logits.ndim == 3)):
        shapes = ", ".join(f"{n}{list(np.shape(v))}" for n, v in outputs.items())
        raise InputError(f"decoder rtdetr: the model's outputs ({shapes}) are not RT-DETR's (labels [N, Q], boxes "
                         "[N, Q, 4], scores [N, Q]; or logits [N, Q, C] and boxes [N, Q, 4])")
    boxes = np.asarray(boxes, np.float32)
    if not per_query:
        logits = np.asarray(logits, np.float32)
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        n, queries, classes = probabilities.shape
        flat = probabilities.reshape(n, -1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :MAX_DETECTIONS]
        scores = np.take_along_axis(flat, top, axis=1)
        labels = top % classes
        cx, cy, w, h = np.moveaxis(np.take_along_axis(boxes, (top // classes)[..., None], axis=1), -1, 0)
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
    width, height = input_size(inputs)
    sizes = _target_sizes(inputs)
    result = []
    for index in range(len(boxes)):
        if sizes is not None:  # in the units of orig_target_sizes: back to the input's pixels
            tw, th = (float(v) for v in sizes[index][:2])
            scale = np.array([width / tw, height / th] * 2, np.float32)
        else:
            scale = np.array([width, height, width, height], np.float32)
        result.append(Detections(boxes[index].reshape(-1, 4) * scale, np.asarray(scores[index], np.float32).reshape(-1),
                                 np.asarray(labels[index]).reshape(-1).astype(np.int64)).ranked())
    return result


def decode_boxes_scores(outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> list[Detections]:
    """SSD-style per-anchor boxes (normalized xyxy) and class probabilities, with per-class NMS."""
    boxes, scores = _boxes_and_scores(outputs)
    width, height = input_size(inputs)
    scale = np.array([width, height, width, height], np.float32)
    classes = scores.shape[-1]
    first = 1 if classes > 1 else 0  # SSD convention: column 0 is the background
    result = []
    for image_boxes, image_scores in zip(boxes, scores):
        anchors, columns = np.nonzero(image_scores[:, first:] >= RANK_FLOOR)
        labels = columns + first
        candidate = Detections(image_boxes[anchors] * scale, image_scores[anchors, labels], labels.astype(np.int64))
        keep = batched_nms(candidate.boxes, candidate.scores, candidate.labels, NMS_IOU)
        result.append(Detections(candidate.boxes[keep], candidate.scores[keep], candidate.labels[keep]).ranked())
    return result


def _boxes_and_scores(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    arrays = {name: np.asarray(value) for name, value in outputs.items() if np.asarray(value).ndim == 3}
    boxes_name = next((n for n in arrays if "box" in n.lower()), None) or next((n for n, a in arrays.items() if a.shape[-1] == 4), None)
    others = [n for n in arrays if n != boxes_name]
    scores_name = next((n for n in others if any(k in n.lower() for k in ("score", "conf", "prob", "cls"))), None)
    if scores_name is None and len(others) == 1:
        scores_name = others[0]
    if boxes_name is None or scores_name is None or arrays[boxes_name].shape[-1] != 4 \
            or arrays[boxes_name].shape[:2] != arrays[scores_name].shape[:2]:
        shapes = ", ".join(f"{n}{list(np.shape(v))}" for n, v in outputs.items())
        raise InputError(f"decoder boxes_scores: needs per-anchor boxes [N, A, 4] and scores [N, A, C]; the model gives {shapes}")
    return arrays[boxes_name].astype(np.float32), arrays[scores_name].astype(np.float32)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Greedy per-label non-maximum suppression; indices kept, best first.

    Written here because torchvision, whose `batched_nms` this mirrors (labels offset the boxes so one
    pass handles every class), has no CPU build in the package registry this project installs from.
    """
    if not len(boxes):
        return np.zeros(0, np.int64)
    offset = labels.astype(np.float32)[:, None] * (float(np.abs(boxes).max()) + 1.0)
    shifted = boxes + offset
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[box_iou(shifted[best][None], shifted[rest])[0] <= iou]
    return np.asarray(keep, np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [len(a), len(b)]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _output(outputs: Mapping[str, np.ndarray], word: str) -> np.ndarray | None:
    return next((np.asarray(v) for n, v in outputs.items() if word in n.lower()), None)


def image_input(inputs: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The image among the inputs: the first 4-D one (NCHW, or NHWC with 1 or 3 channels last)."""
    for name, array in inputs.items():
        if np.ndim(array) == 4:
            return name, np.asarray(array)
    raise InputError(f"detection needs an image input [N, C, H, W]; the model takes {', '.join(inputs)}")


def input_size(inputs: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(width, height) of the image input."""
    _, image = image_input(inputs)
    if image.shape[-1] in (1, 3) and image.shape[1] not in (1, 3):
        return int(image.shape[2]), int(image.shape[1])
    return int(image.shape[3]), int(image.shape[2])


def _target_sizes(inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    for array in inputs.values():
        if np.ndim(array) == 2 and np.shape(array)[1] == 2:
            return np.asarray(array, np.float64)
    return None


def _batch_size(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
    for array in list(inputs.values()) + list(outputs.values()):
        if np.ndim(array):
            return int(np.shape(array)[0])
    return 1


# ---------------------------------------------------------------------------------------------
# COCO annotations and mAP


@dataclass
class CocoAnnotations:
    """A COCO json whose `images` are the data's samples, in order."""

    path: str
    data: dict[str, Any]

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.data["images"]

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c.get("name", c["id"])) for c in self.data.get("categories", [])}

    def subset(self, count: int) -> dict[str, Any]:
        """The json restricted to its first `count` images."""
        ids = {image["id"] for image in self.images[:count]}
        return {**self.data, "images": self.images[:count],
                "annotations": [a for a in self.data["annotations"] if a["image_id"] in ids]}


def load_annotations(path: str | Path, key: str = "quantize.compare.annotations") -> CocoAnnotations:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{key}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{key}: {path} is not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{key}: {path} is not COCO json (needs 'images' and 'annotations' lists)")
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise InputError(f"{key}: {path}: images[{index}] has no 'id'")
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(annotation) \
                or len(annotation["bbox"]) != 4:
            raise InputError(f"{key}: {path}: annotations[{index}] needs image_id, category_id and bbox [x, y, w, h]")
    data.setdefault("categories", [{"id": c} for c in sorted({a["category_id"] for a in data["annotations"]})])
    for index, annotation in enumerate(data["annotations"]):
        annotation.setdefault("id", index + 1)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(annotation["bbox"][2]) * float(annotation["bbox"][3]))
    return CocoAnnotations(str(path), data)


@dataclass
class MapResult:
    """COCO bbox mAP of predictions against one ground truth (None where there is nothing to find)."""

    map: float | None
    map50: float | None
    per_class: dict[int, tuple[float, float]]  # label -> (AP@[.5:.95], AP@.5)
    images: int
    truth_boxes: int
    predicted_boxes: int


def coco_map(truth: dict[str, Any], predictions: Sequence[Detections], image_ids: Sequence[Any]) -> MapResult:
    """COCOeval (faster-coco-eval) bbox mAP of `predictions[i]` for image `image_ids[i]` of `truth`."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731 - the library prints its summary table otherwise
    rows = []
    for image_id, detections in zip(image_ids, predictions):
        for (x1, y1, x2, y2), score, label in zip(detections.boxes, detections.scores, detections.labels):
            rows.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    truth_boxes = len(truth["annotations"])
    if not truth_boxes:
        return MapResult(None, None, {}, len(image_ids), 0, len(rows))
    ground = COCO(truth, print_function=quiet)
    found = ground.loadRes(rows) if rows else ground.loadRes([])
    evaluator = COCOeval_faster(ground, found, iouType="bbox", print_function=quiet)
    evaluator.params.maxDets = [1, 10, MAX_DETECTIONS]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    precision = np.asarray(evaluator.eval["precision"])  # [IoU thresholds, recall, class, area, maxDets]
    per_class = {}
    for k, category in enumerate(evaluator.params.catIds):
        all_iou = precision[:, :, k, 0, -1]
        at50 = precision[0, :, k, 0, -1]
        if (all_iou > -1).any():
            per_class[int(category)] = (float(all_iou[all_iou > -1].mean()), float(at50[at50 > -1].mean()))
    return MapResult(float(max(evaluator.stats[0], 0.0)), float(max(evaluator.stats[1], 0.0)), per_class,
                     len(image_ids), truth_boxes, len(rows))


def truth_from_detections(reference: Sequence[Detections], sizes: Sequence[tuple[int, int]],
                          score_threshold: float) -> dict[str, Any]:
    """A COCO ground truth made of FP32's detections at or above `score_threshold` (images 1..N)."""
    images, annotations = [], []
    for index, (detections, (width, height)) in enumerate(zip(reference, sizes)):
        images.append({"id": index + 1, "width": int(width), "height": int(height)})
        kept = detections.above(score_threshold)
        for (x1, y1, x2, y2), label in zip(kept.boxes, kept.labels):
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(label),
                                "bbox": [float(x1), float(y1), w, h], "area": max(w, 0.0) * max(h, 0.0), "iscrowd": 0})
    labels = sorted({a["category_id"] for a in annotations})
    return {"images": images, "annotations": annotations, "categories": [{"id": c, "name": f"class {c}"} for c in labels]}


def map_against_reference(reference: Sequence[Detections], candidate: Sequence[Detections],
                          sizes: Sequence[tuple[int, int]], score_threshold: float,
                          candidate_threshold: float | None = None) -> MapResult:
    """mAP of `candidate` against FP32's boxes at or above `score_threshold`; `candidate_threshold`:
    the quantized model's boxes below it are not counted (None: all of them, ranked)."""
    truth = truth_from_detections(reference, sizes, score_threshold)
    if candidate_threshold is not None:
        candidate = [detections.above(candidate_threshold) for detections in candidate]
    return coco_map(truth, candidate, list(range(1, len(candidate) + 1)))


def map_against_annotations(annotations: CocoAnnotations, predictions: Sequence[Detections],
                            sizes: Sequence[tuple[int, int]]) -> MapResult:
    count = len(predictions)
    if len(annotations.images) < count:
        raise InputError(f"quantize.compare.annotations: {annotations.path} describes {len(annotations.images)} images "
                         f"but the data holds {count} samples (one image per sample, in order)")
    scaled = []
    for detections, image, (width, height) in zip(predictions, annotations.images, sizes):
        w, h = image.get("width", width), image.get("height", height)
        scaled.append(detections.scaled(w / width, h / height) if (w, h) != (width, height) else detections)
    return coco_map(annotations.subset(count), scaled, [image["id"] for image in annotations.images[:count]])


def map_metric(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
               inputs: Mapping[str, np.ndarray], settings: Any) -> float:
    """The quantized model's mAP@[.5:.95] (higher is better), as a metric over a whole data set.

    `reference` / `candidate` map output names to arrays over every sample, `inputs` input names to
    the samples; `settings` is a `CompareSpec` (decoder, annotations, score_threshold). Against
    `settings.annotations` when set (compare it with FP32's, `map_metric(reference, reference, ...)`),
    else against FP32's detections (1.0 means the same boxes). 0.0 where there is nothing to find.
    """
    decoder = load_decoder(settings.decoder)
    ref = decode(decoder, reference, inputs, settings.decoder)
    cand = decode(decoder, candidate, inputs, settings.decoder)
    sizes = [input_size(inputs)] * len(cand)
    if settings.annotations:
        result = map_against_annotations(load_annotations(settings.annotations), cand, sizes)
    else:
        result = map_against_reference(ref, cand, sizes, *thresholds(settings))
    return result.map if result.map is not None else 0.0


def is_user_decoder(decoder: str | None) -> bool:
    return decoder is not None and decoder not in BUILTIN_DECODERS


def thresholds(settings: Any) -> tuple[float, float | None]:
    """(FP32's truth threshold, the quantized model's threshold or None for "ranked as decoded"),
    by the rule of the module docstring. `settings` is a `CompareSpec`."""
    given = getattr(settings, "score_threshold", None)
    if is_user_decoder(getattr(settings, "decoder", None)):
        same = 0.0 if given is None else float(given)
        return same, same
    return (DEFAULT_SCORE_THRESHOLD if given is None else float(given)), None


def threshold_rule(settings: Any) -> str:
    """The rule `thresholds` applied, as a sentence for the report."""
    truth, candidate = thresholds(settings)
    if candidate is not None and getattr(settings, "score_threshold", None) is None:
        return ("every box the decoder returns counts, for FP32 and the quantized model alike (a module:function "
                "decoder gives the application's final boxes; set compare.score_threshold to cut both)")
    if candidate is not None:
        return f"boxes at score >= {truth:g} count, for FP32 and the quantized model alike (compare.score_threshold)"
    return (f"FP32's boxes at score >= {truth:g} are the truth; the quantized model's are ranked by confidence "
            f"down to {RANK_FLOOR:g}, as mAP ranks predictions")


# ---------------------------------------------------------------------------------------------
# The comparison's detection section


def match_f1(reference: Detections, candidate: Detections, iou: float = 0.5) -> float:
    """F1 of a greedy same-label match at `iou` (1.0 when both are empty): how alike two images' boxes are."""
    if not len(reference) and not len(candidate):
        return 1.0
    if not len(reference) or not len(candidate):
        return 0.0
    overlaps = box_iou(reference.boxes, candidate.boxes) * (reference.labels[:, None] == candidate.labels[None, :])
    matched = 0
    for row in overlaps:
        best = int(np.argmax(row))
        if row[best] >= iou:
            matched += 1
            overlaps[:, best] = 0
    return 2 * matched / (len(reference) + len(candidate))


@dataclass
class DetectionComparison:
    """Collects both models' detections batch by batch while the comparison runs, then measures."""

    settings: Any  # CompareSpec
    color: str = "rgb"  # channel order of the image input, for the picture
    samples_shown: int = SAMPLES_SHOWN
    reference: list[Detections] = field(default_factory=list)
    candidate: list[Detections] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    _shown: list[tuple[float, int, str]] = field(default_factory=list)  # (F1, sample, image data URI)

    def __post_init__(self) -> None:
        self.decoder = load_decoder(self.settings.decoder)
        self.annotations = load_annotations(self.settings.annotations) if self.settings.annotations else None
        self.threshold, self.candidate_threshold = thresholds(self.settings)
        # The boxes shown and counted for the quantized model: its own cut where it has one, else FP32's.
        self.shown_threshold = self.threshold if self.candidate_threshold is None else self.candidate_threshold

    def add(self, reference_outputs: Mapping[str, np.ndarray], candidate_outputs: Mapping[str, np.ndarray],
            feeds: Mapping[str, np.ndarray]) -> None:
        ref = decode(self.decoder, reference_outputs, feeds, self.settings.decoder)
        cand = decode(self.decoder, candidate_outputs, feeds, self.settings.decoder)
        size = input_size(feeds)
        _, images = image_input(feeds)
        for offset, (r, c) in enumerate(zip(ref, cand)):
            index = len(self.reference)
            self.reference.append(r)
            self.candidate.append(c)
            self.sizes.append(size)
            f1 = match_f1(r.above(self.threshold), c.above(self.shown_threshold))
            worst = sorted(self._shown)[-1] if len(self._shown) >= self.samples_shown else None
            if worst is None or (f1, index) < worst[:2]:
                if worst is not None:
                    self._shown.remove(worst)
                self._shown.append((f1, index, image_data_uri(images[offset], self.color)))

    def result(self) -> dict[str, Any]:
        """The `detection` section of a comparison (report.json), pictures included."""
        versus = map_against_reference(self.reference, self.candidate, self.sizes, self.threshold, self.candidate_threshold)
        section: dict[str, Any] = {
            "decoder": self.settings.decoder,
            "score_threshold": self.threshold,
            "candidate_score_threshold": self.candidate_threshold,  # None: ranked as decoded
            "threshold_rule": threshold_rule(self.settings),
            "images": len(self.candidate),
            "reference_boxes": int(sum(len(d.above(self.threshold)) for d in self.reference)),
            "candidate_boxes": int(sum(len(d.above(self.shown_threshold)) for d in self.candidate)),
            "against": "annotations" if self.annotations else "fp32",
            "vs_fp32": {"map": versus.map, "map50": versus.map50},
        }
        names: dict[int, str] = {}
        if self.annotations is not None:
            names = self.annotations.category_names
            mine = map_against_annotations(self.annotations, self.candidate, self.sizes)
            theirs = map_against_annotations(self.annotations, self.reference, self.sizes)
            section.update(annotations=self.annotations.path, map=mine.map, map50=mine.map50,
                           fp32={"map": theirs.map, "map50": theirs.map50}, truth_boxes=mine.truth_boxes)
            per_class, reference_per_class = mine.per_class, theirs.per_class
        else:
            section.update(map=versus.map, map50=versus.map50, truth_boxes=versus.truth_boxes)
            per_class, reference_per_class = versus.per_class, {}
        section["per_class"] = [
            {"label": label, "name": names.get(label, f"class {label}"), "ap": ap, "ap50": ap50,
             **({"fp32_ap": reference_per_class.get(label, (None, None))[0]} if self.annotations is not None else {})}
            for label, (ap, ap50) in sorted(per_class.items())
        ]
        if section["map"] is None:
            lower = ("" if is_user_decoder(self.settings.decoder) and self.settings.score_threshold is None
                     else "lower compare.score_threshold, or ")
            section["note"] = (f"FP32 finds no box at score >= {self.threshold:g} on these samples: mAP against it is "
                               f"undefined ({lower}give annotations)")
        section["samples"] = [
            {"index": index, "f1": round(f1, 4), "image": uri, "size": list(self.sizes[index]),
             "fp32": self.reference[index].above(self.threshold).to_list(),
             "quantized": self.candidate[index].above(self.shown_threshold).to_list()}
            for f1, index, uri in sorted(self._shown, key=lambda item: item[1])
        ]
        return section


def image_data_uri(array: np.ndarray, color: str = "rgb") -> str:
    """A model input as a JPEG data URI for the report: channels last, each image stretched to 0-255
    (whatever the model's normalization), at most `_THUMBNAIL_SIDE` pixels on its longer side.

    Boxes are drawn over it in the input's pixel units, scaled by the browser with the picture."""
    from PIL import Image

    image = np.asarray(array, np.float32)
    if image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    pixels = ((image - low) / (high - low if high > low else 1.0) * 255).clip(0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        picture = Image.fromarray(pixels[..., 0], "L")
    else:
        picture = Image.fromarray(pixels[..., ::-1] if color == "bgr" else pixels, "RGB")
    picture.thumbnail((_THUMBNAIL_SIDE, _THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
