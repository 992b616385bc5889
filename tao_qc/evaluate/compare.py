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
- Nothing set: each output gets the default check that fits what it is (`tao_qc.evaluate.checks`
  lists them with their floors, `tao_qc.evaluate.measures.output_kind` how an output's kind is read),
  marked `default`: top-1 agreement for a classifier, the text read for a CTC recognizer
  (`tao_qc.evaluate.ctc_reading`), top-1 agreement per position for other class scores, the IoU of
  thresholded maps for a probability map, a cosine over the data set for values. Quantization never
  meets element-wise FP32 tolerances, so the default checks what users care about.
- `task: detection` (or a `decoder`): boxes are the measure (`tao_qc.evaluate.detection`). Raw outputs are
  reported but not checked by cosine or top-1; instead the quantized model's mAP@.5 against FP32's
  detections must be >= 0.9, or, with `annotations`, its mAP@[.5:.95] at most 0.01 below FP32's.
  `task: dense` never reads a 2-D output as class scores.
- Always: the candidate's outputs are finite wherever the reference's are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.evaluate.checks import (
    DEFAULT_MIN_COSINE,
    DEFAULT_MIN_TOP1_AGREEMENT,
    checks_for,
    detection_checks,
)
from tao_qc.evaluate.detection import DetectionComparison
from tao_qc.evaluate.evaluation import Evaluation
from tao_qc.evaluate.latency import bench_models
from tao_qc.evaluate.measures import output_metrics
from tao_qc.evaluate.results import ComparisonResult
from tao_qc.ir.shapes import dynamic_axes, explain_rejected_shape, shapes_of
from tao_qc.runtimes.base import RuntimeSettings
from tao_qc.runtimes.registry import get_runtime
from tao_qc.spec import CompareSpec, QuantizeSpec
from tao_qc.spec.cpu import compiled_for, kernels_compute_as

log = logging.getLogger("tao_qc.compare")

REFERENCE_RUNNER = "reference"
CANDIDATE_RUNNER = "candidate"


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
    del run_results  # the per-batch copies: the stacked ones are all that is read from here on
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


def computes_otherwise_here(quant_path: str | Path | Any) -> str | None:
    """The instruction set a model was compiled for (its `tao_qc.cpu` metadata) where ONNX Runtime's
    integer kernels on this CPU compute other integers than that CPU's (8-bit weights where this one
    saturates int16 pairs), else None. Such a model is measured through its graph's own Q/DQ
    arithmetic, which is what the target's kernels compute (kernel_fidelity checks that relation).
    `quant_path`: a path or an already loaded `onnx.ModelProto`."""
    import onnx

    proto = quant_path if isinstance(quant_path, onnx.ModelProto) else onnx.load(str(quant_path), load_external_data=False)
    isa = compiled_for({p.key: p.value for p in proto.metadata_props})
    return isa if isa is not None and not kernels_compute_as(isa) else None


def evaluate_quantized(
    fp32_path: str | Path,
    quant_path: str | Path,
    inputs: Any,
    spec: QuantizeSpec,
    labels: np.ndarray | None = None,
    *,
    batch_sizes: tuple[int, ...] = (1,),
    warmup: int = 5,
    runs: int = 20,
    artifact_dir: str | Path | None = None,
    measure_latency: bool = True,
) -> Evaluation:
    """Compare `quant_path` against `fp32_path` on `inputs` and time both, with the spec's settings.

    Returns an `Evaluation` with the comparison and the latency table (None when not measured); its
    `sections()` are report.json's. It never raises for a failed check: `Evaluation.failures()` says
    what failed (`tao_qc.driver.raise_if_failed` for the exit-1 behaviour).
    `spec` is a `QuantizeSpec`: `spec.compare` gives runtime and tolerances, `spec.tensorrt` the
    engine settings; engines (ORT's optimized graph, TensorRT .engine) are saved in `artifact_dir`.
    """

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
        compared = engines
        if runtime == "onnxruntime" and (other := computes_otherwise_here(quant_path)):
            log.info("this CPU's integer kernels compute otherwise than %s's: the comparison runs the graph's "
                     "own Q/DQ arithmetic (what %s's kernels compute); timings are this CPU's", other, other)
            built.append(backend.build(Path(quant_path), replace(settings, graph_optimization="disable")))
            compared = (built[0], built[2])
        comparison = compare_models(fp32_path, quant_path, inputs, runtime=runtime, labels=labels, settings=spec.compare,
                                    runtime_settings=settings, engines=compared, image_color=spec.calibration.color)
        comparison.candidate_arithmetic = "graph" if compared is not engines else "kernels"
        evaluation = Evaluation(comparison)
        if measure_latency:
            # Timed at the shape of the data compared: a model with open height/width has no other.
            evaluation.latency = bench_models([fp32_path, quant_path], batch_sizes, runtime=runtime, settings=settings,
                                              warmup=warmup, runs=runs, engines=list(engines),
                                              shapes=shapes_of(inputs.first()))
    finally:
        for engine in built:
            engine.close()
    return evaluation
