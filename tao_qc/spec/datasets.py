"""Which data set each measure of `compile` runs on, and which labels go with it: decided once, from
the spec alone, so that a metric that needs labels on data without them is a spec error before
calibration, never a Python error in the report.

Three measures, three data sets:
- the accuracy target (`accuracy.metric`; fallback searches on it): `accuracy.data` with
  `accuracy.labels`; else `compare.data` with `accuracy.labels` or `compare.labels`; else the
  calibration data (a part held back where no labels are given), with whichever labels are given;
- the comparison (report.json's `comparison`): `compare.data` with `compare.labels`; else the
  calibration data (or its held-back part) with `compare.labels`, or `accuracy.labels` where
  `accuracy.data` is absent too (labels given without data follow the calibration samples);
- the final measure of the saved model (`accuracy.final`): the accuracy metric on the comparison
  data, which is data the search did not choose by, where that data can feed the metric; a metric
  that needs labels, on comparison data without them, is measured on the accuracy data instead, and
  the report says so (`Measures.final_note`) and how to have it on held-out data.

Labels belong to the data set they are given with: `compare.labels` never label `accuracy.data`.

Which metrics need labels: `top1_accuracy`, and a `module:function` metric whenever the spec gives
labels at all (a user's metric is `f(reference, candidate, labels)`; where the user gives labels,
the metric reads them; with none anywhere it is called with `labels=None`). The built-in `cosine`,
`top1_agreement`, `map` and the comparison's checks never read labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACCURACY_DATA = "quantize.accuracy.data"
COMPARE_DATA = "quantize.compare.data"
CALIBRATION_DATA = "quantize.calibration.data"


@dataclass(frozen=True)
class DataSet:
    key: str  # the spec key the inputs come from (quantize.accuracy.data, ...)
    data: str | None  # the path (or "random"); None: the calibration data, or the part held back from it
    labels: str | None  # the labels' path, None where this data set has none
    labels_key: str | None  # the spec key the labels come from


@dataclass(frozen=True)
class Measures:
    accuracy: DataSet
    comparison: DataSet
    final: DataSet | None  # None where no accuracy metric is set (the comparison's checks decide)
    metric_needs_labels: bool
    final_note: str | None  # why the final measure is not on the comparison data


def metric_needs_labels(spec: Any) -> bool:
    """Whether `spec.accuracy.metric` reads labels (see the module docstring)."""
    metric = spec.accuracy.metric
    if metric == "top1_accuracy":
        return True
    if metric is not None and ":" in metric:
        return bool(spec.accuracy.labels or spec.compare.labels)
    return False


def accuracy_data_set(spec: Any) -> DataSet:
    accuracy, compare = spec.accuracy, spec.compare
    if accuracy.data is not None:
        return DataSet(ACCURACY_DATA, accuracy.data, accuracy.labels, "quantize.accuracy.labels" if accuracy.labels else None)
    labels, key = _first_labels((accuracy.labels, "quantize.accuracy.labels"), (compare.labels, "quantize.compare.labels"))
    if compare.data is not None:
        return DataSet(COMPARE_DATA, compare.data, labels, key)
    return DataSet(CALIBRATION_DATA, None, labels, key)


def comparison_data_set(spec: Any) -> DataSet:
    accuracy, compare = spec.accuracy, spec.compare
    if compare.data is not None:
        return DataSet(COMPARE_DATA, compare.data, compare.labels, "quantize.compare.labels" if compare.labels else None)
    follow = accuracy.labels if accuracy.data is None else None  # accuracy.labels without data label these samples
    labels, key = _first_labels((compare.labels, "quantize.compare.labels"), (follow, "quantize.accuracy.labels"))
    return DataSet(CALIBRATION_DATA, None, labels, key)


def measures(spec: Any) -> Measures:
    """Where each measure runs (the module docstring's rules); call `label_problem` first."""
    accuracy, comparison = accuracy_data_set(spec), comparison_data_set(spec)
    needs = metric_needs_labels(spec)
    final, note = None, None
    if spec.accuracy.metric is not None:
        final = comparison
        if needs and comparison.labels is None and accuracy.labels is not None:
            final = accuracy
            note = (f"measured on {accuracy.key}, the data fallback judged by: {spec.accuracy.metric} needs labels "
                    f"and {comparison.key} has none (give held-out data with labels, quantize.compare.data and "
                    "quantize.compare.labels, to measure on data the search did not see)")
    return Measures(accuracy, comparison, final, needs, note)


def label_problem(spec: Any) -> tuple[tuple[str, ...], str] | None:
    """(the spec field's path under `quantize`, a one-line message) where the metric needs labels that
    the data it runs on lacks; None where every measure can run."""
    if not metric_needs_labels(spec):
        return None
    metric = spec.accuracy.metric
    data = accuracy_data_set(spec)
    if data.labels is not None:
        return None
    if metric == "top1_accuracy" and not (spec.accuracy.labels or spec.compare.labels):
        return ("accuracy", "metric"), ("metric top1_accuracy needs labels (set quantize.accuracy.labels or "
                                        "quantize.compare.labels)")
    # Labels are given, but for other data than the accuracy data (compare.labels with accuracy.data).
    return ("accuracy", "data"), (f"accuracy.metric {metric} needs labels; accuracy.data has none (compare.labels "
                                  "label compare.data): give accuracy.labels, or leave accuracy.data out to judge "
                                  "on compare.data")


def _first_labels(*candidates: tuple[str | None, str]) -> tuple[str | None, str | None]:
    for labels, key in candidates:
        if labels:
            return labels, key
    return None, None
