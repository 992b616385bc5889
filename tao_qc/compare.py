"""Compare a reference (FP32) and a candidate (quantized) model on the same inputs, through Polygraphy.

Both models run under polygraphy's `Comparator.run` (two runners with distinct names, one engine per
model on the chosen runtime); polygraphy's `compare_accuracy` gives its element-wise verdict where
tolerances are set. Metrics that need every sample at once (p99 error, cosine similarity, top-1
agreement and accuracy) are computed over all iterations' outputs here.

What must hold (`CompareSpec`, CLI flags override):
- `atol` / `rtol`: every element of every output passes polygraphy's element-wise check:
  `|cand - ref| <= atol` OR `|cand - ref| / |ref| <= rtol` (a tolerance left unset is 0 when the
  other is set). `within_tolerance` is the fraction of elements that pass.
- `min_top1_agreement`: classifier outputs (2-D, `[N, C]` with C > 1) agree on argmax for at least
  this fraction of samples.
- Nothing set: classifier outputs need top-1 agreement >= 0.99 (`DEFAULT_MIN_TOP1_AGREEMENT`); other
  outputs need a cosine similarity >= 0.99 (`DEFAULT_MIN_COSINE`) over the whole data set (each
  sample weighs in by its share of the output's energy: `tao_qc.accuracy.metrics.output_cosine` says
  why not per sample); the lowest per-sample cosine is reported beside it. Quantization never meets
  element-wise FP32 tolerances, so the default checks what users care about.
- `task: detection` (or a `decoder`): boxes are the measure (`tao_qc.detection`). Raw outputs are
  reported but not checked by cosine or top-1; instead the quantized model's mAP@.5 against FP32's
  detections must be >= 0.9, or, with `annotations`, its mAP@[.5:.95] at most 0.01 below FP32's.
  `task: dense` never reads a 2-D output as class scores.
- Always: the candidate's outputs are finite wherever the reference's are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.accuracy.metrics import output_cosine, per_sample_cosine
from tao_qc.errors import InputError
from tao_qc.spec import CompareSpec

log = logging.getLogger("tao_qc.compare")

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_MIN_COSINE = 0.99
REFERENCE_RUNNER = "reference"
CANDIDATE_RUNNER = "candidate"
_HISTOGRAM_BINS = 24


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
    why: str  # "atol/rtol", "min_top1_agreement", "default"

    def describe(self) -> str:
        where = f"output '{self.output}'"
        if self.metric == "nonfinite":
            return f"{where}: {int(self.value)} NaN/Inf values where the reference is finite"
        if self.metric == "within_tolerance":
            return f"{where}: {100 * self.value:.2f}% of elements within {self.why} (needs 100%)"
        if self.metric == "top1_agreement":
            return f"{where}: top-1 agreement {100 * self.value:.2f}% (needs >= {100 * self.threshold:.2f}%, {self.why})"
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
    detection: dict[str, Any] | None = None  # `tao_qc.detection.DetectionComparison.result()`

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
        }

    def render(self) -> Any:
        """A rich renderable: one row per output, then the verdict."""
        from rich.console import Group
        from rich.text import Text

        # Two narrow tables (errors; agreement and tolerance) rather than one wide one: each fits an
        # 80-column terminal, and columns without a value for any output are left out.
        errors: list[tuple[str, Any]] = [
            ("output", lambda o: o.name),
            ("max |err|", lambda o: _fmt(o.max_abs_error)),
            ("mean |err|", lambda o: _fmt(o.mean_abs_error)),
            ("p99 |err|", lambda o: _fmt(o.p99_abs_error)),
            ("mean rel", lambda o: _fmt(o.mean_rel_error)),
            ("cosine", lambda o: f"{o.cosine:.5f}"),
        ]
        agreement: list[tuple[str, Any]] = [("output", lambda o: o.name)]
        for header, attr in (("top-1 agree", "top1_agreement"), ("acc FP32", "reference_top1"),
                             ("acc quant", "candidate_top1"), ("within tol", "within_tolerance")):
            if any(getattr(o, attr) is not None for o in self.outputs):
                agreement.append((header, lambda o, attr=attr: _pct(getattr(o, attr))))
        title = f"{Path(self.reference).name} vs {Path(self.candidate).name} on {self.runtime}, {self.num_samples} samples"
        parts: list[Any] = [self._table(title, errors)]
        if len(agreement) > 1:
            parts.append(self._table(None, agreement))
        if self.detection:
            parts.extend(_detection_renderables(self.detection))
        if self.data_is_random:
            parts.append(Text("warning: compared on RANDOM inputs; give --data for figures that mean something", style="bold yellow"))
        if self.passed:
            parts.append(Text(f"PASSED ({len(self.checks)} checks)", style="bold green"))
        else:
            parts.append(Text("FAILED: " + "; ".join(self.failures), style="bold red"))
        return Group(*parts)

    def _table(self, title: str | None, columns: list[tuple[str, Any]]) -> Any:
        from rich.table import Table

        table = Table(title=title)
        for header, _ in columns:
            is_name = header == "output"
            table.add_column(header, justify="left" if is_name else "right", no_wrap=not is_name,
                             overflow="fold" if is_name else "ellipsis")
        for o in self.outputs:
            table.add_row(*(cell(o) for _, cell in columns))
        return table


def _detection_renderables(section: dict[str, Any]) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    against = ("the annotations" if section.get("against") == "annotations" else
               f"FP32's detections at score >= {section.get('score_threshold'):g}")
    lines = [Text(f"detection ({section.get('decoder')}): mAP@[.5:.95] {_map(section.get('map'))}, mAP@.5 "
                  f"{_map(section.get('map50'))} of the quantized model against {against} "
                  f"({section.get('images')} images, {section.get('truth_boxes')} boxes to find)")]
    if section.get("against") == "annotations":
        fp32, versus = section.get("fp32") or {}, section.get("vs_fp32") or {}
        lines.append(Text(f"  FP32: mAP@[.5:.95] {_map(fp32.get('map'))}, mAP@.5 {_map(fp32.get('map50'))}; quantized "
                          f"against FP32's detections: mAP@.5 {_map(versus.get('map50'))}"))
    if section.get("note"):
        lines.append(Text("note: " + section["note"], style="yellow"))
    rows = section.get("per_class") or []
    if rows:
        table = Table(title="AP per class")
        for header in ("class", "AP@[.5:.95]", "AP@.5") + (("FP32 AP",) if any("fp32_ap" in r for r in rows) else ()):
            table.add_column(header, justify="left" if header == "class" else "right")
        for row in rows:
            cells = [str(row.get("name")), _map(row.get("ap")), _map(row.get("ap50"))]
            if "fp32_ap" in row:
                cells.append(_map(row.get("fp32_ap")))
            table.add_row(*cells)
        lines.append(table)
    return lines


def _map(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions of two arrays, tested)


def error_histogram(abs_error: np.ndarray, bins: int = _HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of |error| in log10-spaced bins (errors span magnitudes); exact zeros counted apart."""
    flat = abs_error[np.isfinite(abs_error)].ravel()
    zeros = int(np.count_nonzero(flat == 0))
    nonzero = flat[flat > 0]
    if nonzero.size == 0:
        return {"log10_edges": [], "counts": [], "zeros": zeros, "total": int(flat.size)}
    low, high = np.log10(nonzero.min()), np.log10(nonzero.max())
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(np.log10(nonzero), bins=bins, range=(low, high))
    return {"log10_edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "zeros": zeros, "total": int(flat.size)}


def output_metrics(name: str, reference: np.ndarray, candidate: np.ndarray, *, labels: np.ndarray | None = None,
                   atol: float | None = None, rtol: float | None = None, classify: bool = True) -> OutputMetrics:
    """Error figures of `candidate` against `reference` (all samples stacked on axis 0); `classify`
    False: a 2-D output is not read as class scores (detection and dense tasks)."""
    if reference.shape != candidate.shape:
        raise InputError(f"output '{name}' has shape {list(candidate.shape)} in the candidate but {list(reference.shape)} in the reference")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    finite = np.isfinite(ref)
    nonfinite = int(np.count_nonzero(finite & ~np.isfinite(cand)))
    abs_error = np.abs(cand - ref)
    abs_error = np.where(finite, abs_error, 0.0)
    abs_error = np.where(np.isfinite(abs_error), abs_error, np.inf)
    rel_error = abs_error / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    flat_abs = abs_error.ravel()

    samples = ref.shape[0] if ref.ndim else 1
    cosines = per_sample_cosine(ref, cand)

    metrics = OutputMetrics(
        name=name,
        shape=list(reference.shape[1:]),
        max_abs_error=float(flat_abs.max()) if flat_abs.size else 0.0,
        mean_abs_error=float(flat_abs.mean()) if flat_abs.size else 0.0,
        p99_abs_error=_p99(flat_abs),
        max_rel_error=float(rel_error.max()) if rel_error.size else 0.0,
        mean_rel_error=float(rel_error.mean()) if rel_error.size else 0.0,
        cosine=output_cosine(ref, cand),
        min_cosine=float(cosines.min()),
        nonfinite=nonfinite,
        error_histogram=error_histogram(abs_error),
    )
    if atol is not None or rtol is not None:
        ok = (abs_error <= (atol or 0.0)) | (rel_error <= (rtol or 0.0))
        metrics.within_tolerance = float(ok.mean()) if ok.size else 1.0
    if classify and is_classifier_output(reference):
        metrics.is_classifier = True
        ref_top = reference.argmax(axis=1)
        cand_top = np.nan_to_num(candidate, nan=-np.inf).argmax(axis=1)
        metrics.top1_agreement = float(np.mean(ref_top == cand_top))
        if labels is not None:
            if len(labels) != samples:
                raise InputError(f"--labels: {len(labels)} labels for {samples} compared samples (give one label per sample)")
            metrics.reference_top1 = float(np.mean(ref_top == labels))
            metrics.candidate_top1 = float(np.mean(cand_top == labels))
    return metrics


def _p99(values: np.ndarray) -> float:
    if not values.size:
        return 0.0
    with np.errstate(invalid="ignore"):  # an Inf error (NaN candidate) makes the interpolation NaN
        p99 = float(np.percentile(values, 99, method="higher"))
    return p99


def is_classifier_output(array: np.ndarray) -> bool:
    """Logits or probabilities: `[N, C]` with more than one class."""
    return array.ndim == 2 and array.shape[1] > 1


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
        threshold = settings.min_top1_agreement if settings.min_top1_agreement is not None else DEFAULT_MIN_TOP1_AGREEMENT
        why = "min_top1_agreement" if settings.min_top1_agreement is not None else "default for classifier outputs"
        agreement = metrics.top1_agreement or 0.0
        checks.append(Check(metrics.name, "top1_agreement", agreement, threshold, agreement >= threshold, why))
    if not metrics.is_classifier and not tolerance_set and not boxes_checked:
        checks.append(Check(metrics.name, "cosine", metrics.cosine, DEFAULT_MIN_COSINE, metrics.cosine >= DEFAULT_MIN_COSINE,
                            "default for non-classifier outputs"))
    return checks


# ---------------------------------------------------------------------------------------------


def check_same_inputs(reference: Any, candidate: Any) -> None:
    """Two engines take the same input names, dtypes and per-sample shapes, or an InputError says how not."""
    def signature(engine: Any) -> dict[str, tuple]:
        return {i.name: (np.dtype(i.dtype).name, tuple(d if isinstance(d, int) and d > 0 else "?" for d in i.shape[1:]))
                for i in engine.input_specs}

    ref, cand = signature(reference), signature(candidate)
    if ref != cand:
        mine = ", ".join(i.describe() for i in candidate.input_specs)
        theirs = ", ".join(i.describe() for i in reference.input_specs)
        raise InputError(f"{candidate.model_path.name} takes {mine} but {reference.model_path.name} takes {theirs}: the models' inputs differ")


@contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    """polygraphy logs every mismatching iteration at ERROR; our result reports them once."""
    from polygraphy.logger import G_LOGGER

    before = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        yield
    finally:
        G_LOGGER.module_severity = before


def compare_models(
    reference: str | Path,
    candidate: str | Path,
    inputs: Any,
    *,
    runtime: str = "onnxruntime",
    labels: np.ndarray | None = None,
    settings: CompareSpec | None = None,
    runtime_settings: Any = None,
    engines: tuple[Any, Any] | None = None,
    image_color: str = "rgb",
) -> ComparisonResult:
    """Run both models on `inputs` (a `tao_qc.data.InputBatches` or any re-iterable of feed dicts)
    under polygraphy and measure the candidate against the reference.

    `engines`: already built (reference, candidate) engines to reuse (a TensorRT build is minutes).
    `image_color`: the channel order of an image input (`rgb`, `bgr`), for the detection picture.
    """
    from polygraphy.comparator import Comparator

    from tao_qc.runtimes.base import RuntimeSettings, get_runtime

    settings = settings or CompareSpec()
    runtime_settings = runtime_settings or RuntimeSettings()
    if engines is None:
        backend = get_runtime(runtime)
        built = [backend.build(Path(reference), runtime_settings)]
        try:
            built.append(backend.build(Path(candidate), runtime_settings))
            return compare_models(reference, candidate, inputs, runtime=runtime, labels=labels, settings=settings,
                                  runtime_settings=runtime_settings, engines=(built[0], built[1]))
        finally:
            for engine in built:
                engine.close()
    ref_engine, cand_engine = engines
    check_same_inputs(ref_engine, cand_engine)
    _check_feeds(inputs, ref_engine)
    task = settings.resolved_task
    boxes = None
    if task == "detection":
        from tao_qc.detection import DetectionComparison

        boxes = DetectionComparison(settings, color=image_color)  # a bad decoder or json fails before the run

    runners = [ref_engine.runner(REFERENCE_RUNNER), cand_engine.runner(CANDIDATE_RUNNER)]
    tolerance_set = settings.atol is not None or settings.rtol is not None
    verdicts: dict[str, bool] = {}
    with _quiet_polygraphy():
        try:
            run_results = Comparator.run(runners, data_loader=inputs)
        except Exception as exc:  # noqa: BLE001 - runtimes raise their own types
            raise _rejected_data_error(ref_engine, inputs, exc) or exc
        if tolerance_set:
            verdicts = _polygraphy_verdicts(run_results, settings)
    if boxes is not None:
        for ref_iteration, cand_iteration, feeds in zip(run_results[REFERENCE_RUNNER], run_results[CANDIDATE_RUNNER], inputs):
            boxes.add(_arrays(ref_iteration), _arrays(cand_iteration), feeds)

    ref_outputs = _stack(run_results[REFERENCE_RUNNER])
    cand_outputs = _stack(run_results[CANDIDATE_RUNNER])
    num_samples = next(iter(ref_outputs.values())).shape[0] if ref_outputs else 0
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != num_samples:
            if len(labels) > num_samples:
                log.info("using the first %d of %d labels (one per compared sample)", num_samples, len(labels))
                labels = labels[:num_samples]
            else:
                raise InputError(f"--labels: {len(labels)} labels for {num_samples} compared samples (give one label per sample)")

    result = ComparisonResult(
        reference=str(reference),
        candidate=str(candidate),
        runtime=runtime,
        num_samples=num_samples,
        data=inputs.describe() if hasattr(inputs, "describe") else "feeds",
        data_is_random=bool(getattr(inputs, "is_random", False)),
        tolerances={"atol": settings.atol, "rtol": settings.rtol, "min_top1_agreement": settings.min_top1_agreement,
                    "default_min_top1_agreement": DEFAULT_MIN_TOP1_AGREEMENT, "default_min_cosine": DEFAULT_MIN_COSINE},
        task=task,
    )
    if boxes is not None:
        result.detection = boxes.result()
        result.checks.extend(detection_checks(result.detection, settings))
    boxes_checked = any(check.output == "detections" for check in result.checks)
    for role, engine in ((REFERENCE_RUNNER, ref_engine), (CANDIDATE_RUNNER, cand_engine)):
        result.engines[role] = {
            "artifact": str(engine.artifact) if engine.artifact else None,
            "device": engine.device,
            "build": getattr(engine, "build", None) or {},
            "layers": [row.to_dict() for row in getattr(engine, "layers", [])],
        }
    for name in ref_engine.output_names:
        if name not in cand_outputs:
            raise InputError(f"{Path(candidate).name} has no output '{name}' (its outputs: {', '.join(cand_outputs)})")
        metrics = output_metrics(name, ref_outputs[name], cand_outputs[name], labels=labels, atol=settings.atol,
                                 rtol=settings.rtol, classify=task in ("auto", "classification"))
        metrics.polygraphy_passed = verdicts.get(name) if tolerance_set else None
        result.outputs.append(metrics)
        result.checks.extend(checks_for(metrics, settings, boxes_checked=boxes_checked))
    return result


def detection_checks(section: dict[str, Any], settings: CompareSpec) -> list[Check]:
    """The default detection check (see the module docstring); none where mAP is undefined (FP32 finds
    nothing to compare against), and then the raw outputs keep their cosine checks."""
    from tao_qc.detection import DEFAULT_MAX_MAP_DROP, DEFAULT_MIN_MAP50_VS_FP32

    if settings.atol is not None or settings.rtol is not None:
        return []
    if section.get("against") == "annotations":
        fp32 = (section.get("fp32") or {}).get("map")
        if fp32 is None or section.get("map") is None:
            return []
        floor = fp32 - DEFAULT_MAX_MAP_DROP
        return [Check("detections", "map", section["map"], floor, section["map"] >= floor,
                      f"default for detection: at most {DEFAULT_MAX_MAP_DROP:g} below FP32's {fp32:.4f}")]
    value = (section.get("vs_fp32") or {}).get("map50")
    if value is None:
        return []
    return [Check("detections", "map50_vs_fp32", value, DEFAULT_MIN_MAP50_VS_FP32, value >= DEFAULT_MIN_MAP50_VS_FP32,
                  "default for detection")]


def _arrays(iteration: Any) -> dict[str, np.ndarray]:
    return {name: np.asarray(value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value)
            for name, value in iteration.items()}


def _polygraphy_verdicts(run_results: Any, settings: CompareSpec) -> dict[str, bool]:
    """Per output: did every iteration pass polygraphy's element-wise atol/rtol check?"""
    from polygraphy.comparator import Comparator, CompareFunc

    # Runner 1 (candidate) against runner 0 (reference): polygraphy's relative error divides by
    # the second array of the pair, so the reference goes second.
    compare_func = CompareFunc.simple(atol=settings.atol or 0.0, rtol=settings.rtol or 0.0, check_error_stat="elemwise")
    accuracy = Comparator.compare_accuracy(run_results, comparisons=[(1, 0)], compare_func=compare_func)
    # Older polygraphy returns one AccuracyResult, newer a list of them (one per compare function).
    results = accuracy if isinstance(accuracy, (list, tuple)) or hasattr(accuracy, "lst") else [accuracy]
    verdicts: dict[str, bool] = {}
    for per_function in results:
        for iterations in per_function.values():
            for iteration in iterations:
                for name, outcome in iteration.items():
                    verdicts[name] = verdicts.get(name, True) and bool(outcome)
    return verdicts


def _stack(iterations: Any) -> dict[str, np.ndarray]:
    """All iterations of one runner, concatenated per output along the batch axis."""
    per_output: dict[str, list[np.ndarray]] = {}
    for iteration in iterations:
        for name, value in iteration.items():
            array = np.asarray(value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else value)
            per_output.setdefault(name, []).append(array if array.ndim else array.reshape(1))
    return {name: np.concatenate(arrays, axis=0) for name, arrays in per_output.items()}


def _rejected_data_error(engine: Any, inputs: Any, error: BaseException) -> InputError | None:
    """An InputError when the reference model itself cannot run the data (a size it does not take),
    None when the failure lies elsewhere."""
    from tao_qc.shapes import dynamic_axes, explain_rejected_shape

    first = inputs.first() if hasattr(inputs, "first") else next(iter(inputs))
    try:
        engine.run(first)
    except Exception:  # noqa: BLE001 - the data is what fails
        return explain_rejected_shape(engine.run, first, dynamic_axes(engine.input_specs), error,
                                      getattr(inputs, "key", "the data"))
    return None


def _check_feeds(inputs: Any, engine: Any) -> None:
    """The data's arrays name the model's inputs with fitting per-sample shapes and dtypes."""
    first = inputs.first() if hasattr(inputs, "first") else next(iter(inputs))
    specs = {i.name: i for i in engine.input_specs}
    if set(first) != set(specs):
        raise InputError(f"the data feeds {', '.join(sorted(first))} but {engine.model_path.name} takes {', '.join(i.describe() for i in specs.values())}")
    for name, array in first.items():
        info = specs[name]
        dims = info.shape
        if array.ndim != len(dims) or any(isinstance(d, int) and d > 0 and d != a for d, a in zip(dims, array.shape)):
            raise InputError(f"the data's '{name}' batches are {array.dtype.name}{list(array.shape)} but {engine.model_path.name} takes {info.describe()}")
        if array.dtype != info.dtype:
            raise InputError(f"the data's '{name}' is {array.dtype.name} but {engine.model_path.name} takes {info.describe()}")


# ---------------------------------------------------------------------------------------------
# The end of `tao-qc compile`: comparison and latency sections for report.json / report.html


def evaluate_quantized(
    fp32_path: str | Path,
    quant_path: str | Path,
    inputs: Any,
    spec: Any,
    labels: np.ndarray | None = None,
    *,
    batch_sizes: tuple[int, ...] = (1,),
    warmup: int = 5,
    runs: int = 20,
    artifact_dir: str | Path | None = None,
    measure_latency: bool = True,
) -> dict[str, Any]:
    """Compare `quant_path` against `fp32_path` on `inputs` and time both, with the spec's settings.

    Returns `{"comparison": ComparisonResult.to_dict(), "latency": BenchTable.to_dict()}` (latency
    None when not measured), ready for report.json and `write_html_report`. It never raises for a
    failed check: call `raise_if_failed(sections, spec)` for the exit-1 behaviour.
    `spec` is a `QuantizeSpec`: `spec.compare` gives runtime and tolerances, `spec.tensorrt` the
    engine settings; engines (ORT's optimized graph, TensorRT .engine) are saved in `artifact_dir`.
    """
    from tao_qc.latency import bench_models
    from tao_qc.runtimes.base import RuntimeSettings, get_runtime
    from tao_qc.shapes import shapes_of

    runtime = spec.compare.runtime
    compared_batch = getattr(inputs, "batch_size", None)
    settings = RuntimeSettings(
        artifact_dir=Path(artifact_dir) if artifact_dir else None,
        save_artifact=artifact_dir is not None,
        tensorrt=spec.tensorrt,
        fp16_baseline=spec.tensorrt.fp16_baseline,
        batch_sizes=tuple(batch_sizes) + ((compared_batch,) if compared_batch else ()),
        input_shapes=shapes_of(inputs.first()),
    )
    backend = get_runtime(runtime)
    built = [backend.build(Path(fp32_path), settings)]
    try:
        built.append(backend.build(Path(quant_path), settings))
        engines = (built[0], built[1])
        comparison = compare_models(fp32_path, quant_path, inputs, runtime=runtime, labels=labels, settings=spec.compare,
                                    runtime_settings=settings, engines=engines, image_color=spec.calibration.color)
        sections: dict[str, Any] = {"comparison": comparison.to_dict(), "latency": None}
        if measure_latency:
            # Timed at the shape of the data compared: a model with open height/width has no other.
            sections["latency"] = bench_models([fp32_path, quant_path], batch_sizes, runtime=runtime, settings=settings,
                                               warmup=warmup, runs=runs, engines=list(engines),
                                               shapes=shapes_of(inputs.first())).to_dict()
    finally:
        for engine in built:
            engine.close()
    return sections


def raise_if_failed(sections: dict[str, Any], spec: Any) -> None:
    """AccuracyError (exit 1) when the result misses what the spec asks and `compare.fail_on_mismatch` is set.

    Without an accuracy metric the comparison's checks decide. With one (`accuracy.metric`), that
    metric on the comparison data decides, with only the comparison checks the user set explicitly
    (tolerances, `min_top1_agreement`) and NaN/Inf on top; fallback that ran out of
    `max_float_fraction` fails too."""
    from tao_qc.errors import AccuracyError

    comparison = sections.get("comparison") or {}
    accuracy = sections.get("accuracy") or {}
    failures = []
    search = accuracy.get("search") or {}
    if accuracy.get("ran") and not accuracy.get("reached") and search.get("sensitivity"):
        failures.append(f"accuracy fallback kept {len(search.get('kept_float') or [])} nodes in float (at most "
                        f"{search.get('limit')} allowed by max_float_fraction) and still misses {accuracy.get('target')}; "
                        "the best model found is kept")
    final = accuracy.get("final")
    if final and final.get("met") is False:
        failures.append(f"{final['metric']} {final['value']:.5g} on the comparison data misses {final['target']}")
    fidelity = sections.get("kernel_fidelity")
    if fidelity and not fidelity.get("passed", True) and fidelity.get("decides", True):
        failures.append(fidelity["reason"])
    if comparison and not comparison.get("passed", True):
        checks = comparison.get("checks") or []
        if final is not None:  # the metric decides; only the checks the user set count besides it
            failures += [_describe_check(c) for c in checks if not c["passed"] and not c["why"].startswith("default")]
        else:
            failures += comparison.get("failures") or []
    if failures and spec.compare.fail_on_mismatch:
        raise AccuracyError(
            f"{Path(str(comparison.get('candidate'))).name} failed the comparison with "
            f"{Path(str(comparison.get('reference'))).name}: " + "; ".join(failures)
        )


def _describe_check(check: dict[str, Any]) -> str:
    return Check(**{k: check[k] for k in ("output", "metric", "value", "threshold", "passed", "why")}).describe()
