"""Kernel fidelity: does ONNX Runtime's integer kernels on this CPU compute what the graph says?

A model placed for `target: onnxruntime` is a Q/DQ graph whose arithmetic is defined by ONNX:
dequantize, compute in float, quantize. ORT fuses `DQ -> op -> Q` units into integer kernels
(QLinearConv, QGemm, ...) that should give the same integers. Where a CPU's kernels do not (uint8 x
int8 pairs saturating int16 on AVX2 without VNNI, tao_qc/spec/cpu.py), the quantized model's accuracy
on that CPU is not the one the graph promises, and no comparison against FP32 says why.

The check runs the placed model twice on the comparison data, on this machine: with ORT's
optimizations (the fused kernels a user's session runs) and with none (the graph's own arithmetic,
each op on its own), and measures the kernels against the graph:

- per output, the largest difference in the output's quantization steps (where a DequantizeLinear
  gives the output) and the kernels' error energy relative to the quantization error itself
  (`kernel_error_ratio` = ||kernels - graph|| / ||graph - FP32||);
- the task measure through both: top-1 agreement with FP32 for class scores, mAP against FP32's
  boxes with the comparison's decoder, the data-set cosine with FP32 otherwise.

Where the kernels only round differently (a requantization tie, a float sum in another order), the
kernel error stays near or below the quantization error, an output that is quantized moves by a few
of its steps (or by no more than quantization itself moved it), and the task measure through the
kernels falls short of the graph's by at most one sample. The check fails past that
(`MAX_KERNEL_ERROR_RATIO`, `MAX_STEP_ERROR`, `MAX_TASK_DELTA_SAMPLES`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.evaluate.detection import map_metric
from tao_qc.evaluate.measures import CHUNK_ELEMENTS, cosine_from_sums, is_classifier_output
from tao_qc.runtimes.base import RuntimeSettings
from tao_qc.runtimes.onnxruntime import OnnxRuntime
from tao_qc.spec.cpu import CpuTarget, compiled_for, mismatch, this_machine

log = logging.getLogger("tao_qc.kernel_fidelity")

# Measured (bench/kernel_fidelity.py, bench/results/kernel-fidelity.md): where the kernels only round
# differently, their error is 0-1.1x the quantization error: 0.66 for YuNet on AMX (requantization
# ties and integer Sigmoid tables carried through 60 layers), 0.45-0.98 for the zoo's EfficientNet,
# MobileNetV3 and ResNet-18, and 1.07-1.10 for its ConvNeXt, whose LayerNorms rescale a one-step
# rounding difference as much as the quantization error itself (its top-1 agrees with FP32 through
# both). Saturated pairs on AVX2 put it at 2.0-22x (2.0 the EfficientNet, 2.6 the MobileNetV3, 6.1-22
# the MNIST CNNs, UltraFace and the ConvNeXt). The bar sits between; 1.0, set before the ConvNeXt was
# measured, failed it.
MAX_KERNEL_ERROR_RATIO = 1.5
# A few wrong values hide in the energy of a large output (AMX's lost 17-31-column remainder: 0.33x the
# quantization error, but 188 steps off): an output a DequantizeLinear gives may differ by this many
# of its steps at most, or by as many as quantization itself moved its farthest value. A deep model
# with a fine output grid carries rounding differences further: the zoo's MobileNetV3 30 steps where
# quantization moved a value 46, its EfficientNet 15-25 where it moved one 26-42.
MAX_STEP_ERROR = 16
# The task measure through the kernels may fall short of the graph's by one sample's worth (a near tie
# decided the other way by a rounding). Kernels that agree with FP32 better than the graph's arithmetic
# harm nothing: a random-weight EfficientNet whose logits are all near ties read 2 samples of 16
# better through AVX2's exact kernels than through the graph.
MAX_TASK_DELTA_SAMPLES = 1
_SHAPE_ONLY = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


@dataclass
class OutputFidelity:
    name: str
    max_abs_error: float  # kernels against the graph's arithmetic
    max_step_error: float | None  # the same in the output's quantization steps (None: the output is not quantized)
    quantization_step_error: float | None  # the largest |graph - FP32| in the same steps
    kernel_error_ratio: float  # ||kernels - graph|| / ||graph - FP32||
    task_measure: str  # top1_agreement | map | cosine (with FP32)
    task_kernels: float | None  # the task measure with FP32, through ORT's kernels
    task_graph: float | None  # the same through the graph's own arithmetic

    @property
    def task_delta(self) -> float | None:
        if self.task_kernels is None or self.task_graph is None:
            return None
        return self.task_kernels - self.task_graph


@dataclass
class KernelFidelity:
    cpu: dict[str, Any]  # this machine (isa, model) and what the model was compiled for
    samples: int
    outputs: list[OutputFidelity] = field(default_factory=list)
    passed: bool = True
    reason: str | None = None
    # Whether this verdict speaks for the CPU the model is compiled for (one whose kernels add weight
    # pairs as this machine's do); where not, it is shown but fails nothing.
    decides: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu,
            "samples": self.samples,
            "passed": self.passed,
            "reason": self.reason,
            "decides": self.decides,
            "thresholds": {"max_kernel_error_ratio": MAX_KERNEL_ERROR_RATIO, "max_step_error": MAX_STEP_ERROR,
                           "max_task_delta_samples": MAX_TASK_DELTA_SAMPLES},
            "outputs": [{**asdict(o), "task_delta": o.task_delta} for o in self.outputs],
        }


def check_kernel_fidelity(fp32_path: str | Path, quant_path: str | Path, inputs: Any, compare: Any,
                          *, here: CpuTarget | None = None) -> KernelFidelity:
    """ORT's fused kernels against the graph's own Q/DQ arithmetic for `quant_path` on `inputs`
    (an InputBatches or any re-iterable of feed dicts), on this machine. `compare`: the spec's
    CompareSpec (its decoder measures detections)."""
    import onnx

    here = here or this_machine()
    proto = onnx.load(str(quant_path), load_external_data=False)
    metadata = {p.key: p.value for p in proto.metadata_props}
    model_isa = compiled_for(metadata)
    steps = output_steps(proto)
    fp32 = _outputs(fp32_path, inputs, optimized=True)
    kernels = _outputs(quant_path, inputs, optimized=True)
    graph = _outputs(quant_path, inputs, optimized=False)
    samples = next(iter(fp32.values())).shape[0] if fp32 else 0
    result = KernelFidelity(cpu={"this_machine": here.as_dict(), "compiled_for": model_isa}, samples=samples)
    detection = compare.resolved_task == "detection" and compare.decoder is not None
    feeds = _stacked_inputs(inputs) if detection else None
    for name, reference in fp32.items():
        sums = _sums_in_slices(reference, kernels[name], graph[name])
        quantization, deviation = np.sqrt(sums["graph_fp32"]), np.sqrt(sums["kernels_graph"])
        ratio = deviation / quantization if quantization > 0 else (0.0 if deviation == 0 else float("inf"))
        step = steps.get(name)
        measure, task_k, task_g = _task(name, reference, kernels[name], graph[name], sums, fp32, kernels, graph, feeds,
                                        compare, detection)
        largest = sums["max_error"]
        in_steps = bool(step and reference.size)
        result.outputs.append(OutputFidelity(
            name=name, max_abs_error=largest, max_step_error=largest / step if in_steps else None,
            quantization_step_error=sums["max_quantization_error"] / step if in_steps else None,
            kernel_error_ratio=float(ratio), task_measure=measure, task_kernels=task_k, task_graph=task_g))
    result.passed, result.reason = _verdict(result, here, model_isa)
    return result


def _verdict(result: KernelFidelity, here: CpuTarget, model_isa: str | None) -> tuple[bool, str | None]:
    allowed_delta = MAX_TASK_DELTA_SAMPLES / max(result.samples, 1)
    problems = []
    for output in result.outputs:
        steps_off = (output.max_step_error or 0) > max(MAX_STEP_ERROR, output.quantization_step_error or 0)
        if output.kernel_error_ratio > MAX_KERNEL_ERROR_RATIO or steps_off:
            steps = f", up to {output.max_step_error:.0f} output steps" if output.max_step_error is not None else ""
            problems.append(f"{output.name} off by {output.kernel_error_ratio:.2f}x the quantization error{steps}")
        elif output.task_delta is not None and output.task_measure != "cosine" and output.task_delta < -allowed_delta - 1e-9:
            problems.append(f"{output.name} {output.task_measure} {output.task_kernels:.4f} through the kernels, "
                            f"{output.task_graph:.4f} through the graph")
    if not problems:
        return True, None
    why = mismatch(model_isa, here)
    hint = f" ({why})" if why else (f"; compile with quantize.onnxruntime.cpu: {here.isa}" if here.pairs_saturate else "")
    return False, (f"ORT's integer kernels on this CPU ({here.isa}) deviate from the graph's arithmetic: "
                   + "; ".join(problems) + hint)


def _sums_in_slices(reference: np.ndarray, kernels: np.ndarray, graph: np.ndarray) -> dict[str, float]:
    """Squared distances (kernels to graph, graph to FP32), the largest |kernels - graph| and
    |graph - FP32|, and the dot products the cosines with FP32 need, summed a slice of samples at a
    time in float64 as `output_metrics` does (three float64 copies of a large output were most of
    compile's peak memory)."""
    samples = reference.shape[0] if reference.ndim else 1
    rows = [a.reshape(samples, -1) for a in (reference, kernels, graph)]
    step = max(1, CHUNK_ELEMENTS // max(1, rows[0].shape[1]))
    sums = dict.fromkeys(("kernels_graph", "graph_fp32", "max_error", "max_quantization_error",
                          "fk", "ff", "kk", "fg", "gg"), 0.0)
    for start in range(0, samples, step):
        f, k, g = (np.nan_to_num(a[start:start + step].astype(np.float64)) for a in rows)
        difference = k - g
        sums["kernels_graph"] += float(np.einsum("ij,ij->", difference, difference))
        if difference.size:
            sums["max_error"] = max(sums["max_error"], float(np.abs(difference).max()))
        difference = g - f
        sums["graph_fp32"] += float(np.einsum("ij,ij->", difference, difference))
        if difference.size:
            sums["max_quantization_error"] = max(sums["max_quantization_error"], float(np.abs(difference).max()))
        for key, (a, b) in {"fk": (f, k), "ff": (f, f), "kk": (k, k), "fg": (f, g), "gg": (g, g)}.items():
            sums[key] += float(np.einsum("ij,ij->", a, b))
    return sums


def _task(name, reference, k, g, sums, fp32, kernels, graph, feeds, compare, detection) -> tuple[str, float | None, float | None]:
    if detection:
        try:
            return "map", map_metric(fp32, kernels, feeds, compare), map_metric(fp32, graph, feeds, compare)
        except Exception as exc:  # noqa: BLE001 - a decoder that needs outputs this one lacks: the raw measure
            log.debug("kernel fidelity: no mAP for %s: %s", name, exc)
    if compare.resolved_task in ("auto", "classification") and is_classifier_output(reference):
        top = reference.argmax(axis=1)
        return "top1_agreement", float(np.mean(k.argmax(axis=1) == top)), float(np.mean(g.argmax(axis=1) == top))
    return ("cosine", cosine_from_sums(sums["fk"], sums["ff"], sums["kk"]),
            cosine_from_sums(sums["fg"], sums["ff"], sums["gg"]))


def output_steps(model: Any) -> dict[str, float]:
    """The quantization step of each graph output a DequantizeLinear with one scale gives (through
    shape-only ops). `model` may be loaded without its external data: a scale is never stored there."""
    from onnx import TensorProto, numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {t.name: t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL}
    steps = {}
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            node = producers.get(node.input[0])
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in constants:
            continue
        scale = numpy_helper.to_array(constants[node.input[1]])
        if scale.size == 1:
            steps[output.name] = float(scale.reshape(()))
    return steps


def _outputs(path: str | Path, inputs: Any, *, optimized: bool) -> dict[str, np.ndarray]:
    settings = RuntimeSettings(device="cpu", graph_optimization="all" if optimized else "disable")
    engine = OnnxRuntime().build(Path(path), settings)
    try:
        runs = [engine.run(feeds) for feeds in inputs]
    finally:
        engine.close()
    return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]} if runs else {}


def _stacked_inputs(inputs: Any) -> dict[str, np.ndarray]:
    batches = list(inputs)
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]} if batches else {}


def fidelity_line(section: dict[str, Any]) -> str:
    """One line for the terminal and the report: the verdict and the figures behind it."""
    if not section.get("passed", True):
        return f"FAILED: {section['reason']}"
    worst = max(section["outputs"], key=lambda o: o["kernel_error_ratio"], default=None)
    isa = section["cpu"]["this_machine"]["isa"]
    if worst is None:
        return f"passed on {isa}"
    steps = f", at most {worst['max_step_error']:.0f} output steps" if worst.get("max_step_error") is not None else ""
    return (f"passed on {isa}: ORT's kernels match the graph's arithmetic within rounding "
            f"(error {worst['kernel_error_ratio']:.2f}x the quantization error{steps}; {section['samples']} samples)")
