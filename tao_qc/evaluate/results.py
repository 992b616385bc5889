"""What a comparison of FP32 and quantized outputs yields, as typed objects: per-output figures
(`OutputMetrics`), the checks applied to them (`Check`), and the whole result (`ComparisonResult`).
report.json holds `ComparisonResult.to_dict()`; nothing in tao-qc reads it back into these (results
cross module boundaries as these objects, report.json is for people and their tools)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from typing import Any


@dataclass
class OutputMetrics:
    name: str
    shape: list[int]  # per-batch shape seen (first iteration)
    max_abs_error: float
    mean_abs_error: float
    p99_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    cosine: float  # cosine similarity of the output over the whole data set (what the default check reads)
    min_cosine: float  # the lowest per-sample cosine (reported, not checked)
    within_tolerance: float | None = None  # fraction of elements passing atol/rtol (when set)
    polygraphy_passed: bool | None = None  # polygraphy's element-wise verdict (when atol/rtol set)
    is_classifier: bool = False
    top1_agreement: float | None = None
    reference_top1: float | None = None  # accuracy against labels
    candidate_top1: float | None = None
    nonfinite: int = 0  # candidate elements that are NaN/Inf where the reference is finite
    # What the output is, read from FP32's values (`tao_qc.evaluate.measures.output_kind`): classifier,
    # class_scores (probabilities per position), probability_map ([N, 1, H, W] in [0, 1]) or values.
    kind: str = "values"
    class_axis: int | None = None  # class_scores: the axis the probabilities sum to 1 over
    position_top1_agreement: float | None = None  # class_scores: fraction of positions whose argmax agrees
    # class_scores [N, C, H, W] (a segmenter): the mIoU of the label maps, FP32's as the truth, and
    # each class's IoU (`tao_qc.evaluate.measures.label_map_iou`).
    label_map_iou: float | None = None
    class_iou: dict[int, float] | None = None
    mask_iou: float | None = None  # probability_map: IoU of the maps thresholded at MASK_THRESHOLD
    # probability_map (`tao_qc.evaluate.text_regions`): the H-mean of FP32's text regions and the
    # quantized model's, and their counts over the data set.
    region_agreement: float | None = None
    regions: dict[str, int] | None = None
    # class_scores [N, T, C] with a CTC blank (`tao_qc.evaluate.ctc_reading`): the blank's class, the
    # greedy readings' agreement with FP32's (1 - edits / characters FP32 read) and that count.
    blank_class: int | None = None
    sequence_agreement: float | None = None
    characters_read: int | None = None
    error_histogram: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Check:
    output: str
    metric: str
    value: float
    threshold: float
    passed: bool
    why: str  # what asked for the check: "atol=..., rtol=...", "min_top1_agreement", or the default's reason
    default: bool = False  # True where the user asked for nothing and tao-qc chose the check for the output
    # A default check's account of itself for the report (`tao_qc.evaluate.checks.DEFAULT_CHECKS`):
    # what it measures, the task result it is a proxy for ("" where it is that result), its floor's basis.
    measures: str = ""
    proxy_for: str = ""
    floor_basis: str = ""

    @property
    def name(self) -> str:
        """The check in a user's words ("sequence agreement"), as progress lines and report.html name it."""
        return check_name(self.metric)

    def in_words(self) -> str:
        """`sequence agreement 0.998 (needs 0.99)`: the check, its value and its floor."""
        return check_in_words(asdict(self))

    def describe(self) -> str:
        where = f"output '{self.output}'"
        if self.metric == "nonfinite":
            return f"{where}: {int(self.value)} NaN/Inf values where the reference is finite"
        if self.metric == "within_tolerance":
            return f"{where}: {100 * self.value:.2f}% of elements within {self.why} (needs 100%)"
        if self.metric == "top1_agreement":
            return f"{where}: top-1 agreement {100 * self.value:.2f}% (needs >= {100 * self.threshold:.2f}%, {self.why})"
        if self.metric == "position_top1_agreement":
            return (f"{where}: top-1 agreement per position {100 * self.value:.2f}% "
                    f"(needs >= {100 * self.threshold:.2f}%, {self.why})")
        if self.metric == "label_map_iou":
            return (f"{where}: mIoU of the label maps {value_in_words(self.value, self.threshold)} against FP32's "
                    f"(needs >= {self.threshold:g}, {self.why})")
        if self.metric == "sequence_agreement":
            return (f"{where}: sequence agreement {value_in_words(self.value, self.threshold)} of the text read with "
                    f"FP32's (needs >= {self.threshold:g}, {self.why})")
        if self.metric == "region_agreement":
            return (f"{where}: text regions found {value_in_words(self.value, self.threshold)} "
                    f"(needs >= {self.threshold:g}, {self.why})")
        if self.metric == "map50_vs_fp32":
            return f"detections: mAP@.5 against FP32's boxes {self.value:.4f} (needs >= {self.threshold:g}, {self.why})"
        if self.metric == "map":
            return f"detections: mAP@[.5:.95] {self.value:.4f} (needs >= {self.threshold:.4f}, {self.why})"
        return f"{where}: {self.metric} {self.value:.5f} (needs >= {self.threshold:g}, {self.why})"


CHECK_NAMES = {
    "sequence_agreement": "sequence agreement",
    "position_top1_agreement": "position top-1",
    "label_map_iou": "label-map mIoU",
    "top1_agreement": "top-1 agreement",
    "region_agreement": "text regions found",
    "map50_vs_fp32": "mAP@.5 vs FP32",
    "map": "mAP@[.5:.95]",
    "within_tolerance": "within tolerance",
    "nonfinite": "NaN/Inf values",
}


def value_in_words(value: float, threshold: float) -> str:
    """`value` to three decimals, more where fewer would round a miss up to its floor (0.9899 against
    0.99 reads 0.9899, not 0.990), trailing zeros dropped."""
    digits = 3
    while digits < 6 and value < threshold and round(value, digits) >= threshold:
        digits += 1
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def check_name(metric: str) -> str:
    return CHECK_NAMES.get(metric, metric.replace("_", " "))


def threshold_in_words(check: Mapping[str, Any]) -> str:
    if check.get("metric") == "nonfinite":
        return "0"
    if check.get("metric") == "within_tolerance":
        return f"1, {check.get('why')}"
    return value_in_words(check["threshold"], check["threshold"])


def check_in_words(check: Mapping[str, Any], before: float | None = None) -> str:
    """A check (a `Check` as report.json holds it) as `name value (needs floor)`, or `name before ->
    value (needs floor)` where `before` is given."""
    value = value_in_words(check["value"], check["threshold"])
    if before is not None:
        value = f"{value_in_words(before, check['threshold'])} -> {value}"
    return f"{check_name(check['metric'])} {value} (needs {threshold_in_words(check)})"


def checks_in_words(checks: list[Check], before: list[Check] | None = None) -> str:
    """Each check as `name value (needs floor)`, or `name before -> after (needs floor)` where the
    same check was measured `before`; joined by "; ", the output named where there are several."""
    earlier = {(c.output, c.metric): c.value for c in before or []}
    several = len({c.output for c in checks}) > 1
    return "; ".join((f"{c.output}: " if several else "") + check_in_words(asdict(c), earlier.get((c.output, c.metric)))
                     for c in checks)


@dataclass
class ComparisonResult:
    reference: str
    candidate: str
    runtime: str
    num_samples: int
    data: str
    data_is_random: bool
    tolerances: dict[str, Any]
    outputs: list[OutputMetrics] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    engines: dict[str, Any] = field(default_factory=dict)  # per role: artifact, build settings, layer precisions
    task: str = "auto"
    detection: dict[str, Any] | None = None  # `tao_qc.evaluate.detection.DetectionComparison.result()`
    # How the candidate's integers were computed: "kernels" (this CPU's fused integer kernels, as it
    # will run here) or "graph" (its own Q/DQ arithmetic: what the CPU it was compiled for computes,
    # where this one's kernels compute otherwise).
    candidate_arithmetic: str = "kernels"

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        return [check.describe() for check in self.checks if not check.passed]

    def output(self, name: str) -> OutputMetrics:
        return next(o for o in self.outputs if o.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "runtime": self.runtime,
            "num_samples": self.num_samples,
            "data": self.data,
            "data_is_random": self.data_is_random,
            "tolerances": self.tolerances,
            "passed": self.passed,
            "failures": self.failures,
            "outputs": [o.to_dict() for o in self.outputs],
            "checks": [asdict(c) for c in self.checks],
            "engines": self.engines,
            "task": self.task,
            "detection": self.detection,
            "candidate_arithmetic": self.candidate_arithmetic,
        }
