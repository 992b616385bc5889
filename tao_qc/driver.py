"""`compile_model`: an ONNX model and a quantize spec in, a quantized ONNX model and its report out.

    spec -> load-and-check -> canonicalize -> match-layers -> check-calibration -> quantize
         -> [placement for the target] -> verify -> <stem>.int8.onnx + report.json (+ pass dumps)

Everything is written into a staging folder that replaces `results_dir` only when the whole run
succeeded (`tao_qc.fileio.staged_dir`): a failed or interrupted run leaves the previous results or
nothing, never a half-written set. The input model is only read.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.accuracy.fallback import AccuracyOutcome, check_accuracy, measure_model, needs_held_back_data
from tao_qc.accuracy.sensitivity import rank_sensitivity
from tao_qc.data import load_labels, model_inputs, open_inputs
from tao_qc.errors import AccuracyError, InputError
from tao_qc.evaluate.compare import evaluate_quantized
from tao_qc.evaluate.kernel_fidelity import check_kernel_fidelity
from tao_qc.evaluate.evaluation import Evaluation
from tao_qc.evaluate.latency import BenchTable
from tao_qc.fileio import atomic_write_text, staged_dir
from tao_qc.frontends.lower_to_onnx import lower_pytorch_file
from tao_qc.ir.model_fields import stamp
from tao_qc.passes import calibrating_passes, default_passes, finishing_passes
from tao_qc.passes.quantize_modelopt import ModelOptProcess
from tao_qc.pipeline import (
    DUMP_MODES,
    DumpInstrument,
    PassContext,
    PassRecord,
    Pipeline,
    PipelineResult,
    save_model,
)
from tao_qc.report.build import build_report
from tao_qc.report.html import write_html_report
from tao_qc.report.pictures import sensitivity_html
from tao_qc.spec import QuantizeSpec, load_spec
from tao_qc.spec.cpu import resolve as resolve_cpu
from tao_qc.spec.cpu import this_machine
from tao_qc.spec.datasets import comparison_data_set, measures
from tao_qc.speed.float_where_faster import (
    SpeedCheck,
    effective_mode,
    search_float_classes,
    time_against_fp32,
)
from tao_qc.version import __version__

log = logging.getLogger("tao_qc.compile")

REPORT_NAME = "report.json"
HTML_REPORT_NAME = "report.html"
PASSES_DIR = "passes"
_SUFFIX = {"int8": "int8", "fp8": "fp8"}


@dataclass
class CompileResult:
    results_dir: Path  # the final folder
    model_path: Path  # the quantized model inside it
    report_path: Path
    report: dict[str, Any]
    records: list[PassRecord]
    decisions: list[Any]  # tao_qc.spec.selection.Decision, graph order
    spec: QuantizeSpec  # as the pipeline read it
    dump_dir: Path | None = None
    compare: bool = True  # whether the FP32-vs-quantized comparison step is asked for
    facts: dict[str, Any] = field(default_factory=dict)
    # What report.json's sections were made from (its model paths name the staging folder the results
    # were written in; the report's name where they ended up).
    evaluation: Evaluation = field(default_factory=Evaluation)

    @property
    def modelopt_seconds(self) -> float:
        return sum(r.seconds for r in self.records if r.name == "quantize-modelopt")

    @property
    def pipeline_seconds(self) -> float:
        return sum(r.seconds for r in self.records)


def default_results_dir(model_path: Path) -> Path:
    return Path.cwd() / f"{model_path.stem}.tao-qc"


def compile_model(
    model_path: str | Path | None,
    spec: Any = None,
    *,
    results_dir: str | Path | None = None,
    dump: str = "after-failure",
    dump_dir: str | Path | None = None,
    print_after: tuple[str, ...] | list[str] = (),
    calibration: Any = None,
    compare: bool = True,
    echo: Any = None,
    model_factory: str | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | None = None,
    raise_on_mismatch: bool = True,
) -> CompileResult:
    """Quantize the ONNX model at `model_path` (default: the spec's `model_path`) as `spec` says.

    spec: a QuantizeSpec, a spec file path, or a mapping (see `tao_qc.spec.load_spec`).
    results_dir: default the spec's `results_dir`, else `./<model stem>.tao-qc/`.
    dump: `after-all`, `after-change` or `after-failure` (pass dumps under `dump_dir`, default
    `results_dir/passes/`; a failure's reproducer goes to `<results_dir>.failed/`).
    print_after: pass names whose canonical text is printed (through `echo`, default print).
    calibration: an `InputBatches` to use instead of the spec's `calibration.data`.
    compare: run the FP32-vs-quantized comparison at the end (report sections, report.html; a failed
    check raises AccuracyError after the results are in place, unless `raise_on_mismatch` is False:
    then `raise_if_failed(result.evaluation, result.spec)` does it once the caller has shown the result).
    A model that is not `.onnx` is a PyTorch model (a checkpoint with `model_factory`, TorchScript or
    a `.pt2` program): it is lowered to `<stem>.fp32.onnx` in the results first, with input names and
    shapes from the calibration data (or `input_shape`), and that graph enters the pipeline.
    """
    spec = load_spec(spec if spec is not None else {}).for_onnx_pipeline()
    source, final = _check_inputs(model_path, spec, results_dir, dump, print_after)
    started = time.perf_counter()
    with staged_dir(final) as stage:
        dumps = DumpInstrument(Path(dump_dir) if dump_dir else stage / PASSES_DIR, dump, print_after, echo=echo,
                               failure_directory=Path(dump_dir) if dump_dir else final.with_name(f"{final.name}.failed"))
        stem = source.stem
        source = lower_if_pytorch(source, stage, spec, model_factory, factory_kwargs, input_shape)
        trials = compare and _may_need_trials(spec)
        by_speed = _places_by_speed(spec)
        ctx = new_context(spec, stage, source, calibration=calibration,
                          hold_back=trials and needs_held_back_data(spec))
        calibrated = calibrate(spec, source, ctx, [dumps])
        # Accuracy trials and the speed search start again from the calibrated graph: kept before
        # the finishing passes change it.
        searches = by_speed and effective_mode(spec.onnxruntime.speed) in ("search", "auto")
        snapshot = CalibratedGraph.take(calibrated.model, ctx, stage) if trials or searches else None
        finish = Finisher(spec, ctx, calibrated, dumps, stage, stem)
        records = finish(calibrated.model)
        search = speed_search_stage(spec, ctx, source, snapshot, finish) if searches else None
        if search is not None and search.float_for_speed:
            records = finish(snapshot.model())
        evaluation = compare_with_fp32(spec, source, finish.path, ctx) if compare else Evaluation()
        if trials:
            records, evaluation = accuracy_stage(spec, source, ctx, snapshot, finish, evaluation, records)
        if snapshot is not None:
            snapshot.discard()
        # Timed last, on the model that is saved (accuracy fallback may have rebuilt it).
        evaluation.speed = speed_check_stage(spec, ctx, source, finish, search) if by_speed else None
        # A PyTorch model's lowered graph is written into the stage: the report names where it ends up.
        shown_source = Path(_relocated(str(source), str(stage), str(final)))
        report = write_report(stage, spec, shown_source, final / finish.path.name, records, ctx, evaluation,
                              time.perf_counter() - started, html=compare, relocate=(str(stage), str(final)))

    log.info("quantized model: %s", final / finish.path.name)
    if raise_on_mismatch:
        # Results stay on disk either way: a failed check is what the report is for.
        raise_if_failed(evaluation, spec)
    return CompileResult(
        results_dir=final,
        model_path=final / finish.path.name,
        report_path=final / REPORT_NAME,
        report=report,
        records=records,
        decisions=list(ctx.facts.get("decisions") or []),
        spec=spec,
        dump_dir=(Path(dump_dir) if dump_dir else final / PASSES_DIR),
        compare=compare,
        facts={k: v for k, v in ctx.facts.items() if k != "decisions"},
        evaluation=evaluation,
    )


# ---------------------------------------------------------------------------------------------
# The stages, in the order compile runs them (sensitivity shares the first ones)


def _check_inputs(model_path: str | Path | None, spec: QuantizeSpec, results_dir: str | Path | None, dump: str,
                  print_after: tuple[str, ...] | list[str]) -> tuple[Path, Path]:
    """The model and the results folder, checked before anything runs."""
    source = Path(model_path or spec.model_path or "")
    if not str(source) or str(source) == ".":
        raise InputError("no model given (pass MODEL on the command line or set quantize.model_path)")
    source = source.expanduser().resolve()
    if not source.exists():
        raise InputError(f"model {source} does not exist")
    if dump not in DUMP_MODES:
        raise InputError(f"--dump-passes: '{dump}' is not a dump mode (valid: {', '.join(DUMP_MODES)})")
    final = Path(results_dir or spec.results_dir or default_results_dir(source)).expanduser().resolve()
    _check_results_dir(final, source)
    known = set(_pass_names(spec))
    unknown = [name for name in print_after if name not in known]
    if unknown:
        raise InputError(f"--print-after: no pass named {', '.join(unknown)} (passes: {', '.join(_pass_names(spec))})")
    return source, final


def lower_if_pytorch(source: Path, stage: Path, spec: QuantizeSpec, factory: str | None,
                     factory_kwargs: dict[str, Any] | None, input_shape: tuple[int, ...] | None) -> Path:
    """The ONNX graph the pipeline starts from: the model itself, or a PyTorch model lowered into the stage."""
    if source.suffix.lower() == ".onnx":
        return source
    target = stage / f"{source.stem}.fp32.onnx"
    log.info("lowering the PyTorch model %s to ONNX (%s)", source.name, target.name)
    return lower_pytorch_file(source, target, factory=factory, factory_kwargs=factory_kwargs,
                              data=spec.calibration.data, calibration=spec.calibration,
                              input_shape=input_shape, dynamic_batch=True)


def new_context(spec: QuantizeSpec, stage: Path, source: Path, *, calibration: Any = None,
                hold_back: bool = False) -> PassContext:
    """The passes' context for one run into `stage`; `hold_back`: keep calibration samples out to judge accuracy on."""
    ctx = PassContext(spec=spec, work_dir=stage, source_path=source, calibration=calibration)
    ctx.facts["hold_back_for_accuracy"] = hold_back
    return ctx


def calibrate(spec: QuantizeSpec, source: Path, ctx: PassContext, instruments: list | None = None) -> PipelineResult:
    """The calibrating passes (load, canonicalize, match, calibrate, quantize): the calibrated graph."""
    pipeline = Pipeline(calibrating_passes(spec, source_path=source), list(instruments or []))
    ctx.facts["modelopt_process"] = _prestart_modelopt(pipeline)
    try:
        return pipeline.run(None, ctx)
    finally:
        process = ctx.facts.pop("modelopt_process", None)
        if process is not None:
            process.close()


class Finisher:
    """The finishing passes (keep-float, dtypes, placement, verify) from a calibrated graph, saved
    as `path`. Run once, and again when the accuracy search settles on a graph with nodes kept in
    float: the second run's dumps diff against the calibrated graph as the first run's did."""

    def __init__(self, spec: QuantizeSpec, ctx: PassContext, calibrated: PipelineResult, dumps: DumpInstrument,
                 folder: Path, stem: str):
        self.spec, self.ctx, self.calibrated, self.dumps = spec, ctx, calibrated, dumps
        self.folder, self.stem = folder, stem
        self.path: Path | None = None  # named by the first run's mode (`<stem>.int8.onnx`, `.fp8.onnx`)
        self.pipeline = Pipeline(finishing_passes(spec), [dumps])
        self.dump_state = (dumps.previous_text, dumps.previous_name)

    def __call__(self, model: Any) -> list[PassRecord]:
        self.dumps.previous_text, self.dumps.previous_name = self.dump_state
        finished = self.pipeline.run(model, self.ctx, after=self.calibrated.records)
        if self.path is None:
            mode = self.ctx.facts.get("quantize_mode", "int8")
            self.path = self.folder / f"{self.stem}.{_SUFFIX.get(mode, mode)}.onnx"
        _save(finished.model, self.path, self.spec)
        return self.calibrated.records + finished.records


def accuracy_stage(spec: QuantizeSpec, source: Path, ctx: PassContext, snapshot: CalibratedGraph, finish: Finisher,
                   evaluation: Evaluation, records: list[PassRecord]) -> tuple[list[PassRecord], Evaluation]:
    """The accuracy check (`accuracy.metric`, fallback): where the search keeps nodes in float, the
    rebuild from the calibrated graph (finishing passes, save, compare) replaces the first model."""
    outcome = check_accuracy(spec, source, ctx, snapshot, evaluation.comparison)
    if outcome.rebuild is not None:
        ctx.facts = outcome.rebuild.facts_with(outcome.keep_float or {})
        records = finish(outcome.rebuild.model())
        before = evaluation
        evaluation = compare_with_fp32(spec, source, finish.path, ctx)
        outcome.after_rebuild(before.latency, evaluation.latency)
    outcome.final = _final_metric(spec, source, finish.path, ctx, snapshot.folder, outcome)
    evaluation.accuracy = outcome
    return records, evaluation


def _times_on_this_cpu(spec: QuantizeSpec, ctx: PassContext) -> str | None:
    """This machine's instruction set where timings on it speak for the model's target CPU; None
    where they would not (compiled for another CPU, or FP8, which ORT's CPU provider runs in float)."""
    target, here = resolve_cpu(spec.onnxruntime.cpu), this_machine()
    if ctx.facts.get("quantize_mode", "int8") != "int8":
        return None
    if target.isa != here.isa:
        log.info("speed: not measured (compiled for %s, this machine is %s)", target.isa, here.isa)
        return None
    return here.isa


def speed_search_stage(spec: QuantizeSpec, ctx: PassContext, source: Path, snapshot: CalibratedGraph,
                       finish: Finisher) -> SpeedCheck | None:
    """`speed: search` (and `auto`, where the model is not clearly faster than FP32): each class of
    quantized unit in float, timed against the finished model on this machine (tao_qc/speed). The classes that are faster become part of the calibrated graph's
    facts, so that the rebuild here and every accuracy trial after it keep them float."""
    isa = _times_on_this_cpu(spec, ctx)
    if isa is None:
        return None
    feeds = timing_feeds(ctx.calibration)
    mode = effective_mode(spec.onnxruntime.speed)
    log.info("speed: timing classes of quantized units in float on this CPU (%s, batch %s)%s", isa,
             " and ".join(map(str, feeds)), ", where the model is not clearly faster than FP32" if mode == "auto" else "")
    result = search_float_classes(spec, snapshot, finish.path, source, feeds, snapshot.folder, isa, mode=mode)
    if result.float_for_speed:
        snapshot.facts["float_for_speed"] = result.float_for_speed
        ctx.facts = snapshot.facts_with({})
    return result


def speed_check_stage(spec: QuantizeSpec, ctx: PassContext, source: Path, finish: Finisher,
                      search: SpeedCheck | None) -> SpeedCheck | None:
    """The saved model against FP32 on this machine, and where it is slower, where the time goes."""
    isa = _times_on_this_cpu(spec, ctx)
    if isa is None:
        return None
    feeds = timing_feeds(ctx.calibration)
    log.info("speed: timing the quantized model against FP32 on this CPU (%s, batch %s)", isa, " and ".join(map(str, feeds)))
    return time_against_fp32(finish.path, source, feeds, isa, search)


# Speed is decided at batch 1 (a request at a time) and at the data's batch up to this size (a
# throughput job); larger batches only scale the same kernels.
TIMED_BATCH_LIMIT = 8


def timing_feeds(calibration: Any) -> dict[int, dict[str, Any]]:
    """Real samples to time on, per batch size: the first calibration batch and its first sample."""
    first = calibration.first()
    size = min(next(iter(first.values())).shape[0], TIMED_BATCH_LIMIT)
    return {batch: {name: array[:batch] for name, array in first.items()} for batch in sorted({1, size})}


def write_report(stage: Path, spec: QuantizeSpec, source: Path, output: Path, records: list[PassRecord],
                 ctx: PassContext, evaluation: Evaluation, seconds: float, *, html: bool,
                 relocate: tuple[str, str] | None = None) -> dict[str, Any]:
    """report.json (and report.html where the models were compared) into the stage; `relocate`:
    (staging folder, final folder), so that paths in the report name where the results end up."""
    report = build_report(spec, source, output, records, ctx, seconds)
    sections = evaluation.sections()
    report.update(_relocated(sections, *relocate) if relocate else sections)
    if sections:
        report["verdict"] = {"passed": not (failures := evaluation.failures()), "failures": failures,
                             "fails_run": spec.compare.fail_on_mismatch}
    report["warnings"] += evaluation.warnings()
    slower = slower_than_fp32(evaluation.latency, spec, evaluation.speed)
    if slower:
        log.warning(slower)
        report["warnings"].append(slower)
    atomic_write_text(stage / REPORT_NAME, json.dumps(report, indent=2, default=str) + "\n")
    if html:
        write_html_report(report, stage / HTML_REPORT_NAME)
    return report


def compare_with_fp32(spec: QuantizeSpec, source: Path, quantized: Path, ctx: PassContext) -> Evaluation:
    """FP32 (the user's model as given) against the quantized model on the spec's compare data
    (default: the calibration data), on the spec's compare runtime, and ORT's kernels against the
    graph's arithmetic where the target is ONNX Runtime."""
    import sys

    import onnx

    data = spec.compare.data
    if data is not None:
        inputs = model_inputs(onnx.load(str(source), load_external_data=False))
        limit = spec.calibration.max_samples if data == "random" else sys.maxsize
        batches = open_inputs(data, inputs, calibration=spec.calibration, max_samples=limit,
                              key="quantize.compare.data")
        batches.validate()
    else:
        batches = ctx.held_back if ctx.held_back is not None else ctx.calibration
    user_metric = spec.accuracy.metric is not None and ":" in spec.accuracy.metric
    chosen = comparison_data_set(spec)
    labels = load_labels(chosen.labels, key=chosen.labels_key, others=user_metric) if chosen.labels else None
    log.info("comparing FP32 and quantized on %s (%s)", spec.compare.runtime, batches.describe())
    evaluation = evaluate_quantized(source, quantized, batches, spec, labels)
    if spec.target == "onnxruntime" and spec.onnxruntime.kernel_fidelity and spec.compare.runtime == "onnxruntime":
        log.info("checking ONNX Runtime's integer kernels on this CPU against the graph's arithmetic")
        fidelity = check_kernel_fidelity(source, quantized, batches, spec.compare)
        # Compiled for a CPU whose kernels add weight pairs otherwise than this one's: this machine's
        # verdict is shown, but it says nothing about the CPU the model is for, so it fails nothing.
        fidelity.decides = resolve_cpu(spec.onnxruntime.cpu).pairs_saturate == this_machine().pairs_saturate
        evaluation.kernel_fidelity = fidelity
    return evaluation


# Well below 1: batch-1 timings of a few-millisecond model vary by a fifth from run to run on a busy
# machine (YuNet's INT8 model read 0.63x and 0.82x FP32 in two runs of the same benchmark).
SLOWER_THAN_FP32 = 0.8


def slower_than_fp32(latency: BenchTable | None, spec: QuantizeSpec, speed: SpeedCheck | None = None) -> str | None:
    """A warning when the quantized model runs slower than FP32 on the runtime it was placed for (a
    TensorRT graph timed on ONNX Runtime's CPU provider says nothing about its speed), with why and
    what to do; else None.

    `speed` (the speed section) timed both models in interleaved rounds, which a busy
    machine disturbs less than the latency table's one pass: where it is there, it decides."""
    here = this_machine()
    kernels = ("; without VNNI, ORT's integer kernels multiply in 16 bits and gain little over float"
               if here.pairs_saturate else "")
    fix = "deploy the FP32 model on this CPU, or quantize for size rather than speed; report.html shows where the time goes"
    if speed is not None and not speed.searched:
        fix = ("set quantize.onnxruntime.speed: search to keep in float the classes of units that run faster so, "
               f"{fix[0].lower()}{fix[1:]}")
    if speed is not None and speed.final_vs_fp32:
        if not speed.slower_than_fp32:
            return None
        at = ", ".join(f"{r:.2f}x at batch {b}" for b, r in speed.final_vs_fp32.items())
        why = f": {reason}" if (reason := speed.why_slower()) else ""
        return (f"the quantized model runs slower than FP32 on onnxruntime on this CPU ({here.isa}{kernels}): "
                f"{at} FP32's speed{why}; {fix}")
    if latency is None or spec.target != latency.runtime:
        return None
    for row in latency.rows[1:]:
        if row.ratio is not None and row.ratio < SLOWER_THAN_FP32:
            return (f"the quantized model runs slower than FP32 on {latency.runtime}: {row.ratio:.2f}x FP32's "
                    f"speed at batch {row.batch_size} on this CPU ({here.isa}{kernels}); quantization buys no speed for "
                    "this model on this runtime: see the latency in report.html")
    return None


def _places_by_speed(spec: QuantizeSpec) -> bool:
    return spec.target == "onnxruntime" and effective_mode(spec.onnxruntime.speed) != "off"


def _may_need_trials(spec: QuantizeSpec) -> bool:
    """Whether the accuracy check can need the calibrated graph again (a trial, or fallback)."""
    return spec.accuracy.fallback == "auto" or spec.accuracy.metric is not None


def _final_metric(spec: QuantizeSpec, source: Path, quantized: Path, ctx: PassContext, folder: Path,
                  outcome: AccuracyOutcome) -> dict | None:
    """The accuracy metric of the saved model (where a metric is set), on the data
    `tao_qc.spec.datasets.measures` chooses: the comparison data where it can feed the metric."""
    if spec.accuracy.metric is None:
        return None
    try:
        return measure_model(spec, source, quantized, ctx.calibration, folder, outcome.target, held_back=ctx.held_back)
    except Exception as exc:  # noqa: BLE001 - a user's metric may raise anything; the run's result stands
        # The report holds a sentence, never the exception: its text means nothing to the reader of
        # report.html, and the traceback is in the log at debug level (--debug).
        where = measures(spec).final
        log.debug("accuracy metric %s raised on %s", outcome.target.name, where.key if where else "the data", exc_info=True)
        sentence = (f"{outcome.target.name} could not be measured on {where.key if where else 'the comparison data'}: "
                    "the metric failed there (run with --debug for its error)")
        log.warning(sentence)
        return {"metric": outcome.target.name, "error": sentence, "met": None,
                "data_key": where.key if where else None}


def _relocated(value: Any, old: str, new: str) -> Any:
    """`value` with paths inside the staging folder pointing where the results end up."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, dict):  # keys too: the latency section names models by path
        return {_relocated(k, old, new): _relocated(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, old, new) for v in value]
    return value


def _prestart_modelopt(pipeline: Pipeline) -> Any:
    """Start modelopt's child process now, so its import overlaps the passes before quantization."""
    if "quantize-modelopt" not in pipeline.names:
        return None
    return ModelOptProcess()


def _pass_names(spec: QuantizeSpec) -> list[str]:
    return Pipeline(default_passes(spec)).names


def _check_results_dir(final: Path, source: Path) -> None:
    if final.exists() and not final.is_dir():
        raise InputError(f"results_dir {final} is a file, not a folder (give a folder path with -o/--output or quantize.results_dir)")
    if source == final or final in source.parents:
        raise InputError(f"results_dir {final} holds the input model; it is replaced as a whole on success, so give another folder")
    if final.is_dir() and any(final.iterdir()) and not (final / REPORT_NAME).is_file():
        raise InputError(
            f"results_dir {final} is a non-empty folder that holds no tao-qc results ({REPORT_NAME}); "
            "it would be replaced as a whole, so give an empty or new folder"
        )


def _save(model: Any, path: Path, spec: QuantizeSpec) -> None:
    stamp(model, spec, __version__)
    save_model(model, path)


def raise_if_failed(evaluation: Evaluation, spec: QuantizeSpec) -> None:
    """AccuracyError (exit 1) when the result misses what the spec asks (`Evaluation.failures`) and
    `compare.fail_on_mismatch` is set."""
    failures = evaluation.failures()
    if failures and spec.compare.fail_on_mismatch:
        compared = evaluation.comparison
        names = (f"{Path(compared.candidate).name} failed the comparison with {Path(compared.reference).name}"
                 if compared is not None else "the quantized model failed its checks")
        raise AccuracyError(f"{names}: " + "; ".join(failures))


# ---------------------------------------------------------------------------------------------
# `tao-qc sensitivity`: the same start as compile (spec, staged folder, calibrated graph), then the ranking


def measure_sensitivity(model_path: str | Path, spec: Any, results_dir: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The calibrating passes once, then the two-pass ranking of `search.rank_nodes`, written as
    sensitivity.json and sensitivity.html beside each other in `results_dir`."""
    spec = load_spec(spec).for_onnx_pipeline()
    source = Path(model_path).expanduser().resolve()
    if not source.is_file():
        raise InputError(f"model {source} does not exist")
    final = Path(results_dir or Path.cwd() / f"{source.stem}.sensitivity").expanduser().resolve()
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "sensitivity.json").is_file())):
        raise InputError(f"{final} is not an empty folder or an earlier sensitivity result (give another with -o)")
    with staged_dir(final) as stage:
        ctx = new_context(spec, stage, source, hold_back=needs_held_back_data(spec))
        calibrated = calibrate(spec, source, ctx)
        result = rank_sensitivity(spec, source, calibrated.model, ctx, stage)
        atomic_write_text(stage / "sensitivity.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(stage / "sensitivity.html", sensitivity_html(result, f"Sensitivity of {source.name}"))
    return result, final
