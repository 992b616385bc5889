"""What `compile` does with the `accuracy` section: check the quantized model, and where it misses the
target with `fallback: auto`, find the nodes to keep in float (`tao_qc.accuracy.search`).

The accuracy data is `accuracy.data`, else `compare.data`, else the calibration data (with a warning:
a model judged on the data it was calibrated on looks better than it is); which labels go with it,
and where the saved model's final measure runs, `tao_qc.spec.datasets` decides. It is written once
to the work folder as one .npz, so every worker reads the same arrays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.accuracy.corrections import RestoreFloatWeights, correction_specs
from tao_qc.accuracy.executors import make_executor
from tao_qc.accuracy.metrics import target_for
from tao_qc.accuracy.search import FallbackResult, fallback_reason, search_fallback
from tao_qc.accuracy.trials import TrialResult, TrialRunner, TrialSetup
from tao_qc.console import progress
from tao_qc.data import model_inputs, open_inputs
from tao_qc.evaluate.latency import BenchTable
from tao_qc.evaluate.results import ComparisonResult, checks_in_words
from tao_qc.passes import correction_passes, placement_cpu
from tao_qc.passes.choose_ranges import ChooseRanges
from tao_qc.spec import QuantizeSpec
from tao_qc.spec.datasets import DataSet, accuracy_data_set, measures

log = logging.getLogger("tao_qc.accuracy")


@dataclass
class AccuracyData:
    batches: Any  # InputBatches
    key: str  # the spec key it came from
    labels: Path | None
    is_calibration_data: bool


def needs_held_back_data(spec: QuantizeSpec) -> bool:
    """Whether accuracy would be judged on the calibration data unless some of it is held back.
    Labels given without data of their own follow the calibration samples one to one: then nothing
    is held back."""
    accuracy = spec.accuracy
    return (accuracy.data is None and spec.compare.data is None
            and accuracy.labels is None and spec.compare.labels is None)


def accuracy_data(spec: QuantizeSpec, source: Path, calibration: Any, held_back: Any = None) -> AccuracyData:
    """The accuracy data and its labels (`tao_qc.spec.datasets.accuracy_data_set` says which)."""
    chosen = accuracy_data_set(spec)
    labels = Path(chosen.labels) if chosen.labels else None
    if chosen.data is not None:
        return AccuracyData(_open(spec, source, chosen), chosen.key, labels, False)
    if held_back is not None:
        return AccuracyData(held_back, chosen.key, None, False)
    return AccuracyData(calibration, chosen.key, labels, True)


def _open(spec: QuantizeSpec, source: Path, chosen: DataSet) -> Any:
    import onnx

    inputs = model_inputs(onnx.load(str(source), load_external_data=False))
    limit = spec.calibration.max_samples if chosen.data == "random" else None
    return open_inputs(chosen.data, inputs, calibration=spec.calibration, key=chosen.key,
                       max_samples=limit if limit is not None else 1 << 62)


def write_arrays(batches: Any, path: Path) -> Path:
    """Every sample of `batches` into one .npz (input name -> array, samples first)."""
    arrays: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, array in batch.items():
            arrays.setdefault(name, []).append(np.asarray(array))
    np.savez(path, **{name: np.concatenate(parts) for name, parts in arrays.items()})
    return path


def write_labels(labels: Path, path: Path) -> Path:
    """Labels as a plain .npy (integer classes, or whatever a user metric reads: texts, boxes)."""
    if labels.suffix == ".npz":
        with np.load(labels, allow_pickle=False) as npz:
            names = list(npz.files)
            array = npz["labels"] if "labels" in names else npz[names[0]]
    else:
        array = np.load(labels, allow_pickle=False)
    np.save(path, array)
    return path


def run_fallback(setup: TrialSetup, spec: QuantizeSpec, candidates: list[tuple[str, str]], folder: Path,
                 quantized: TrialResult | None = None) -> FallbackResult:
    """The search, on the executor `spec.accuracy` asks for, with progress on stderr."""
    target = target_for(spec, setup.search_path)
    executor = make_executor(setup, spec.accuracy, folder, trials=len(candidates) + 1)
    log.info("accuracy fallback: ranking %d nodes on %s (%d worker%s)", len(candidates), executor.name,
             executor.workers, "s" if executor.workers > 1 else "")
    try:
        result = search_fallback(executor, target, candidates, max_float_fraction=spec.accuracy.max_float_fraction,
                                 ranking_samples=spec.accuracy.ranking_samples, progress=progress, quantized=quantized)
        result.executor, result.workers = executor.name, executor.workers
        return result
    finally:
        executor.close()


@dataclass
class AccuracyOutcome:
    """The check of the quantized model, what fallback tried, and the figures the report shows."""

    target: Any  # Target
    data: AccuracyData
    fp32_value: float | None
    quantized_value: float | None  # every selected node quantized (None where the comparison was the check)
    met: bool
    via: str  # "comparison" (its own checks on the same data) or the metric's name
    fallback: str  # auto | off
    clipping: dict[str, Any] | None = None  # the clip step: activation ranges clipped at a percentile
    steps: list[dict[str, Any]] = field(default_factory=list)  # each step before float, with the metric after it
    result: FallbackResult | None = None  # the second: nodes kept in float
    rebuild: CalibratedGraph | None = None  # the graph the saved model is to be finished from
    keep_float: dict[str, str] | None = None
    speed_before: float | None = None
    speed_after: float | None = None
    final: dict[str, Any] | None = None  # the metric on the comparison data, for the saved model
    # With calibration.corrections, where the target was missed: the metric with them taken back out.
    without_calibration_corrections: float | None = None
    warnings: list[str] = field(default_factory=list)  # for report.json's warnings
    # With no metric: the checks of the model with every selected node quantized, named with values and floors.
    quantized_in_words: str | None = None

    def after_rebuild(self, before: BenchTable | None, after: BenchTable | None) -> None:
        """The speed against FP32 of the first model and of the rebuilt one (compile's latency tables)."""
        self.speed_before = before.speed_against_first() if before is not None else None
        self.speed_after = after.speed_against_first() if after is not None else None

    @property
    def metric_decides(self) -> bool:
        """Whether the task metric was measured on the saved model (then it decides, not the default checks)."""
        return self.final is not None

    def failures(self) -> list[str]:
        """What of this outcome fails the run: a missed metric, or fallback that ran out of float nodes."""
        failures = []
        if self.result is not None and not self.reached and self.result.sensitivity is not None:
            stopped = (f"; more float nodes moved the checks by no more than their noise (+-{self.result.proxy_noise:.2g} "
                       f"over resamples of the data)" if self.result.stopped_moving is not None else "")
            missed = "fails a check" if self.target.name == "checks" else f"misses {self._target_text()}"
            failures.append(f"accuracy fallback kept {len(self.result.kept_float)} nodes in float (at most "
                            f"{self.result.limit} allowed by max_float_fraction) and still {missed}{stopped}; "
                            "the best model found is kept")
        if self.final and self.final.get("met") is False:
            failures.append(f"{self.final['metric']} {self.final['value']:.5g} on the comparison data misses {self.final['target']}")
        return failures

    @property
    def reached(self) -> bool:
        return (self.met or bool(self.clipping and self.clipping["met"]) or any(s["met"] for s in self.steps)
                or bool(self.result and self.result.reached))

    def _target_text(self) -> str:
        return self.target.describe(self.fp32_value) if self.fp32_value is not None else "the comparison's checks"

    def section(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.target.name,
            "target": self._target_text(),
            "data": self.data.batches.describe(),
            "data_key": self.data.key,
            "judged_on_calibration_data": self.data.is_calibration_data,
            "fp32": self.fp32_value,
            "quantized": self.quantized_value,
            "quantized_in_words": self.quantized_in_words,
            "met_before_fallback": self.met,
            "checked_by": self.via,
            "fallback": self.fallback,
            "ran": self.clipping is not None or bool(self.steps) or self.result is not None,
            "reached": self.reached,
            "clipping": self.clipping,
            "steps": self.steps,
            "speed_before": self.speed_before,
            "speed_after": self.speed_after,
            "final": self.final,
            "without_calibration_corrections": self.without_calibration_corrections,
        }
        if self.result is not None:
            out["search"] = self.result.to_dict()
            out["kept_float"] = out["search"]["kept_float"]
        return out


class TrialSetups:
    """Trial setups for several calibrated graphs over one accuracy data set, written to disk once."""

    def __init__(self, spec: QuantizeSpec, source: Path, data: AccuracyData, folder: Path):
        self.spec, self.source, self.data, self.folder = spec, source, data, folder
        self.search_path = str(Path(spec.source).parent) if spec.source else None
        self.arrays: dict[str, Path | None] = {}
        self._runner: TrialRunner | None = None

    def runner(self, graph: CalibratedGraph) -> TrialRunner:
        """A runner for `graph` in this process; FP32's outputs on the accuracy data are run once for
        every graph measured (each step's candidate, with and without corrections)."""
        if self._runner is None:
            self._runner = TrialRunner(self(graph))
            return self._runner
        return self._runner.on(self(graph))

    def __call__(self, graph: CalibratedGraph) -> TrialSetup:
        if not self.arrays:
            self.arrays["data"] = write_arrays(self.data.batches, self.folder / "accuracy.npz")
            self.arrays["labels"] = write_labels(self.data.labels, self.folder / "labels.npy") if self.data.labels else None
        return TrialSetup(graph.path, graph.facts, self.spec, self.source, self.arrays["data"],
                          self.data.batches.batch_size, self.arrays["labels"], self.search_path)


def quantized_candidates(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, op type) of every node the calibrated graph quantizes: the compute nodes in graph
    order, then the elementwise nodes quantized between them for ONNX Runtime's integer kernels
    (Add, Mul, pools: a requantization there can be what costs the accuracy)."""
    declined = facts.get("declined") or {}
    compute = [(d.unit.name, d.unit.type) for d in facts.get("decisions") or [] if d.quantized and d.unit.name not in declined]
    return compute + [tuple(pair) for pair in facts.get("elementwise_quantized") or []]


def check_accuracy(spec: QuantizeSpec, source: Path, ctx: Any, calibrated: CalibratedGraph,
                   comparison: ComparisonResult | None) -> AccuracyOutcome:
    """Check the quantized model against `spec.accuracy`'s target; where it misses with `fallback:
    auto`, run `accuracy.steps` in order: by default clip the activation ranges (one pass over the
    calibration data), then search the nodes to keep in float; `ranges` and `corrections` try per-tensor
    ranges and weight corrections, every node still INT8, before `float`. `comparison`: that of the
    fully quantized model (None where none ran)."""
    search_path = str(Path(spec.source).parent) if spec.source else None
    target = target_for(spec, search_path)
    data = accuracy_data(spec, source, ctx.calibration, ctx.held_back)
    accuracy = spec.accuracy
    setup = TrialSetups(spec, source, data, calibrated.folder)

    quantized: TrialResult | None = None
    # The comparison that just ran is the check when the target is its own checks on the same data.
    if accuracy.metric is None and data.key != "quantize.accuracy.data":
        outcome = AccuracyOutcome(target, data, None, None, comparison is not None and comparison.passed, "comparison", accuracy.fallback)
    else:
        runner = setup.runner(calibrated)
        quantized = runner.run({})
        outcome = AccuracyOutcome(target, data, runner.fp32_value, quantized.value,
                                  target.met(quantized.value, runner.fp32_value), target.name, accuracy.fallback)
        if not outcome.met and spec.calibration.corrections and calibrated.facts.get("corrections"):
            _measure_without_calibration_corrections(spec, ctx, calibrated, setup, outcome)
    if outcome.met:
        log.info("accuracy: %s met by the quantized model (%s)", outcome.via if outcome.via != "comparison" else
                 "the comparison's checks", data.batches.describe())
        if accuracy.fallback == "auto" and "clip" in accuracy.steps:
            _ranges_where_they_measure_better(spec, ctx, calibrated, setup, target, outcome, quantized)
        return outcome
    if accuracy.fallback == "off":
        return outcome
    if data.is_calibration_data:
        log.warning("accuracy fallback judges on the calibration data (no quantize.accuracy.data or compare.data): "
                    "a model measured on the data it was calibrated on looks better than it is; give held-out data")

    base, quantized = _steps_before_float(spec, ctx, calibrated, setup, target, outcome, quantized)
    if outcome.rebuild is not None:
        return outcome
    if "float" not in accuracy.steps:
        outcome.rebuild = base if base is not calibrated else None
        return outcome

    outcome.result = run_fallback(setup(base), spec, quantized_candidates(base.facts), calibrated.folder, quantized=quantized)
    if outcome.fp32_value is None:
        outcome.fp32_value = outcome.result.fp32_value
    if outcome.result.sensitivity is not None:
        outcome.keep_float = {name: fallback_reason(name, outcome.result.sensitivity, target.name)
                              for name in outcome.result.kept_float}
    if outcome.keep_float and base.facts.get("float_weights"):
        base = base.transformed(ctx, [RestoreFloatWeights(set(outcome.keep_float))], "restored")
    outcome.rebuild = base if (outcome.keep_float or base is not calibrated) else None
    return outcome


def _steps_before_float(spec: QuantizeSpec, ctx: Any, calibrated: CalibratedGraph, setup: Any, target: Any,
                        outcome: AccuracyOutcome, quantized: TrialResult | None) -> tuple[CalibratedGraph, TrialResult | None]:
    """`accuracy.steps` up to `float`, in order: each builds a candidate from the best graph so far
    (`clip`: ranges clipped at a percentile; `ranges`: each activation's range chosen by its
    consumers' error; `corrections`: AdaRound and bias correction), measures it on the accuracy data,
    keeps it where it measures better, and ends the search where it meets the target (every node
    still INT8). Returns the graph the float search starts from, and its measurement."""
    base = calibrated
    for step in [s for s in spec.accuracy.steps if s != "float"]:
        if step == "clip" and "clipped_percentile" in base.facts and not _grids_to_choose(spec, base):
            continue
        if step == "ranges" and base.facts.get("ranges_chosen"):
            continue
        if step == "corrections" and base.facts.get("corrections"):
            continue
        if quantized is None:  # the comparison was the check: the same target in the metric's own terms
            quantized = setup.runner(calibrated).run({})
        started = time.perf_counter()
        details: dict[str, Any] = {}
        # Corrections are fitted to the ranges they were measured with: a step that changes ranges
        # starts from the float weights, and fits the same corrections again on its new ranges only
        # where they are needed and measure better (_corrections_on_new_ranges).
        refit = step in ("clip", "ranges") and bool(base.facts.get("corrections"))
        start = _uncorrected(ctx, base) if refit else base
        if step == "clip":
            best = _best_range_choice(setup, range_choices(spec, ctx, start, setup.data,
                                                           clip="clipped_percentile" not in start.facts),
                                      until_met=target)
            if best is None:
                continue
            candidate, result, details = best
        elif step == "ranges":
            candidate = start.transformed(ctx, [ChooseRanges(force=True)], "ranges")
            choices = candidate.facts.get("range_choices") or {}
            details = {"chosen": {m: sum(1 for c in choices.values() if c["method"] == m)
                                  for m in dict.fromkeys(c["method"] for c in choices.values())}}
        else:
            specs = correction_specs(spec)
            candidate = base.transformed(ctx, correction_passes(specs, cpu=placement_cpu(spec)), "corrections")
            details = {"corrections": [c.method for c in specs],
                       "nodes": sum(len(c.get("nodes") or []) for c in candidate.facts.get("corrections") or [])}
        prepared = time.perf_counter() - started
        runner = setup.runner(candidate)
        if step != "clip":  # the clip step measured its choices already
            result = runner.run({})
        if refit:
            candidate, result = _corrections_on_new_ranges(spec, ctx, step, candidate, result, runner.fp32_value,
                                                           setup, target, details, outcome)
        if outcome.fp32_value is None:
            outcome.fp32_value = runner.fp32_value
            outcome.quantized_value = quantized.value
        met = target.met(result.value, runner.fp32_value)
        better = result.value > quantized.value
        in_words = progress_in_words(target, quantized, result, runner.fp32_value)
        record = {"step": step, "value": result.value, "before": quantized.value, "met": met, "kept": met or better,
                  "in_words": in_words, "seconds": round(time.perf_counter() - started, 3),
                  "prepare_seconds": round(prepared, 3), **details}
        outcome.steps.append(record)
        if outcome.quantized_in_words is None:
            outcome.quantized_in_words = checks_in_words(quantized.checks) or None
        if step == "clip":
            outcome.clipping = {**_clipping_record(details), "value": result.value, "met": met, "kept": met or better,
                                "in_words": in_words}
        log.info("accuracy fallback, step %s: %s (%s%s)", step, in_words,
                 "target met" if met else "target missed",
                 "" if met else ", better: kept" if better else ", not better: not kept")
        if met:
            outcome.rebuild = candidate
            return candidate, result
        if better:
            base, quantized = candidate, result
    return base, quantized  # None where no step ran and the comparison was the check: the search measures it


def progress_in_words(target: Any, before: TrialResult, after: TrialResult, fp32_value: float) -> str:
    """`position top-1 0.79 -> 0.82 (needs 0.95)`: the checks by name where they are the target (never
    their margin, a number in no unit a user knows), else the metric with its target."""
    if after.checks:
        return checks_in_words(after.checks, before.checks)
    return f"{target.name} {before.value:.5g} -> {after.value:.5g} (needs {target.threshold(fp32_value):.5g})"


def _ranges_where_they_measure_better(spec: QuantizeSpec, ctx: Any, calibrated: CalibratedGraph, setup: TrialSetups,
                                     target: Any, outcome: AccuracyOutcome, quantized: TrialResult | None) -> None:
    """The range choice a default run makes even where the target is met: max ranges pass a proxy
    check while costing the task what clipped ones keep (a DB text detector: minmax passed its map
    check at 2 points of CER, ranges clipped at the 99.9th percentile cost 0.06), and the data's own
    bounds can cost where unseen data goes past them. So the clip step's choices (`range_choices`)
    are measured once more (one pass over the calibration data, one measure each on the accuracy
    data), and the best is kept where it measures better and still meets the target. Nothing runs
    where corrections were fitted to these ranges; clipping is not tried where the user chose the
    ranges (`percentile`, `auto`)."""
    if calibrated.facts.get("corrections"):
        return
    user_chose = "clipped_percentile" in calibrated.facts or bool(calibrated.facts.get("ranges_chosen"))
    started = time.perf_counter()
    best = _best_range_choice(setup, range_choices(spec, ctx, calibrated, setup.data, clip=not user_chose))
    if best is None:
        return
    if quantized is None:  # the comparison was the check: the same target in the metric's own terms
        quantized = setup.runner(calibrated).run({})
    candidate, result, details = best
    fp32_value = setup.runner(candidate).fp32_value
    met = target.met(result.value, fp32_value)
    better = met and result.value > quantized.value
    if outcome.fp32_value is None:
        outcome.fp32_value = fp32_value
        outcome.quantized_value = quantized.value
    in_words = progress_in_words(target, quantized, result, fp32_value)
    if outcome.quantized_in_words is None:
        outcome.quantized_in_words = checks_in_words(quantized.checks) or None
    outcome.steps.append({"step": "clip", "value": result.value, "before": quantized.value, "met": met, "kept": better,
                          "while_met": True, "in_words": in_words, "seconds": round(time.perf_counter() - started, 3),
                          **details})
    outcome.clipping = {**_clipping_record(details), "value": result.value, "met": met, "kept": better,
                        "while_met": True, "in_words": in_words}
    log.info("accuracy: %s, tried though the target is met: %s (%s)", details["chosen"], in_words,
             "better: kept" if better else "not better: the calibrated ranges kept")
    if better:
        outcome.rebuild = candidate


@dataclass
class RangeChoice:
    label: str  # what a person reads: "ranges clipped at the 99.9th percentile, symmetric grids"
    graph: CalibratedGraph
    percentile: float | None = None  # where clipped
    narrowed: int = 0
    grids: str = "calibrated"  # calibrated (the data's bounds) | symmetric | per tensor


def range_choices(spec: QuantizeSpec, ctx: Any, graph: CalibratedGraph, data: AccuracyData, *,
                  clip: bool) -> Iterator[RangeChoice]:
    """The range choices the clip step measures against `graph`'s own, in the order it prefers them,
    each built only when asked for: `graph`'s ranges clipped at `calibration.percentile` (one pass over
    the calibration data; where `clip` and any range narrows); with `onnxruntime.activation_ranges:
    auto`, `graph` and the clipped one on symmetric grids, then on grids chosen per tensor on the
    accuracy data `data` (one pass over it; where that mixes both kinds, and `data` is not the
    calibration data, whose values lie within their own bounds). Each range set on every grid,
    because neither decides alone: on FastestDet for AVX2, symmetric grids measured worse than the
    data's bounds unclipped (mAP@.5 0.707 against 0.721) and better clipped (0.749 against 0.499),
    and only from there did keeping one node float meet the target."""
    sets = [RangeChoice("calibrated ranges", graph)]
    if clip:
        percentile = spec.calibration.percentile
        clipped, narrowed = graph.clipped(ctx, percentile)
        if narrowed:
            sets.append(RangeChoice(f"ranges clipped at the {percentile:g}th percentile", clipped, percentile, narrowed))
            yield sets[-1]
    if not _grids_to_choose(spec, graph):
        return
    for choice in sets:
        symmetric = choice.graph.on_symmetric_grids()
        if symmetric is not None:
            yield RangeChoice(f"{choice.label}, symmetric grids", symmetric, choice.percentile, choice.narrowed,
                              grids="symmetric")
    if data.is_calibration_data:
        return
    for choice in sets:
        per_tensor = choice.graph.with_grids_chosen_on(ctx, data.batches)
        if per_tensor is not None:
            count = len(per_tensor.facts["grids_chosen"]["symmetric"])
            yield RangeChoice(f"{choice.label}, {count} grid{'s' if count > 1 else ''} symmetric where the accuracy "
                              "data says so", per_tensor, choice.percentile, choice.narrowed, grids="per tensor")


def _grids_to_choose(spec: QuantizeSpec, graph: CalibratedGraph) -> bool:
    """Whether the clip step measures other grids for `graph`: `activation_ranges: auto`, and grids over
    the data's bounds to compare them with."""
    return (spec.target == "onnxruntime" and spec.onnxruntime.activation_ranges == "auto"
            and bool(graph.facts.get("activation_bounds")))


def _best_range_choice(setup: TrialSetups, choices: Iterator[RangeChoice], *, until_met: Any = None
                       ) -> tuple[CalibratedGraph, TrialResult, dict[str, Any]] | None:
    """Each choice measured on the accuracy data, in order; the best (the first of equals), and what the
    report says of it; None where there was no choice. `until_met` (a target): the first choice that
    meets it ends the measuring, as the first step that meets it ends fallback's ladder: choices
    that differ by a few samples' noise are not a reason to go past the one preferred."""
    measured: list[tuple[RangeChoice, TrialResult]] = []
    for choice in choices:
        runner = setup.runner(choice.graph)
        measured.append((choice, runner.run({})))
        if until_met is not None and until_met.met(measured[-1][1].value, runner.fp32_value):
            break
    if not measured:
        return None
    best, result = max(measured, key=lambda pair: pair[1].value)  # max keeps the first of equals
    details = {"chosen": best.label, "percentile": best.percentile, "ranges_clipped": best.narrowed,
               "grids": best.grids, "tried": {choice.label: trial.value for choice, trial in measured}}
    return best.graph, result, details


def _clipping_record(details: dict[str, Any]) -> dict[str, Any]:
    return {key: details[key] for key in ("chosen", "percentile", "ranges_clipped", "grids", "tried")}


def _corrections_on_new_ranges(spec: QuantizeSpec, ctx: Any, step: str, uncorrected: CalibratedGraph,
                               without: TrialResult, fp32_value: float, setup: TrialSetups, target: Any,
                               details: dict[str, Any], outcome: AccuracyOutcome) -> tuple[CalibratedGraph, TrialResult]:
    """A range step on a graph that carried corrections, measured first without them (`without`):
    ranges before corrections, as in the ladder. Where the new ranges meet the target alone the
    corrections are not needed; else they are fitted again on the new ranges and measured, not
    trusted (a mean shift or a rounding that fits the calibration data can cost the task more than
    it gives back), and kept only where they measure better. Either way the report says which."""
    methods = [c.method for c in correction_specs(spec)]
    details["without_corrections"] = without.value
    if target.met(without.value, fp32_value):
        details["corrections_dropped"] = methods
        outcome.warnings.append(f"accuracy step {step} met the target without {', '.join(methods)} ({target.name} "
                                f"{without.value:.5g}), so the saved model carries no correction")
        log.info("accuracy step %s: %s", step, outcome.warnings[-1])
        return uncorrected, without
    corrected = uncorrected.transformed(ctx, correction_passes(correction_specs(spec), cpu=placement_cpu(spec)),
                                        f"{step}-corrected")
    fitted = setup.runner(corrected).run({})
    if fitted.value >= without.value:
        details["corrections_refitted"] = methods
        return corrected, fitted
    details["corrections_dropped"] = methods
    details["with_corrections"] = fitted.value
    warning = (f"accuracy step {step}: {', '.join(methods)} lowered {target.name} from {without.value:.5g} to "
               f"{fitted.value:.5g} once fitted on the new ranges, so the step goes on without them")
    log.warning(warning)
    outcome.warnings.append(warning)
    return uncorrected, without


def _measure_without_calibration_corrections(spec: QuantizeSpec, ctx: Any, calibrated: CalibratedGraph,
                                             setup: TrialSetups, outcome: AccuracyOutcome) -> None:
    """`calibration.corrections` apply whatever they do to the task (the user asked for them); where the
    model misses its target, one more trial says whether they cost accuracy, so the report can say so
    (fallback's `corrections` step, by contrast, keeps them only where they measure better)."""
    without = setup.runner(_uncorrected(ctx, calibrated)).run({}).value
    outcome.without_calibration_corrections = without
    if without > outcome.quantized_value:
        methods = ", ".join(c.method for c in spec.calibration.corrections)
        warning = (f"calibration.corrections ({methods}) lowered {outcome.target.name} on {outcome.data.key} from "
                   f"{without:.5g} to {outcome.quantized_value:.5g}; remove them, or list `corrections` in "
                   "accuracy.steps instead, which keeps them only where they measure better")
        log.warning(warning)
        outcome.warnings.append(warning)


def _uncorrected(ctx: Any, graph: CalibratedGraph) -> CalibratedGraph:
    """`graph` with every weight and bias a correction changed back to its float value, and no
    correction on record (those fitted again after are the ones the report shows)."""
    uncorrected = graph.transformed(ctx, [RestoreFloatWeights()], "uncorrected")
    uncorrected.facts["corrections"] = []
    return uncorrected


def measure_model(spec: QuantizeSpec, source: Path, model: Path, calibration: Any, folder: Path, target: Any,
                  held_back: Any = None) -> dict[str, Any]:
    """`target`'s metric for `model` against FP32 on the data `tao_qc.spec.datasets.measures` gives
    the final measure: the comparison data where it can feed the metric, else the accuracy data, with
    a note saying so. `calibration` / `held_back`: the calibration data and the part held back from it."""
    plan = measures(spec)
    chosen = plan.final or plan.comparison
    if chosen.data is not None:
        batches = _open(spec, source, chosen)
    else:
        batches = held_back if held_back is not None else calibration  # held back only where no labels are given
    labels = write_labels(Path(chosen.labels), folder / "final-labels.npy") if chosen.labels else None
    setup = TrialSetup(model, {}, spec, source, write_arrays(batches, folder / "final.npz"), batches.batch_size, labels,
                       str(Path(spec.source).parent) if spec.source else None)
    runner = TrialRunner(setup)
    value = runner.measure(model)
    return {"data": f"{batches.describe()} ({chosen.key})", "data_key": chosen.key, "labels_key": chosen.labels_key,
            "note": plan.final_note if chosen is plan.final else None, "metric": target.name,
            "fp32": runner.fp32_value, "value": value, "target": target.describe(runner.fp32_value),
            "met": target.met(value, runner.fp32_value)}
