"""What must hold of a comparison (the check policy and its default thresholds; see
`tao_qc.evaluate.compare` for the rules in words).

Where the user sets nothing (no atol/rtol, no min_top1_agreement), each output gets the default check
that fits what it is (`tao_qc.evaluate.measures.output_kind`), marked `default=True`, its `why`
saying which default and why:
- classifier `[N, C]`: top-1 agreement >= 0.99;
- class scores per position (`[N, T, C]`, `[N, C, H, W]` probabilities): top-1 agreement per
  position >= 0.95: each position is a classifier, and what is read from it is its argmax (a CTC
  decoder's best path, a segmenter's label map); positions at the edge of a character or region
  flip without changing the reading, hence below a classifier's 0.99 (see the constant). A cosine
  over the probabilities would be dragged down by INT8 noise on the thousands of near-zero ones
  while not one argmax changes;
- probability map (`[N, 1, H, W]`, saturated sigmoid): IoU >= 0.8 of the maps thresholded at 0.5;
- anything else: cosine over the data set >= 0.99.
"""

from __future__ import annotations

from typing import Any

from tao_qc.evaluate.detection import DEFAULT_MAX_MAP_DROP, DEFAULT_MIN_MAP50_VS_FP32
from tao_qc.evaluate.measures import MASK_THRESHOLD
from tao_qc.evaluate.results import Check, OutputMetrics
from tao_qc.spec import CompareSpec

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_MIN_COSINE = 0.99
# Lower than a classifier's 0.99 per sample, because the positions at the edge of a character (or of
# a region) flip between two classes FP32 itself scores alike, without changing what is read.
# Measured on PP-OCRv5's recognizer (64 unseen lines of 40 steps): ranges clipped at the 99.9th
# percentile read 89% of the lines exactly as FP32 does (CER 0.89% against FP32's 0.70%) at per-step
# agreement 0.965, two thirds of the disagreeing steps being a character's edge moved by one step;
# the same model with 31 of 62 nodes float reaches only 0.980 (CER 0.99%); max ranges read nothing
# (CER 64%) at 0.690. So 0.95: a reading that holds passes, a broken one fails by far.
DEFAULT_MIN_POSITION_TOP1_AGREEMENT = 0.95
# The pixels that change sides are the edges of the regions: INT8 moves a saturated sigmoid's
# transition by about a pixel, and one pixel along both long edges of a text line 11 pixels high is
# already an IoU of 0.82. Measured on PP-OCRv5's detector (plain INT8 for onnxruntime, 4 pages of 4
# lines): every line found, each line's region at IoU 0.84-1.0 to FP32's, map IoU 0.90-0.92 per page,
# 0.905 over the data set (cosine 0.958, which the old default failed). Losing one line of four is an
# IoU of at most 0.75. So 0.8: a map that loses or invents regions fails; edge jitter passes.
DEFAULT_MIN_MASK_IOU = 0.8

WHY_CLASSIFIER = "default for classifier outputs [N, C]: top-1 agreement"
WHY_CLASS_SCORES = ("default for class scores per position ({shape}, probabilities over axis {axis}): each position "
                    "is a classifier, so top-1 agreement per position, not a cosine that noise on near-zero "
                    "probabilities drags down")
WHY_PROBABILITY_MAP = ("default for a probability map ({shape}, values in [0, 1]): IoU of the maps thresholded at "
                       "{threshold:g}, the regions the application reads")
WHY_VALUES = "default for outputs that are values (features, boxes, regression): cosine over the data set"


def checks_for(metrics: OutputMetrics, settings: CompareSpec, *, boxes_checked: bool = False) -> list[Check]:
    """What `settings` asks of one output (see the module docstring for the defaults).

    `boxes_checked`: a detection check stands for the outputs, so no default cosine check."""
    checks = []
    tolerance_set = settings.atol is not None or settings.rtol is not None
    if metrics.nonfinite:
        checks.append(Check(metrics.name, "nonfinite", metrics.nonfinite, 0, False, "NaN/Inf in the candidate"))
    if tolerance_set:
        passed = bool(metrics.polygraphy_passed) if metrics.polygraphy_passed is not None else metrics.within_tolerance == 1.0
        checks.append(Check(metrics.name, "within_tolerance", metrics.within_tolerance or 0.0, 1.0, passed,
                            f"atol={settings.atol or 0:g}, rtol={settings.rtol or 0:g}"))
    if metrics.is_classifier and (settings.min_top1_agreement is not None or not tolerance_set):
        asked = settings.min_top1_agreement is not None
        threshold = settings.min_top1_agreement if asked else DEFAULT_MIN_TOP1_AGREEMENT
        agreement = metrics.top1_agreement or 0.0
        checks.append(Check(metrics.name, "top1_agreement", agreement, threshold, agreement >= threshold,
                            "min_top1_agreement" if asked else WHY_CLASSIFIER, default=not asked))
    if metrics.is_classifier or tolerance_set or boxes_checked:
        return checks
    shape = "[N, " + ", ".join(str(d) for d in metrics.shape) + "]"
    if metrics.kind == "class_scores" and metrics.position_top1_agreement is not None:
        value = metrics.position_top1_agreement
        checks.append(Check(metrics.name, "position_top1_agreement", value, DEFAULT_MIN_POSITION_TOP1_AGREEMENT,
                            value >= DEFAULT_MIN_POSITION_TOP1_AGREEMENT,
                            WHY_CLASS_SCORES.format(shape=shape, axis=metrics.class_axis), default=True))
    elif metrics.kind == "probability_map" and metrics.mask_iou is not None:
        value = metrics.mask_iou
        checks.append(Check(metrics.name, "mask_iou", value, DEFAULT_MIN_MASK_IOU, value >= DEFAULT_MIN_MASK_IOU,
                            WHY_PROBABILITY_MAP.format(shape=shape, threshold=MASK_THRESHOLD), default=True))
    else:
        checks.append(Check(metrics.name, "cosine", metrics.cosine, DEFAULT_MIN_COSINE,
                            metrics.cosine >= DEFAULT_MIN_COSINE, WHY_VALUES, default=True))
    return checks


def detection_checks(section: dict[str, Any], settings: CompareSpec) -> list[Check]:
    """The default detection check (see the module docstring); none where mAP is undefined (FP32 finds
    nothing to compare against), and then the raw outputs keep their cosine checks."""
    if settings.atol is not None or settings.rtol is not None:
        return []
    if section.get("against") == "annotations":
        fp32 = (section.get("fp32") or {}).get("map")
        if fp32 is None or section.get("map") is None:
            return []
        floor = fp32 - DEFAULT_MAX_MAP_DROP
        return [Check("detections", "map", section["map"], floor, section["map"] >= floor,
                      f"default for detection with annotations: mAP@[.5:.95] at most {DEFAULT_MAX_MAP_DROP:g} below "
                      f"FP32's {fp32:.4f}", default=True)]
    value = (section.get("vs_fp32") or {}).get("map50")
    if value is None:
        return []
    return [Check("detections", "map50_vs_fp32", value, DEFAULT_MIN_MAP50_VS_FP32, value >= DEFAULT_MIN_MAP50_VS_FP32,
                  "default for detection without annotations: FP32's boxes are the truth, mAP@.5 against them",
                  default=True)]
