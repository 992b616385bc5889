"""The regions a text detector's application reads from its probability map `[N, 1, H, W]`, and how
many of FP32's the quantized model finds (`region_agreement`).

Regions as DB post-processing finds them (PaddleOCR's defaults): pixels above `TEXT_THRESHOLD`,
8-connected, each kept where its mean probability is at least `MIN_REGION_SCORE` and its bounding box
is at least `MIN_REGION_SIDE` pixels on its shorter side. A region of FP32's is found where one of the
quantized model's covers it at IoU above `MIN_MATCH_IOU` (0.7; see the constant for why not ICDAR's
0.5); above 0.5 a region can match at most one other, so the matching is one-to-one without a search. The
agreement is ICDAR's H-mean of the two: 2 x matched / (FP32's regions + the quantized model's), over
the data set. FP32's regions taken as the truth, that is the task's own measure: a region lost is
text not read, a region invented is text read that is not there.

Why not the IoU of the thresholded maps, the default before: it is a proxy that errs both ways. A
held-out DB detector lost 2 points of CER at a map IoU of 0.938 (a small region lost costs little
IoU); the zoo's DB-style detector with an outlier channel (`tests/_text_map_helpers.py`) found every
one of FP32's lines at a map IoU of 0.77, its low-probability specks (below the region score, so
never read) counting as wrong pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# PaddleOCR's DB post-processing: `thresh` 0.3, `box_thresh` 0.6, `min_size` 3.
TEXT_THRESHOLD = 0.3
MIN_REGION_SCORE = 0.6
MIN_REGION_SIDE = 3
# Stricter than ICDAR's 0.5, which is against the true boxes: FP32's regions are themselves only near
# the truth, and a quantized region at IoU 0.5 of FP32's can miss the truth's 0.5. On a held-out
# detector (tests/_segmenter_helpers.py: PageTextDetector, an outlier channel 1000x) every region
# matched FP32's above 0.5 while 5.5% (max ranges) and 2.7% (clipped) of the unseen lines were lost
# against the true boxes. Measured (bench/results/default-checks.md): above 0.7, PP-OCRv5's max- and
# clipped-range models, which read within 0.2 points of FP32's CER, score 0.979-1.0 (above 0.8 only
# 0.927-0.958: too strict); the zoo's models that lose 1.9 points of lines or more score 0.956 or
# less but for three of the held-out detector's, which lose 1.1-2.2 points and score 0.978-1.0.
MIN_MATCH_IOU = 0.7
ICDAR_MATCH_IOU = 0.5  # against the true boxes: what the bench's task figure (lines found) matches at
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class RegionAgreement:
    """FP32's regions, the quantized model's, and how many of FP32's it found, over the data set."""

    reference: int
    candidate: int
    matched: int

    @property
    def h_mean(self) -> float:
        total = self.reference + self.candidate
        return 2.0 * self.matched / total if total else 1.0  # neither finds text: they agree


def regions(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One map `[H, W]`: its label image (0 background, 1.. connected components above
    TEXT_THRESHOLD) and the labels of the components kept as text regions."""
    labels, count = ndimage.label(np.nan_to_num(probability, nan=0.0) > TEXT_THRESHOLD, structure=_EIGHT_CONNECTED)
    if not count:
        return labels, np.zeros(0, np.int64)
    index = np.arange(1, count + 1)
    scores = ndimage.mean(probability, labels, index)
    boxes = ndimage.find_objects(labels)
    sides = np.array([min(rows.stop - rows.start, cols.stop - cols.start) for rows, cols in boxes])
    return labels, index[(np.asarray(scores) >= MIN_REGION_SCORE) & (sides >= MIN_REGION_SIDE)]


def _matched(reference: np.ndarray, candidate: np.ndarray, min_iou: float) -> RegionAgreement:
    ref_labels, ref_kept = regions(reference)
    cand_labels, cand_kept = regions(candidate)
    if not ref_kept.size or not cand_kept.size:
        return RegionAgreement(int(ref_kept.size), int(cand_kept.size), 0)
    ref_area = np.bincount(ref_labels.ravel())
    cand_area = np.bincount(cand_labels.ravel())
    both = (ref_labels > 0) & (cand_labels > 0)
    # The overlap of every pair of regions that share a pixel, from one pass over the pixels.
    pairs, overlap = np.unique(ref_labels[both].astype(np.int64) * len(cand_area) + cand_labels[both], return_counts=True)
    ref_of, cand_of = pairs // len(cand_area), pairs % len(cand_area)
    iou = overlap / (ref_area[ref_of] + cand_area[cand_of] - overlap)
    kept = np.isin(ref_of, ref_kept) & np.isin(cand_of, cand_kept) & (iou > min_iou)
    return RegionAgreement(int(ref_kept.size), int(cand_kept.size), int(np.count_nonzero(kept)))


def region_agreement(reference: np.ndarray, candidate: np.ndarray, min_iou: float = MIN_MATCH_IOU) -> RegionAgreement:
    """FP32's (`reference`) and the quantized model's text regions over a data set of maps
    `[N, 1, H, W]` (or `[N, H, W]`), and how many of FP32's the quantized model found at IoU above
    `min_iou` (against true text masks, `ICDAR_MATCH_IOU`)."""
    ref_maps = reference.reshape(-1, *reference.shape[-2:])
    cand_maps = candidate.reshape(-1, *candidate.shape[-2:])
    counts = [_matched(r, c, min_iou) for r, c in zip(ref_maps, cand_maps)]
    return RegionAgreement(sum(c.reference for c in counts), sum(c.candidate for c in counts),
                           sum(c.matched for c in counts))
