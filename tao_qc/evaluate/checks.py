"""What must hold of a comparison (the check policy and its default thresholds; see
`tao_qc.evaluate.compare` for the rules in words).

Where the user sets nothing (no atol/rtol, no min_top1_agreement), each output gets the default check
that fits what it is (`tao_qc.evaluate.measures.output_kind`), marked `default=True`, its `why`
saying which default and why:
- classifier `[N, C]`: top-1 agreement >= 0.99;
- a CTC recognizer's per-step probabilities (`[N, T, C]` with a blank class,
  `tao_qc.evaluate.ctc_reading`): the greedy readings' sequence agreement with FP32's >= 0.97;
- a segmenter's per-pixel probabilities (`[N, C, H, W]` class scores): the mIoU of the label maps
  (each pixel's argmax), FP32's as the truth, >= 0.95: a label map is what a segmenter is read
  by, and mIoU is how it is scored; each class counts alike, so a small class lost is not hidden by
  the background's pixels, as it is in agreement per pixel (see the constant);
- other class scores per position (`[N, T, C]` with no blank): top-1 agreement per position >= 0.95:
  each position is a classifier, and what is read from it is its argmax; positions at the edge of
  a character or region flip without changing the reading, hence below a classifier's 0.99 (see the
  constant). A cosine over the probabilities would be dragged down by INT8 noise on the thousands
  of near-zero ones while not one argmax changes;
- probability map (`[N, 1, H, W]`, saturated sigmoid): the text regions DB post-processing finds,
  FP32's against the quantized model's, H-mean >= 0.97 (`tao_qc.evaluate.text_regions`); the IoU of
  the maps thresholded at 0.5 stays in the output's figures;
- anything else: cosine over the data set >= 0.99.

Each default check carries, for the report, what it measures, whether it is the task's own measure
or a proxy for it, and how its floor was chosen (`DEFAULT_CHECKS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tao_qc.evaluate.detection import DEFAULT_MAX_MAP_DROP, DEFAULT_MIN_MAP50_VS_FP32
from tao_qc.evaluate.results import Check, OutputMetrics
from tao_qc.spec import CompareSpec

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_MIN_COSINE = 0.99
# FP32's reading taken as the truth, at most 3 edits per 100 characters FP32 read. Measured (AMD EPYC,
# avx512_vnni; 64 unseen PP-OCRv5 lines unless said): PP-OCRv5's recognizer with ranges clipped at the
# 99.9th percentile reads within 0.2 points of FP32's CER (0.89% against 0.70%) at 0.992, and at 0.976
# on the 32 lines of its accuracy data (about 500 characters: a few edits move it by 0.01); max ranges
# read nothing (CER 64%) at 0.36. The zoo's digit-string recognizer (tests/test_ctc_reading.py) reads
# at 0.996 plain INT8, at 0 with a planted culprit. Each edit against FP32 can cost the CER at most a
# point per hundred characters, and cost about a quarter of that on PP-OCRv5; 0.99, where the worst
# case is issue 24's 1 point, failed that model on its own accuracy data for noise.
DEFAULT_MIN_SEQUENCE_AGREEMENT = 0.97
# Lower than a classifier's 0.99 per sample, because the positions at the edge of a character (or of
# a region) flip between two classes FP32 itself scores alike, without changing what is read.
# Measured on PP-OCRv5's recognizer (64 unseen lines of 40 steps): ranges clipped at the 99.9th
# percentile read 89% of the lines exactly as FP32 does (CER 0.89% against FP32's 0.70%) at per-step
# agreement 0.965, two thirds of the disagreeing steps being a character's edge moved by one step;
# the same model with 31 of 62 nodes float reaches only 0.980 (CER 0.99%); max ranges read nothing
# (CER 64%) at 0.690. So 0.95: a reading that holds passes, a broken one fails by far.
DEFAULT_MIN_POSITION_TOP1_AGREEMENT = 0.95
# FP32's label map taken as the truth. Measured (AMD EPYC, avx512_vnni; compiled for avx2;
# bench/default_checks.py --only segmenter) on the zoo's text detector read as a text/paper segmenter,
# 12 INT8 models (max and clipped ranges; outlier channels planted in one layer at 50-100x, in three
# at 10x and 30x), 16 comparison pages, task = the text pixels' IoU with the true text on 64 unseen
# pages (FP32 0.872): every model within a point of FP32's task figure measured 0.956-0.980, every
# model further off 0.939 or less (2.1 points lost) down to 0.418. Agreement per pixel, the default
# before, passed three of those, at 0.954 (14 points lost), 0.978 (4) and 0.981 (2): the background
# is most of the pixels. Held out: a second segmenter built afterwards (three classes, another
# architecture, tests/_segmenter_helpers.py), whose 8 INT8 models the floor sorts as their task does.
DEFAULT_MIN_LABEL_MAP_IOU = 0.95
# FP32's text regions taken as the truth, at most about 3 in 100 lost or invented, each matched at IoU
# above 0.7 (`text_regions.MIN_MATCH_IOU`). Measured (AMD EPYC, avx512_vnni, compiled for avx2;
# bench/results/default-checks.md): PP-OCRv5's detector (12 unseen pages, 96 lines), max or clipped
# ranges, 0.979-1.0, reading within 0.2 points of FP32's CER; the zoo's DB-style detector with an
# outlier channel, 10 INT8 models, agreeing with its lines found on unseen pages on all 10 (1.0 where
# kept; 0.944, 0.916, 0.548 where 1.9 points or more were lost). One line lost in 16 is 0.968: a data
# set of a few pages fails on one line lost, which is text lost. Held out, a second detector built
# after the floor was set (tests/_segmenter_helpers.py: PageTextDetector): 7 of its 10 agree; three
# that lose 1.1-2.2 points of lines pass at 0.978-1.0 (at ICDAR's 0.5 five passed, one losing 5.5).
DEFAULT_MIN_REGION_AGREEMENT = 0.97

@dataclass(frozen=True)
class DefaultCheck:
    """What a default check is, in the report's words: what it measures, what task result it stands
    for (empty where it is that result itself, FP32's output taken as the truth), and how its floor
    was chosen."""

    measures: str
    proxy_for: str
    floor_basis: str


DEFAULT_CHECKS = {
    "top1_agreement": DefaultCheck(
        "how often the quantized model's top class is FP32's, per sample",
        "",
        "set by hand: at most one answer in a hundred changed, so top-1 accuracy against labels moves by "
        "at most a point"),
    "sequence_agreement": DefaultCheck(
        "the text read greedily (argmax per step, repeats merged, blanks dropped): 1 - edit distance to "
        "FP32's reading / characters FP32 read, over the data set",
        "",
        "measured on two recognizers: PP-OCRv5's read within 0.2 points of FP32's CER at 0.976-0.992 and "
        "read nothing at 0.36; the zoo's digit-string recognizer read at 0.996 and, with a planted "
        "culprit, at 0. 0.97 passes the first of each and fails the second with room for the noise "
        "of a few hundred characters (bench/results/default-checks.md)"),
    "position_top1_agreement": DefaultCheck(
        "how often each position's top class is FP32's (steps, anchors)",
        "what is read from the positions: edges and repeats flip without changing it, and a class "
        "that holds most positions makes it lenient",
        "set on one model: PP-OCRv5's recognizer read as FP32 at 0.965 and read nothing at 0.69"),
    "label_map_iou": DefaultCheck(
        "the label maps (each pixel's top class): per class FP32 finds, the IoU of its pixels in FP32's map "
        "and the quantized model's, averaged over the classes (mIoU)",
        "",
        "measured on the zoo's text detector read as a text/paper segmenter, 12 INT8 models: those within "
        "a point of FP32's text IoU on unseen pages measured 0.956-0.980, those further off 0.939 or less; "
        "held out, a three-class page segmenter: it sorted its 8 INT8 models as their mIoU against the true "
        "maps did (bench/results/default-checks.md)"),
    "region_agreement": DefaultCheck(
        "the text regions DB post-processing finds in the map (probability above 0.3, 8-connected, mean "
        "probability at least 0.6): FP32's matched one-to-one by the quantized model's at IoU above 0.7, "
        "H-mean of the two region counts over the data set",
        "",
        "measured on PP-OCRv5's detector (0.979-1.0 with max or clipped ranges, reading as FP32) and the zoo's "
        "DB-style one (it agreed with lines found on unseen pages on 10 of 10 INT8 models); held out, a "
        "second zoo detector: 7 of 10, three losing 1.1-2.2 points passed. The map IoU, the default before, "
        "passed a held-out detector that lost 2 CER points at 0.938 and failed the zoo's at 0.77 where it "
        "found every line (bench/results/default-checks.md)"),
    "cosine": DefaultCheck(
        "the cosine similarity to FP32 of the output over the whole data set",
        "whatever reads the values (boxes, features, regression): it says nothing of the task",
        "set by hand; on the raw outputs of ../shared/models' three detectors it agreed with their boxes on 3 "
        "of 6 INT8 models, passing one that lost a third of FP32's boxes (0.996) and failing one that kept "
        "them (0.874): no floor orders those two. Give a detector its decoder "
        "(bench/results/default-checks.md)"),
    "map50_vs_fp32": DefaultCheck(
        "mAP@.5 of the decoded detections against FP32's own detections",
        "",
        "set by hand: about one box in ten FP32 finds may be lost or moved"),
    "map": DefaultCheck(
        "COCO mAP@[.5:.95] of the decoded detections against the annotations",
        "",
        "at most 1 point below FP32's, the drop peers allow (NNCF's max_drop, ACCURACY-NOTES)"),
}


def default_check(output: str, metric: str, value: float, threshold: float, why: str) -> Check:
    """A default check of `metric`, carrying what `DEFAULT_CHECKS` says of it for the report."""
    about = DEFAULT_CHECKS[metric]
    return Check(output, metric, value, threshold, value >= threshold, why, default=True,
                 measures=about.measures, proxy_for=about.proxy_for, floor_basis=about.floor_basis)


WHY_SEQUENCES = ("default for a CTC recognizer's per-step probabilities ({shape}, blank class {blank}): the text "
                 "read greedily, 1 - edit distance / characters FP32 read")
WHY_CLASSIFIER = "default for classifier outputs [N, C]: top-1 agreement"
WHY_CLASS_SCORES = ("default for class scores per position ({shape}, probabilities over axis {axis}): each position "
                    "is a classifier, so top-1 agreement per position, not a cosine that noise on near-zero "
                    "probabilities drags down")
WHY_LABEL_MAP = ("default for a segmenter's per-pixel class scores ({shape}, probabilities over axis {axis}): the "
                 "mIoU of the label maps, FP32's as the truth")
WHY_PROBABILITY_MAP = ("default for a probability map ({shape}, values in [0, 1]): the text regions found, FP32's "
                       "against the quantized model's, as DB post-processing reads them")
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
                            "min_top1_agreement") if asked else
                      default_check(metrics.name, "top1_agreement", agreement, threshold, WHY_CLASSIFIER))
    if metrics.is_classifier or tolerance_set or boxes_checked:
        return checks
    shape = "[N, " + ", ".join(str(d) for d in metrics.shape) + "]"
    if metrics.kind == "class_scores" and metrics.sequence_agreement is not None:
        # Per-step agreement stays in the output's figures: the reading is what the task reads.
        checks.append(default_check(metrics.name, "sequence_agreement", metrics.sequence_agreement,
                                    DEFAULT_MIN_SEQUENCE_AGREEMENT,
                                    WHY_SEQUENCES.format(shape=shape, blank=metrics.blank_class)))
    elif metrics.kind == "class_scores" and metrics.label_map_iou is not None:
        # Agreement per pixel stays in the output's figures: the label map is what the task reads.
        checks.append(default_check(metrics.name, "label_map_iou", metrics.label_map_iou, DEFAULT_MIN_LABEL_MAP_IOU,
                                    WHY_LABEL_MAP.format(shape=shape, axis=metrics.class_axis)))
    elif metrics.kind == "class_scores" and metrics.position_top1_agreement is not None:
        checks.append(default_check(metrics.name, "position_top1_agreement", metrics.position_top1_agreement,
                                    DEFAULT_MIN_POSITION_TOP1_AGREEMENT,
                                    WHY_CLASS_SCORES.format(shape=shape, axis=metrics.class_axis)))
    elif metrics.kind == "probability_map" and metrics.region_agreement is not None:
        # The map IoU stays in the output's figures: the regions are what the task reads.
        checks.append(default_check(metrics.name, "region_agreement", metrics.region_agreement,
                                    DEFAULT_MIN_REGION_AGREEMENT, WHY_PROBABILITY_MAP.format(shape=shape)))
    else:
        checks.append(default_check(metrics.name, "cosine", metrics.cosine, DEFAULT_MIN_COSINE, WHY_VALUES))
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
        return [default_check("detections", "map", section["map"], floor,
                              f"default for detection with annotations: mAP@[.5:.95] at most {DEFAULT_MAX_MAP_DROP:g} "
                              f"below FP32's {fp32:.4f}")]
    value = (section.get("vs_fp32") or {}).get("map50")
    if value is None:
        return []
    return [default_check("detections", "map50_vs_fp32", value, DEFAULT_MIN_MAP50_VS_FP32,
                          "default for detection without annotations: FP32's boxes are the truth, mAP@.5 against them")]
