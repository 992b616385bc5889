"""One trial of accuracy-driven quantization: the calibrated graph with some nodes kept in float,
finished for the target and measured on the accuracy data.

`TrialSetup` is everything a trial needs, written once to a work folder (the calibrated graph, the
facts the finishing passes read, the accuracy data as one .npz, the spec) so that worker processes,
or Ray actors on other machines, load it once and then run any number of trials. `TrialRunner`
holds it in memory: FP32's outputs on the accuracy data are computed once, every trial builds a
fresh copy of the calibrated graph (never a new calibration), runs the finishing passes with
`keep_float`, and runs the result in ONNX Runtime on the CPU with the deployment's graph
optimizations, so what is measured is what ships. Where this machine's integer kernels compute
otherwise than those of the CPU the model is for (`tao_qc.spec.cpu.kernels_compute_as`), the
candidates run the graph's own Q/DQ arithmetic instead: what the target's kernels compute.

A setup is made in the compiling process and read in others: `cpu: auto` is resolved there (a Ray
node's CPU is not the target's), and the user's own modules (a metric, a decoder) travel as the
folders and files this process imported them from (`tao_qc.spec.user_code.UserModules`).
"""

from __future__ import annotations

import copy
import logging
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.accuracy.metrics import ComparisonChecks, cosine, sample_errors, smallest_margin, target_for
from tao_qc.accuracy.proxy_noise import proxy_noise
from tao_qc.errors import InputError
from tao_qc.evaluate.results import Check
from tao_qc.passes import finishing_passes
from tao_qc.pipeline import PassContext, Pipeline
from tao_qc.runtimes.onnxruntime import (
    disabled_optimizers_for,
    with_exact_fp16_quantize,
)
from tao_qc.spec import QuantizeSpec
from tao_qc.spec.cpu import kernels_compute_as
from tao_qc.spec.cpu import resolve as resolve_cpu
from tao_qc.spec.user_code import UserModules, locate_user_modules

log = logging.getLogger("tao_qc.accuracy")

SETUP_FILE = "trial-setup.pkl"


@dataclass
class TrialSetup:
    calibrated_model: Path  # the graph quantize-modelopt wrote, as the finishing passes receive it
    facts: dict[str, Any]  # ctx.facts the finishing passes read (decisions, ranges, model fields...)
    spec: QuantizeSpec
    reference_model: Path  # the user's FP32 model
    data: Path  # the accuracy data: a .npz with one array per model input, samples first
    batch_size: int
    labels: Path | None = None  # .npy, samples first (any dtype the metric understands)
    search_path: str | None = None  # where a user metric module is looked for (the spec's folder)
    threads: int = 1  # intra-op threads per trial session
    user_modules: UserModules | None = None  # None: located from the spec in this (the compiling) process

    def __post_init__(self) -> None:
        if self.user_modules is None:
            self.spec = with_cpu_resolved(self.spec)
            self.user_modules = locate_user_modules(user_references(self.spec), search_path=self.search_path)

    def save(self, folder: Path) -> Path:
        path = folder / SETUP_FILE
        with open(path, "wb") as stream:
            pickle.dump(self, stream)
        return path

    @staticmethod
    def load(path: str | Path) -> TrialSetup:
        with open(path, "rb") as stream:
            return pickle.load(stream)


@dataclass
class TrialResult:
    keep_float: dict[str, str]
    value: float  # the metric on the samples measured
    samples: int
    seconds: float
    cosine: float = 0.0  # the lowest output cosine to FP32 over the samples measured (metrics.cosine)
    sample_error: list[float] = field(default_factory=list)  # per sample: metrics.sample_errors
    # With no metric (the comparison's checks as target): the checks themselves, which `value` is the
    # smallest margin of, so progress and the report can name each with its value and floor.
    checks: list[Check] = field(default_factory=list)
    # Where every failing check is a proxy, on a full evaluation: the spread of `value` over resamples
    # of the samples (`tao_qc.accuracy.proxy_noise`); 0.0 otherwise.
    noise: float = 0.0


def with_cpu_resolved(spec: QuantizeSpec) -> QuantizeSpec:
    """`spec` with `onnxruntime.cpu: auto` replaced by the instruction set it means in this process."""
    if spec.target != "onnxruntime" or spec.onnxruntime.cpu != "auto":
        return spec
    isa = resolve_cpu("auto").isa
    return spec.model_copy(update={"onnxruntime": spec.onnxruntime.model_copy(update={"cpu": isa})})


def user_references(spec: QuantizeSpec) -> list[tuple[str, str]]:
    """The spec's `module:function` names a trial calls, with the YAML key of each."""
    named = [(spec.accuracy.metric, "quantize.accuracy.metric"), (spec.compare.decoder, "quantize.compare.decoder")]
    return [(reference, key) for reference, key in named if isinstance(reference, str) and ":" in reference]


def picklable_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts a trial's finishing passes need (live objects such as the modelopt child are left out)."""
    out = {}
    for key, value in facts.items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - anything unpicklable is not something a pass reads
            continue
        out[key] = value
    return out


class TrialRunner:
    """A setup loaded once; `run(keep_float, samples)` measures one candidate."""

    def __init__(self, setup: TrialSetup):
        self.setup = setup
        if setup.user_modules is not None:
            setup.user_modules.make_importable()
        # The candidates' integers as the target CPU computes them (trials are measured, not timed).
        self.target_arithmetic = (setup.spec.target == "onnxruntime"
                                  and not kernels_compute_as(resolve_cpu(setup.spec.onnxruntime.cpu)))
        self.target = target_for(setup.spec, setup.search_path)
        with np.load(setup.data, allow_pickle=False) as npz:
            self.inputs = {name: npz[name] for name in npz.files}
        self.labels = np.load(setup.labels, allow_pickle=False) if setup.labels else None
        self.count = next(iter(self.inputs.values())).shape[0]
        import onnx

        self.reference = self._run(self._session(onnx.load(str(setup.reference_model))), np.arange(self.count))
        self.fp32_value = self.metric(self.reference, self.reference, np.arange(self.count))

    def on(self, setup: TrialSetup) -> TrialRunner:
        """This runner for another calibrated graph over the same data, model and metric: FP32's
        outputs are not run again."""
        assert (setup.data, setup.labels, setup.reference_model) == (self.setup.data, self.setup.labels,
                                                                      self.setup.reference_model)
        other = copy.copy(self)
        other.setup = setup
        return other

    def metric(self, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], samples: np.ndarray) -> float:
        labels = self.labels[samples] if self.labels is not None else None
        if getattr(self.target.function, "needs_inputs", False):  # detections are decoded against the images
            inputs = {name: array[samples] for name, array in self.inputs.items()}
            return float(self.target.function(reference, candidate, labels, inputs=inputs))
        if ":" not in self.target.name:
            return float(self.target.function(reference, candidate, labels))
        try:
            return float(self.target.function(reference, candidate, labels))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's metric may raise anything: say whose it was, in one line
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            given = "with labels" if labels is not None else "without labels (labels=None)"
            raise InputError(f"quantize.accuracy.metric: {self.target.name} failed on {len(samples)} samples {given} "
                             f"({type(exc).__name__}: {detail})") from exc

    def build(self, keep_float: dict[str, str]) -> Any:
        """The finished model (onnx_ir) for this float set, built from a fresh copy of the calibrated graph."""
        import onnx_ir as ir

        model = ir.load(self.setup.calibrated_model)
        ir.external_data.load_to_model(model)
        with tempfile.TemporaryDirectory(prefix="tao-qc-trial-") as work:
            ctx = PassContext(spec=self.setup.spec, work_dir=Path(work), facts=copy.deepcopy(self.setup.facts))
            ctx.facts["keep_float"] = dict(keep_float)
            passes = finishing_passes(self.setup.spec, verify=False)
            return Pipeline(passes, check_invariants=False).run(model, ctx).model

    def run(self, keep_float: dict[str, str], samples: list[int] | np.ndarray | None = None) -> TrialResult:
        import onnx_ir as ir

        started = time.perf_counter()
        chosen = np.arange(self.count) if samples is None else np.asarray(samples, dtype=np.int64)
        model = self.build(keep_float)
        candidate = self._run(self._session(ir.to_proto(model), quantized=True), chosen)
        reference = {name: array[chosen] for name, array in self.reference.items()}
        checks = (self.target.function.checks(reference, candidate)
                  if isinstance(self.target.function, ComparisonChecks) else [])
        return TrialResult(
            noise=proxy_noise(reference, candidate, checks) if samples is None else 0.0,
            keep_float=dict(keep_float),
            value=smallest_margin(checks) if checks else self.metric(reference, candidate, chosen),
            checks=checks,
            samples=len(chosen),
            seconds=time.perf_counter() - started,
            cosine=cosine(reference, candidate),
            sample_error=[float(v) for v in sample_errors(reference, candidate)],
        )

    def measure(self, model: str | Path) -> float:
        """The metric of a finished model file on every sample."""
        import onnx

        everything = np.arange(self.count)
        return self.metric(self.reference, self._run(self._session(onnx.load(str(model)), quantized=True), everything),
                           everything)

    def _session(self, proto: Any, *, quantized: bool = False) -> Any:
        """A CPU session with the optimizations the comparison's sessions get (tao_qc/runtimes/onnxruntime.py);
        for a quantized model, none where this CPU's kernels compute other integers than the target's."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if quantized and self.target_arithmetic:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = self.setup.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(with_exact_fp16_quantize(proto).SerializeToString(), options,
                                    providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers_for(proto))

    def _run(self, session: Any, samples: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
        batch = self.setup.batch_size
        for start in range(0, len(samples), batch):
            index = samples[start:start + batch]
            outputs = session.run(names, {name: array[index] for name, array in self.inputs.items()})
            for name, value in zip(names, outputs):
                chunks[name].append(value)
        return {name: np.concatenate(values) for name, values in chunks.items()}
