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
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.accuracy.fallback import needs_held_back_data
from tao_qc.errors import InputError
from tao_qc.pipeline import DUMP_MODES, DumpInstrument, PassContext, PassRecord, Pipeline, format_summary

log = logging.getLogger("tao_qc.compile")

REPORT_NAME = "report.json"
HTML_REPORT_NAME = "report.html"
PASSES_DIR = "passes"
_SUFFIX = {"int8": "int8", "fp8": "fp8"}
_VERSIONED = ("tao-qc", "onnx", "onnx-ir", "onnxscript", "onnxruntime-gpu", "onnxruntime", "nvidia-modelopt", "numpy")


@dataclass
class CompileResult:
    results_dir: Path  # the final folder
    model_path: Path  # the quantized model inside it
    report_path: Path
    report: dict[str, Any]
    records: list[PassRecord]
    decisions: list[Any]  # tao_qc.patterns.Decision, graph order
    spec: Any  # the QuantizeSpec as the pipeline read it
    dump_dir: Path | None = None
    compare: bool = True  # whether the FP32-vs-quantized comparison step is asked for
    facts: dict[str, Any] = field(default_factory=dict)

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
    then `raise_if_failed(result.report, result.spec)` does it once the caller has shown the result).
    A model that is not `.onnx` is a PyTorch model (a checkpoint with `model_factory`, TorchScript or
    a `.pt2` program): it is lowered to `<stem>.fp32.onnx` in the results first, with input names and
    shapes from the calibration data (or `input_shape`), and that graph enters the pipeline.
    """
    from tao_qc.fileio import atomic_write_text, staged_dir
    from tao_qc.passes import calibrating_passes, finishing_passes
    from tao_qc.spec import load_spec

    spec = load_spec(spec if spec is not None else {}).for_onnx_pipeline()
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

    started = time.perf_counter()
    with staged_dir(final) as stage:
        staged_dump = (Path(dump_dir) if dump_dir else stage / PASSES_DIR)
        failure_dir = Path(dump_dir) if dump_dir else final.with_name(f"{final.name}.failed")
        dumps = DumpInstrument(staged_dump, dump, print_after, echo=echo, failure_directory=failure_dir)
        stem = source.stem
        if source.suffix.lower() != ".onnx":
            source = _lower_pytorch(source, stage, spec, model_factory, factory_kwargs, input_shape)
        ctx = PassContext(spec=spec, work_dir=stage, source_path=source, calibration=calibration)
        ctx.facts["hold_back_for_accuracy"] = compare and _may_need_trials(spec) and needs_held_back_data(spec)
        calibrating = Pipeline(calibrating_passes(spec, source_path=source), [dumps])
        finishing = Pipeline(finishing_passes(spec), [dumps])
        ctx.facts["modelopt_process"] = _prestart_modelopt(calibrating)
        try:
            calibrated = calibrating.run(None, ctx)
        finally:
            process = ctx.facts.pop("modelopt_process", None)
            if process is not None:
                process.close()
        # Accuracy trials start again from the calibrated graph: kept before the finishing passes change it.
        snapshot = CalibratedGraph.take(calibrated.model, ctx, stage) if compare and _may_need_trials(spec) else None
        dump_state = (dumps.previous_text, dumps.previous_name)
        finished = finishing.run(calibrated.model, ctx, after=calibrated.records)
        records = calibrated.records + finished.records

        mode = ctx.facts.get("quantize_mode", "int8")
        quantized = stage / f"{stem}.{_SUFFIX.get(mode, mode)}.onnx"
        _save(finished.model, quantized, spec)
        sections: dict[str, Any] = {}
        if compare:
            sections = _compare(spec, source, quantized, ctx)
            if snapshot is not None:
                outcome = _accuracy(spec, source, ctx, snapshot, sections)
                if outcome.rebuild is not None:
                    # The finishing passes again, from the graph the search settled on; their dumps
                    # diff against the calibrated graph as the first run's did.
                    ctx.facts = outcome.rebuild.facts_with(outcome.keep_float or {})
                    dumps.previous_text, dumps.previous_name = dump_state
                    finished = finishing.run(outcome.rebuild.model(), ctx, after=calibrated.records)
                    records = calibrated.records + finished.records
                    _save(finished.model, quantized, spec)
                    before = sections
                    sections = _compare(spec, source, quantized, ctx)
                    outcome.after_rebuild(before, sections)
                outcome.final = _final_metric(spec, source, quantized, ctx, snapshot.folder, outcome)
                sections["accuracy"] = outcome.section()
                snapshot.discard()
            sections = _relocated(sections, str(stage), str(final))
        report = build_report(spec, source, final / quantized.name, records, ctx, time.perf_counter() - started)
        report.update(sections)
        slower = slower_than_fp32(sections.get("latency"), spec)
        if slower:
            log.warning(slower)
            report["warnings"].append(slower)
        atomic_write_text(stage / REPORT_NAME, json.dumps(report, indent=2, default=str) + "\n")
        if compare:
            from tao_qc.report_html import write_html_report

            write_html_report(report, stage / HTML_REPORT_NAME)

    log.info("quantized model: %s", final / quantized.name)
    if sections and raise_on_mismatch:
        from tao_qc.compare import raise_if_failed

        # Results stay on disk either way: a failed check is what the report is for.
        raise_if_failed(report, spec)
    return CompileResult(
        results_dir=final,
        model_path=final / quantized.name,
        report_path=final / REPORT_NAME,
        report=report,
        records=records,
        decisions=list(ctx.facts.get("decisions") or []),
        spec=spec,
        dump_dir=(Path(dump_dir) if dump_dir else final / PASSES_DIR),
        compare=compare,
        facts={k: v for k, v in ctx.facts.items() if k != "decisions"},
    )


def _compare(spec: Any, source: Path, quantized: Path, ctx: PassContext) -> dict[str, Any]:
    """FP32 (the user's model as given) against the quantized model on the spec's compare data
    (default: the calibration data), on the spec's compare runtime: report sections."""
    import sys

    import onnx

    from tao_qc.compare import evaluate_quantized
    from tao_qc.data import load_labels, model_inputs, open_inputs

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
    labels = load_labels(spec.compare.labels, key="quantize.compare.labels", others=user_metric) if spec.compare.labels else None
    log.info("comparing FP32 and quantized on %s (%s)", spec.compare.runtime, batches.describe())
    sections = evaluate_quantized(source, quantized, batches, spec, labels)
    if spec.target == "onnxruntime" and spec.onnxruntime.kernel_fidelity and spec.compare.runtime == "onnxruntime":
        from tao_qc.kernel_fidelity import check_kernel_fidelity

        from tao_qc.cpu import resolve, this_machine

        log.info("checking ONNX Runtime's integer kernels on this CPU against the graph's arithmetic")
        fidelity = check_kernel_fidelity(source, quantized, batches, spec.compare).to_dict()
        # Compiled for a CPU whose kernels add weight pairs otherwise than this one's: this machine's
        # verdict is shown, but it says nothing about the CPU the model is for, so it fails nothing.
        fidelity["decides"] = resolve(spec.onnxruntime.cpu).pairs_saturate == this_machine().pairs_saturate
        sections["kernel_fidelity"] = fidelity
    return sections


# Well below 1: batch-1 timings of a few-millisecond model vary by a fifth from run to run on a busy
# machine (YuNet's INT8 model read 0.63x and 0.82x FP32 in two runs of the same benchmark).
SLOWER_THAN_FP32 = 0.8


def slower_than_fp32(latency: dict[str, Any] | None, spec: Any) -> str | None:
    """A warning when the quantized model runs slower than FP32 on the runtime it was placed for (a
    TensorRT graph timed on ONNX Runtime's CPU provider says nothing about its speed); else None."""
    if not latency or spec.target != latency.get("runtime"):
        return None
    from tao_qc.cpu import this_machine

    here = this_machine()
    why = ("; without VNNI, ORT's integer kernels multiply in 16 bits and gain little over float" if here.pairs_saturate
           else "")
    for row in latency.get("rows", [])[1:]:
        if row.get("ratio") is not None and row["ratio"] < SLOWER_THAN_FP32:
            return (f"the quantized model runs slower than FP32 on {latency['runtime']}: {row['ratio']:.2f}x FP32's "
                    f"speed at batch {row['batch_size']} on this CPU ({here.isa}{why}); quantization buys no speed for "
                    "this model on this runtime: see the latency in report.html")
    return None


def _may_need_trials(spec: Any) -> bool:
    """Whether the accuracy check can need the calibrated graph again (a trial, or fallback)."""
    return spec.accuracy.fallback == "auto" or spec.accuracy.metric is not None


def _accuracy(spec: Any, source: Path, ctx: PassContext, snapshot: Any, sections: dict[str, Any]) -> Any:
    from tao_qc.accuracy.fallback import check_accuracy

    return check_accuracy(spec, source, ctx, snapshot, sections)


def _final_metric(spec: Any, source: Path, quantized: Path, ctx: PassContext, folder: Path, outcome: Any) -> dict | None:
    """The accuracy metric of the saved model on the comparison data (where a metric is set)."""
    if spec.accuracy.metric is None:
        return None
    from tao_qc.accuracy.fallback import measure_model

    try:
        data = ctx.held_back if ctx.held_back is not None else ctx.calibration
        return measure_model(spec, source, quantized, data, folder, outcome.target)
    except Exception as exc:  # noqa: BLE001 - a user metric may need labels the comparison data lacks
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("accuracy metric %s not measured on the comparison data: %s", outcome.target.name, reason)
        return {"metric": outcome.target.name, "error": f"{type(exc).__name__}: {reason}", "met": None}


def _lower_pytorch(source: Path, stage: Path, spec: Any, factory: str | None,
                   factory_kwargs: dict[str, Any] | None, input_shape: tuple[int, ...] | None) -> Path:
    from tao_qc.frontends.lower_to_onnx import lower_pytorch_file

    target = stage / f"{source.stem}.fp32.onnx"
    log.info("lowering the PyTorch model %s to ONNX (%s)", source.name, target.name)
    return lower_pytorch_file(source, target, factory=factory, factory_kwargs=factory_kwargs,
                              data=spec.calibration.data, calibration=spec.calibration,
                              input_shape=input_shape, dynamic_batch=True)


def _relocated(value: Any, old: str, new: str) -> Any:
    """`value` with paths inside the staging folder pointing where the results end up."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, dict):
        return {_relocated(k, old, new): _relocated(v, old, new) for k, v in value.items()}  # keys too: latency's cpu.compiled_for
    if isinstance(value, list):
        return [_relocated(v, old, new) for v in value]
    return value


def _prestart_modelopt(pipeline: Pipeline) -> Any:
    """Start modelopt's child process now, so its import overlaps the passes before quantization."""
    if "quantize-modelopt" not in pipeline.names:
        return None
    from tao_qc.passes.quantize_modelopt import ModelOptProcess

    return ModelOptProcess()


def _pass_names(spec: Any) -> list[str]:
    from tao_qc.passes import default_passes

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


def _save(model: Any, path: Path, spec: Any) -> None:
    from tao_qc import __version__
    from tao_qc.model_fields import stamp
    from tao_qc.pipeline import save_model

    stamp(model, spec, __version__)
    save_model(model, path)


def cpu_section(spec: Any) -> dict[str, Any]:
    """The CPU the model was compiled for (target onnxruntime) and the one that measured it."""
    from tao_qc.cpu import resolve, this_machine

    target = None
    if spec.target == "onnxruntime":
        target = {"asked": spec.onnxruntime.cpu, **resolve(spec.onnxruntime.cpu).as_dict()}
    return {"target": target, "this_machine": this_machine().as_dict()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_report(spec: Any, source: Path, output: Path, records: list[PassRecord], ctx: PassContext, seconds: float) -> dict[str, Any]:
    decisions = ctx.facts.get("decisions") or []
    declined = ctx.facts.get("declined") or {}
    rows = []
    for decision in decisions:
        row = decision.as_dict()
        row["reason"] = decision.reason
        if decision.unit.name in declined:
            row["declined_by_backend"] = declined[decision.unit.name]
        rows.append(row)
    quantized = [d for d in decisions if d.quantized and d.unit.name not in declined]
    calibration = ctx.calibration
    return {
        "tool": "tao-qc compile",
        "model": str(source),
        "output": str(output),
        "spec": spec.normalized(),
        "spec_file": spec.source,
        "quantize_mode": ctx.facts.get("quantize_mode"),
        "float_dtype": ctx.facts.get("float_dtype"),  # what everything not quantized is stored in
        "opset": ctx.facts.get("opset"),
        "calibration": {
            "data": calibration.describe() if calibration is not None else None,
            "random": bool(calibration.is_random) if calibration is not None else None,
            "samples": calibration.num_samples if calibration is not None else None,
        },
        "modelopt": ctx.facts.get("modelopt_settings"),
        "cpu": cpu_section(spec),
        "counts": {
            "candidates": len(decisions),
            "quantized": len(quantized),
            "kept_float": len(decisions) - len(quantized),
            "declined_by_backend": len(declined),
            # What each compute node runs in: its dtype where quantized, else native.
            "dtypes": dict(sorted(Counter(d.activations if d.quantized and d.unit.name not in declined else "native"
                                          for d in decisions).items())),
            "nodes": records[-1].nodes if records else 0,
            "ops": records[-1].op_counts if records else {},
        },
        "decisions": rows,
        "warnings": [f"pattern {p} matches nothing" for p in ctx.facts.get("unmatched_patterns", [])]
        + [f"pattern {p} matches only nodes that cannot be quantized" for p in ctx.facts.get("patterns_only_other_types", [])]
        + [f"{name}: {why}" for name, why in declined.items()],
        "passes": [r.as_dict() for r in records],
        "timings": {"total_s": round(seconds, 3), **{name: round(sum(r.seconds for r in records if r.name == name), 4)
                                                     for name in dict.fromkeys(r.name for r in records)},
                    "modelopt": {k: round(v, 4) for k, v in (ctx.facts.get("modelopt_timing") or {}).items()}},
        "summary": format_summary(records, timings=False),
        "versions": library_versions(),
        **_corrections_report(ctx.facts),
    }


def _corrections_report(facts: dict[str, Any]) -> dict[str, Any]:
    """What `algorithm: auto` chose per activation and what each weight correction did per node
    (only where they ran)."""
    from tao_qc.accuracy.corrections import corrections_report

    return corrections_report(facts)
