"""The measures accuracy-driven quantization steers by, and the target each must reach.

Every metric is a function of the whole data set's outputs, higher is better:
`metric(reference, candidate, labels) -> float`, where `reference` and `candidate` map output names
to arrays stacked over samples (FP32's and the quantized model's). The FP32 value of the metric is
`metric(reference, reference, labels)`, so a target can be a floor (`min`) or a largest drop from FP32
(`max_drop`).

- `cosine`: the lowest, over outputs, of the cosine similarity to FP32 of the output over the whole
  data set (`output_cosine`; default floor 0.99).
- `top1_agreement`: the lowest, over classifier outputs (`[N, C]`), of how often the argmax agrees
  with FP32's (default floor: `compare.min_top1_agreement`, else 0.99).
- `top1_accuracy`: the argmax against integer labels (default: at most 1 point below FP32).
- `map`: the detections (`compare.decoder`): COCO mAP@[.5:.95] against `compare.annotations`
  (default: at most 1 point below FP32), or mAP@.5 against FP32's own detections (default floor
  0.9, the comparison's detection check). A detector's default metric.
- `module:function`: the user's own, same signature (default: at most 0.01 below FP32).
- none given: the comparison's own checks (`tao_qc.evaluate.checks.checks_for`), the default that fits
  each output (the text a CTC recognizer reads, the text regions of a detector's probability map, a
  segmenter's label maps, cosine for values); the value is the
  smallest margin of any check over its threshold, so the target is "every check passes" (value >= 0)
  and fallback stops as soon as they hold, not when a cosine no INT8 model reaches does. The margin
  steers the search; what a person reads is each check by name, value and floor
  (`ComparisonChecks.checks`, `tao_qc.evaluate.results.checks_in_words`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.evaluate import detection
from tao_qc.evaluate.checks import checks_for
from tao_qc.evaluate.detection import DEFAULT_MIN_MAP50_VS_FP32
from tao_qc.evaluate.results import Check
from tao_qc.evaluate.measures import (  # noqa: F401
    _flat,
    _rows,
    is_classifier_output,
    output_cosine,
    output_metrics,
    per_sample_cosine,
    sample_slices,
)
from tao_qc.spec import QuantizeSpec
from tao_qc.spec.user_code import load_user_function

Outputs = Mapping[str, np.ndarray]
MetricFunction = Callable[[Outputs, Outputs, Any], float]

DEFAULT_MIN = {"cosine": 0.99, "top1_agreement": 0.99, "checks": 0.0}
DEFAULT_MAX_DROP = 0.01


def sample_errors(reference: Outputs, candidate: Outputs) -> np.ndarray:
    """Per sample, the largest over outputs of its error energy relative to the output's mean sample
    energy: the samples that pull `output_cosine` down most come first when sorted by it (a sample
    whose output is all but zero can only stray by all but nothing)."""
    shares = []
    for name in reference:
        ref_rows, cand_rows = _rows(reference[name]), _rows(candidate[name])
        energies, errors = np.empty(ref_rows.shape[0]), np.empty(ref_rows.shape[0])
        for part in sample_slices(*ref_rows.shape):  # in float64 a slice of samples at a time
            r, c = _flat(ref_rows[part], cand_rows[part])
            energies[part] = np.sum(r * r, axis=1)
            errors[part] = np.sum((r - c) ** 2, axis=1)
        energy = float(np.mean(energies))
        shares.append(errors / (energy if energy > 0 else 1.0))
    return np.max(np.stack(shares), axis=0)


def cosine(reference: Outputs, candidate: Outputs, labels: Any = None) -> float:
    return float(min(output_cosine(reference[name], candidate[name]) for name in reference))


def _classifier_outputs(reference: Outputs) -> list[str]:
    names = [name for name, array in reference.items() if is_classifier_output(array)]
    if not names:
        raise InputError("quantize.accuracy.metric: top-1 metrics need a classifier output ([N, C], C > 1); "
                         f"this model's outputs are {', '.join(f'{n} {list(a.shape[1:])}' for n, a in reference.items())}")
    return names


def top1_agreement(reference: Outputs, candidate: Outputs, labels: Any = None) -> float:
    return float(min(np.mean(reference[name].argmax(axis=1) == np.nan_to_num(candidate[name], nan=-np.inf).argmax(axis=1))
                     for name in _classifier_outputs(reference)))


def top1_accuracy(reference: Outputs, candidate: Outputs, labels: Any = None) -> float:
    if labels is None:
        raise InputError("quantize.accuracy.metric: top1_accuracy needs labels (quantize.accuracy.labels)")
    labels = np.asarray(labels).reshape(-1)
    name = _classifier_outputs(reference)[0]
    predicted = np.nan_to_num(candidate[name], nan=-np.inf).argmax(axis=1)
    if len(labels) != len(predicted):
        raise InputError(f"quantize.accuracy.labels: {len(labels)} labels for {len(predicted)} samples (give one per sample)")
    return float(np.mean(predicted == labels))


@dataclass
class MeanAveragePrecision:
    """COCO mAP of the decoded detections (`compare.decoder`): mAP@[.5:.95] against `compare.annotations`,
    or, without them, mAP@.5 against FP32's own detections (as the comparison's detection check)."""

    settings: Any  # CompareSpec
    needs_inputs = True

    def __call__(self, reference: Outputs, candidate: Outputs, labels: Any = None,
                 inputs: Mapping[str, np.ndarray] | None = None) -> float:
        if self.settings.decoder is None:
            raise InputError("quantize.accuracy.metric: map needs quantize.compare.decoder (rtdetr, boxes_scores, "
                             "or module:function) to turn outputs into boxes")
        decoder = detection.load_decoder(self.settings.decoder)
        cand = detection.decode(decoder, candidate, inputs, self.settings.decoder)
        sizes = [detection.input_size(inputs)] * len(cand)
        if self.settings.annotations:
            result = detection.map_against_annotations(detection.load_annotations(self.settings.annotations), cand, sizes)
            return float(result.map or 0.0)
        ref = detection.decode(decoder, reference, inputs, self.settings.decoder)
        result = detection.map_against_reference(ref, cand, sizes, *detection.thresholds(self.settings))
        return float(result.map50 or 0.0)


@dataclass
class ComparisonChecks:
    """The comparison's own checks (`compare` settings) as one number: the smallest margin over a threshold."""

    settings: Any  # CompareSpec

    def __call__(self, reference: Outputs, candidate: Outputs, labels: Any = None) -> float:
        return smallest_margin(self.checks(reference, candidate))

    def checks(self, reference: Outputs, candidate: Outputs) -> list[Check]:
        """The checks themselves, for progress and the report to name with their values and floors."""
        checks = []
        for name in reference:
            metrics = output_metrics(name, reference[name], candidate[name], atol=self.settings.atol, rtol=self.settings.rtol)
            checks.extend(checks_for(metrics, self.settings))
        return checks


def smallest_margin(checks: list[Check]) -> float:
    """The checks as one number to steer by: the smallest margin of a value over its floor (>= 0: all pass)."""
    margins = [check.value - check.threshold if check.metric != "nonfinite" else -float(check.value) for check in checks]
    return float(min(margins)) if margins else 0.0


BUILTIN: dict[str, MetricFunction] = {
    "cosine": cosine,
    "top1_agreement": top1_agreement,
    "top1_accuracy": top1_accuracy,
}


def load_user_metric(reference: str, search_path: str | Path | None = None) -> MetricFunction:
    """`module:function`, looked for beside the spec file (`search_path`) first (`tao_qc.spec.user_code`)."""
    return load_user_function(reference, "quantize.accuracy.metric", search_path=search_path)


@dataclass
class Target:
    """A metric and what it must reach: `min` (a floor) or `max_drop` (the largest drop from FP32)."""

    name: str  # cosine, top1_agreement, ..., module:function, or "checks"
    function: MetricFunction
    min: float | None = None
    max_drop: float | None = None

    def threshold(self, fp32_value: float) -> float:
        if self.min is not None:
            return self.min
        return fp32_value - (self.max_drop if self.max_drop is not None else 0.0)

    def met(self, value: float, fp32_value: float) -> bool:
        return bool(np.isfinite(value)) and value >= self.threshold(fp32_value) - 1e-12

    def describe(self, fp32_value: float) -> str:
        if self.name == "checks":
            return "every check passes (each named with its value and floor)"
        if self.min is not None:
            return f"{self.name} >= {self.min:g}"
        return f"{self.name} >= {self.threshold(fp32_value):.4g} (FP32 {fp32_value:.4g} - {self.max_drop:g})"


def target_for(spec: QuantizeSpec, search_path: str | Path | None = None) -> Target:
    """The target `spec.accuracy` asks for, with the defaults of this module's docstring."""
    accuracy = spec.accuracy
    name = accuracy.metric
    detecting = spec.compare.resolved_task == "detection"
    if name is None and not detecting:
        return Target("checks", ComparisonChecks(spec.compare), min=DEFAULT_MIN["checks"])
    if name is None or name == "map":
        # Boxes are the measure of a detector; the comparison's own detection check is the default.
        function = MeanAveragePrecision(spec.compare)
        if accuracy.min is not None or accuracy.max_drop is not None:
            return Target("map", function, min=accuracy.min, max_drop=accuracy.max_drop)
        if spec.compare.annotations:
            return Target("map", function, max_drop=DEFAULT_MAX_DROP)
        return Target("map50 vs FP32", function, min=DEFAULT_MIN_MAP50_VS_FP32)
    function = BUILTIN[name] if name in BUILTIN else load_user_metric(name, search_path)
    if accuracy.min is not None or accuracy.max_drop is not None:
        return Target(name, function, min=accuracy.min, max_drop=accuracy.max_drop)
    if name == "top1_agreement" and spec.compare.min_top1_agreement is not None:
        return Target(name, function, min=spec.compare.min_top1_agreement)
    if name in DEFAULT_MIN:
        return Target(name, function, min=DEFAULT_MIN[name])
    return Target(name, function, max_drop=DEFAULT_MAX_DROP)
