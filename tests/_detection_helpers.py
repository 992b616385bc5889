"""A user's own post-processing, written as a FastestDet user would, plugged in as a
`module:function` decoder (`compare.decoder: _detection_helpers:decode_fastestdet`).

FastestDet (../shared/models/fastestdet.onnx, the onnxruntime-extensions export) gives one row per
cell of its 22x22 grid: [cx, cy, w, h] in the 352x352 input's pixels, an objectness, and 80 COCO
class probabilities. A detection's confidence is objectness x best class probability.
"""

from __future__ import annotations

import numpy as np

FASTESTDET_SIZE = 352
CONFIDENCE_FLOOR = 0.05
NMS_IOU = 0.45


def decode_fastestdet(outputs, inputs):
    rows = outputs["output"]  # [N, 484, 85]
    images = []
    for image_rows in rows:
        classes = image_rows[:, 5:].argmax(axis=1)
        scores = image_rows[:, 4] * image_rows[:, 5:].max(axis=1)
        keep = scores >= CONFIDENCE_FLOOR
        cx, cy, w, h = image_rows[keep, :4].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).clip(0, FASTESTDET_SIZE)
        scores, classes = scores[keep], classes[keep]
        chosen = _nms(boxes, scores, classes)
        images.append((boxes[chosen], scores[chosen], classes[chosen]))
    return images


def _nms(boxes, scores, classes):
    order = list(np.argsort(-scores))
    kept = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [i for i in order if classes[i] != classes[best] or _iou(boxes[best], boxes[i]) <= NMS_IOU]
    return np.asarray(kept, dtype=np.int64)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# An application's post-processing that keeps boxes down to 0.4, as the layout detector of issue 26
# did: one box per cell of a [N, 1, 4, 4] score map, 20 pixels apart, label 1.
APPLICATION_FLOOR = 0.4
CELL = 20


def decode_cells(outputs, inputs):
    images = []
    for scores in outputs["scores"][:, 0]:
        rows, cols = np.nonzero(scores >= APPLICATION_FLOOR)
        boxes = np.stack([cols * CELL, rows * CELL, cols * CELL + 16, rows * CELL + 16], axis=1).astype(np.float32)
        images.append((boxes.reshape(-1, 4), scores[rows, cols], np.ones(len(rows), np.int64)))
    return images
