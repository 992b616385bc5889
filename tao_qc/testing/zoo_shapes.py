"""A labelled detection set made here (coloured shapes on noise, COCO format) and brief, seeded
training of the zoo's RT-DETR-shaped model on it: a detector whose mAP means something, in seconds
on a CPU, with no download.

    images, coco = shapes_dataset(256, seed=1)        # float32 [N, 3, 64, 64] in [0, 1], COCO dict
    model = train_rtdetr(seed=0)                       # RTDETRStyle, trained, in eval mode

Classes: 0 square, 1 disc, 2 triangle, each drawn in its own hue with jitter, 8-26 pixels, 1-3 per
image, overlapping little. Boxes in the COCO dict are in the 64x64 image's pixels.
Training follows RT-DETR's recipe at toy scale: Hungarian matching (scipy) of every decoder layer's
and the selected encoder proposals' predictions to the targets, sigmoid focal loss for classes, L1
and GIoU for boxes, AdamW.
"""

from __future__ import annotations

import numpy as np
import torch

from tao_qc.testing.zoo import RTDETRStyle

CLASSES = ("square", "disc", "triangle")
IMAGE = 64
_HUES = np.array([[0.9, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.4, 0.95]], np.float32)


def shapes_dataset(count: int, seed: int = 0, image: int = IMAGE) -> tuple[np.ndarray, dict]:
    """`count` images [N, 3, H, W] (float32, 0-1) and their COCO json as a dict (image ids 1..N)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image, 0:image].astype(np.float32) + 0.5
    images = np.empty((count, 3, image, image), np.float32)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}
    for index in range(count):
        base = rng.uniform(0.05, 0.35, 3).astype(np.float32)
        canvas = base[:, None, None] + rng.normal(0, 0.06, (3, image, image)).astype(np.float32)
        placed: list[list[float]] = []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                size = float(rng.uniform(8, 26))
                x0, y0 = rng.uniform(0, image - size, 2)
                box = [x0, y0, x0 + size, y0 + size]
                if all(_iou(box, other) < 0.1 for other in placed):
                    break
            else:
                continue
            label = int(rng.integers(0, len(CLASSES)))
            cx, cy = x0 + size / 2, y0 + size / 2
            if label == 0:
                mask = (np.abs(xx - cx) <= size / 2) & (np.abs(yy - cy) <= size / 2)
            elif label == 1:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (size / 2) ** 2
            else:  # apex up, base at the bottom of the box
                mask = (yy >= y0) & (yy <= y0 + size) & (np.abs(xx - cx) <= (yy - y0) / 2)
            color = np.clip(_HUES[label] + rng.normal(0, 0.06, 3), 0, 1).astype(np.float32)
            canvas[:, mask] = color[:, None]
            placed.append(box)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index + 1, "category_id": label,
                                        "bbox": [float(x0), float(y0), size, size], "area": size * size, "iscrowd": 0})
        images[index] = np.clip(canvas, 0, 1)
        coco["images"].append({"id": index + 1, "file_name": f"{index:05d}.png", "width": image, "height": image})
    return images, coco


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def targets_from_coco(coco: dict, image: int = IMAGE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: labels [K] and boxes [K, 4] (cxcywh, normalized), as DETR losses take them."""
    per_image: dict[int, list] = {entry["id"]: [] for entry in coco["images"]}
    for annotation in coco["annotations"]:
        per_image[annotation["image_id"]].append(annotation)
    targets = []
    for entry in coco["images"]:
        found = per_image[entry["id"]]
        labels = torch.tensor([a["category_id"] for a in found], dtype=torch.int64)
        boxes = torch.tensor([[(x + w / 2) / image, (y + h / 2) / image, w / image, h / image] for x, y, w, h in
                              (a["bbox"] for a in found)], dtype=torch.float32).reshape(-1, 4)
        targets.append((labels, boxes))
    return targets


def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU of xyxy boxes [len(a), len(b)]."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None] - inter
    hull = (torch.max(a[:, None, 2:], b[None, :, 2:]) - torch.min(a[:, None, :2], b[None, :, :2])).clamp(min=0).prod(-1)
    return inter / union - (hull - union) / hull


def _set_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list) -> torch.Tensor:
    """DETR's set loss for one prediction set: Hungarian matching, focal class loss, L1 + GIoU."""
    from scipy.optimize import linear_sum_assignment

    batch, _, classes = logits.shape
    probabilities = logits.sigmoid()
    onehot = torch.zeros_like(logits)
    matched_pred, matched_true = [], []
    for index, (labels, true_boxes) in enumerate(targets):
        if not len(labels):
            continue
        with torch.no_grad():
            cost = (-2 * probabilities[index][:, labels] + 5 * torch.cdist(boxes[index], true_boxes, p=1)
                    - 2 * _giou(_xyxy(boxes[index]), _xyxy(true_boxes)))
        rows, cols = linear_sum_assignment(cost.numpy())
        onehot[index, rows, labels[cols]] = 1.0
        matched_pred.append(boxes[index, rows])
        matched_true.append(true_boxes[cols])
    count = max(sum(len(t[0]) for t in targets), 1)
    # Sigmoid focal loss (alpha 0.25, gamma 2), as RetinaNet and DETR-family detectors use it.
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = probabilities * onehot + (1 - probabilities) * (1 - onehot)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * onehot + 0.75 * (1 - onehot))).sum() / count
    if not matched_pred:
        return focal
    pred, true = torch.cat(matched_pred), torch.cat(matched_true)
    l1 = (pred - true).abs().sum() / count
    giou = (1 - torch.diag(_giou(_xyxy(pred), _xyxy(true)))).sum() / count
    return 2 * focal + 5 * l1 + 2 * giou


def train_rtdetr(seed: int = 0, samples: int = 1536, steps: int = 300, batch: int = 16, lr: float = 2e-3,
                 model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The zoo's RTDETRStyle, trained from seeded weights on `samples` seeded shapes images."""
    torch.manual_seed(seed)
    model = model or RTDETRStyle(num_classes=len(CLASSES))
    images, coco = shapes_dataset(samples, seed=seed + 1000)
    targets = targets_from_coco(coco)
    data = torch.from_numpy(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        chosen = torch.randint(0, samples, (batch,), generator=generator)
        out = model.forward_train(data[chosen])
        batch_targets = [targets[i] for i in chosen.tolist()]
        loss = _set_loss(out["enc_logits"], out["enc_boxes"], batch_targets)
        for logits, boxes in zip(out["logits"], out["boxes"]):
            loss = loss + _set_loss(logits, boxes, batch_targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        schedule.step()
    return model.eval()
