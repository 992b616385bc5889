"""What a comparison of FP32 and quantized outputs yields, as typed objects: per-output figures
(`OutputMetrics`), the checks applied to them (`Check`), and the whole result (`ComparisonResult`).
report.json holds `ComparisonResult.to_dict()`; nothing in tao-qc reads it back into these (results
cross module boundaries as these objects, report.json is for people and their tools)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
    mask_iou: float | None = None  # probability_map: IoU of the maps thresholded at MASK_THRESHOLD
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
        if self.metric == "mask_iou":
            return f"{where}: IoU of the thresholded maps {self.value:.4f} (needs >= {self.threshold:g}, {self.why})"
        if self.metric == "map50_vs_fp32":
            return f"detections: mAP@.5 against FP32's boxes {self.value:.4f} (needs >= {self.threshold:g}, {self.why})"
        if self.metric == "map":
            return f"detections: mAP@[.5:.95] {self.value:.4f} (needs >= {self.threshold:.4f}, {self.why})"
        return f"{where}: {self.metric} {self.value:.5f} (needs >= {self.threshold:g}, {self.why})"


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
