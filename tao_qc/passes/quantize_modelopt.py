"""Quantize the matched nodes with `modelopt.onnx.quantization.quantize` (static PTQ, Q/DQ graph).

modelopt receives exactly the nodes match-layers selected (`nodes_to_quantize`, anchored and
escaped, because modelopt reads the names as regular expressions) and every other candidate as
`nodes_to_exclude`. It runs in a child Python process: importing
`modelopt.onnx` patches `onnxruntime.quantization` for the whole process, and later stages (a
placement pass, a peer baseline using ORT's own quantizer) must see the real ORT. Calibration
batches are streamed to the child over a pipe on demand, so the data is read once per calibration
sweep and never copied whole.

Settings, in order (the user's `backend_kwargs` are merged last and win):
quantize_mode int8 whatever the nodes' dtypes (one calibration of every tensor a quantized node
reads; assign-dtypes then gives each node Q/DQ of its own dtype from those ranges), calibration_method from
`spec.calibration_algorithm` (minmax -> "max", entropy -> "entropy"), calibration_eps (CPU, plus
CUDA when `device` resolves to it), high_precision_dtype from `quantize.float_dtype` (auto: fp16
for target tensorrt, wherever quantization runs, so a strongly typed engine's float layers run
FP16 like the FP16 engine it is compared with; fp32 for target onnxruntime). modelopt's fp16
graph keeps FP32 inputs and outputs behind Casts, and ONNX Runtime's CPU provider still runs it
(it casts around the fp16 nodes it has no kernels for), so the comparison after compile runs.

modelopt applies TensorRT-driven exclusions of its own (GEMV/small MatMuls, some Convs); a node we
asked for that comes back without Q/DQ is reported (warning, note, `ctx.facts["declined"]`), never
silently dropped. For an ONNX Runtime target the GEMV heuristic is switched off.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from tao_qc.console import progress
from tao_qc.errors import InputError, SpecError, TaoQcError
from tao_qc.passes.integer_elementwise import elementwise_to_measure
from tao_qc.pipeline import (
    PROTOBUF_LIMIT_BYTES,
    PROVENANCE_KEY,
    PassContext,
    PassResult,
    constant_array,
    mark_created,
    save_model,
    weight_bytes,
)
from tao_qc.pipeline.child import start_child
from tao_qc.runtimes.base import cuda_device_present
from tao_qc.spec import QuantizeSpec

log = logging.getLogger("tao_qc.quantize")

# percentile: modelopt's max, then clip-ranges narrows the activation ranges.
CALIBRATION_METHODS = {"minmax": "max", "entropy": "entropy", "percentile": "max", "auto": "max"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class ModelOptError(TaoQcError):
    """modelopt.onnx failed inside its child process."""


@dataclass
class QuantizeModelOpt:
    name: str = "quantize-modelopt"
    # Seconds to wait for the child between messages before declaring it hung.
    timeout_s: float = 3600.0

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        spec = ctx.spec
        decisions = ctx.facts.get("decisions")
        if decisions is None:
            raise TaoQcError("quantize-modelopt needs match-layers to run first (no decisions in the context)")
        if any(node.op_type in QDQ_OPS for node in model.graph):
            raise InputError(f"{_model_name(ctx)} already has QuantizeLinear/DequantizeLinear nodes: give the float model")
        selected = [d for d in decisions if d.quantized]
        mode = quantize_mode_for(selected, spec.target)
        batches = ctx.calibration
        if batches is None:
            raise InputError("quantize.calibration.data: no calibration data given (valid: a .npz named by input, "
                             "a .npy, an image folder, or 'random')")
        device = resolve_device(spec.device)
        measured: dict[str, str] = {}
        if spec.target == "onnxruntime" and mode == "int8":
            measured = {n.name: n.op_type for n in elementwise_to_measure(model, {d.unit.name for d in selected})}
        ctx.facts["measured_elementwise"] = sorted(measured)
        # Accuracy fallback may keep these in float too (their requantizations can be the loss): it
        # ranks them with the compute nodes, in graph order.
        ctx.facts["elementwise_quantized"] = [(node.name, node.op_type) for node in model.graph if node.name in measured]
        kwargs = modelopt_settings(spec, selected, decisions, mode, device, measured=measured)
        names_before = {node.name: dict(node.metadata_props) for node in model.graph}

        quantized = self._quantize(model, ctx, kwargs, batches)
        if spec.target == "tensorrt" and selected and not _quantized_any(quantized, selected):
            # modelopt's TensorRT heuristics (few-channel Convs, GEMV-shaped MatMuls) are about speed;
            # where they would leave nothing of the user's selection quantized, the selection wins.
            log.warning("modelopt.onnx's TensorRT heuristics exclude every selected node (%s); quantizing them anyway",
                        _names(selected))
            kwargs = {**kwargs, "enable_gemv_detection_for_trt": False, _KEEP_SMALL_CONVS: True, **spec.backend_kwargs}
            quantized = self._quantize(model, ctx, kwargs, batches)
        # modelopt writes a model of its own (its producer, no metadata or docs): the user's fields go back.
        fields = ctx.facts.get("model_fields")
        if fields is not None:
            fields.restore(quantized, functions_from=model)

        created = 0
        for node in quantized.graph:
            if node.name in names_before:
                for key, value in names_before[node.name].items():
                    node.metadata_props.setdefault(key, value)
            elif PROVENANCE_KEY not in node.metadata_props:
                mark_created(node, self.name)
                created += 1

        facts = collect_ranges(quantized)
        ctx.facts["ranges"] = facts["ranges"]
        ctx.facts["quantized_inputs"] = facts["quantized_inputs"]
        ctx.facts["quantize_mode"] = mode
        ctx.facts["float_dtype"] = kwargs["high_precision_dtype"]  # backend_kwargs may have overridden the spec
        ctx.facts["modelopt_settings"] = {k: v for k, v in kwargs.items() if k not in ("nodes_to_quantize", "nodes_to_exclude")}

        asked = ", ".join(f"{dtype} {count}" for dtype, count in sorted(Counter(d.activations for d in selected).items()))
        notes = [f"modelopt.onnx {mode}: {len(selected)} nodes asked for ({asked}), calibration "
                 f"{kwargs['calibration_method']} on {batches.describe()}, eps {kwargs['calibration_eps']}, "
                 f"high precision {kwargs['high_precision_dtype']}"]
        if measured:
            notes.append(f"{len(measured)} elementwise nodes between quantized ones measured too (their output "
                         "ranges keep them on uint8 in ONNX Runtime)")
        declined = {}
        for decision in selected:
            name = decision.unit.name
            if name not in facts["quantized_inputs"]:
                declined[name] = ("modelopt.onnx left it in float (its TensorRT heuristics exclude GEMV/small "
                                  "MatMuls and some Convs; see backend_kwargs to change them)")
                log.warning("%s: asked for %s but %s", name, decision.activations, declined[name])
                notes.append(f"warning: {name}: {declined[name]}")
        ctx.facts["declined"] = declined
        if selected and len(declined) == len(selected):
            raise InputError(
                f"modelopt.onnx quantized none of the {len(selected)} selected nodes ({_names(selected)}): its TensorRT "
                "heuristics exclude them (GEMV/small MatMuls, Convs with few channels); select other layers, or use "
                "target: onnxruntime"
            )
        counts = {op: sum(1 for n in quantized.graph if n.op_type == op) for op in QDQ_OPS}
        stats = {"nodes_quantized": len(selected) - len(declined), "nodes_declined": len(declined),
                 "quantize_linear": counts["QuantizeLinear"], "dequantize_linear": counts["DequantizeLinear"],
                 "nodes_created": created}
        return PassResult(quantized, changed=True, stats=stats, notes=notes)


    def _quantize(self, model: ir.Model, ctx: PassContext, kwargs: dict[str, Any], batches: Any) -> ir.Model:
        with tempfile.TemporaryDirectory(prefix="modelopt-", dir=ctx.work_dir) as tmp:
            source, target = Path(tmp) / "input.onnx", Path(tmp) / "quantized.onnx"
            # modelopt's copy is written with its weights beside it: raw tensor bytes instead of one
            # large protobuf to serialize (about half the cost of handing the graph over).
            save_model(model, source, external_data=True)
            if weight_bytes(model) >= PROTOBUF_LIMIT_BYTES:
                kwargs.setdefault("use_external_data_format", True)
            ctx.facts["modelopt_timing"] = run_modelopt_in_child(
                source, target, kwargs, batches, timeout_s=self.timeout_s, child=ctx.facts.pop("modelopt_process", None))
            quantized = ir.load(target)
            ir.external_data.load_to_model(quantized)  # read external weights before the folder goes
        return quantized


def _quantized_any(model: ir.Model, selected: list) -> bool:
    return bool(set(collect_ranges(model)["quantized_inputs"]) & {d.unit.name for d in selected})


def quantize_mode_for(selected: list, target: str) -> str:
    """modelopt's quantize_mode for the selected nodes, or an InputError saying what cannot be done.

    Always int8: modelopt's own FP8 mode is this same int8 max calibration with the scales rescaled
    afterwards, and one int8 call measures every tensor a quantized node reads, whatever dtype each
    node asks for; assign-dtypes turns each node's Q/DQ into its own dtype from those ranges.
    """
    e5m2 = [d for d in selected if "fp8_e5m2" in (d.weights, d.activations)]
    if e5m2 and target == "tensorrt":
        raise InputError(
            f"quantize.layers: fp8_e5m2 was asked for {_names(e5m2)}, but TensorRT runs FP8 only as E4M3 "
            "(target: tensorrt); use fp8_e4m3fn there, or target: onnxruntime, whose CPU provider runs E5M2 Q/DQ"
        )
    partial = [d for d in selected if d.weights != d.activations]
    if partial:
        d = partial[0]
        raise InputError(
            "modelopt.onnx does static PTQ only, with one dtype for a node's weights and activations; "
            f"{_names(partial)} ask for weights {d.weights} and activations {d.activations} "
            "(give both the same dtype, or 'native' to both)"
        )
    return "int8"


def _names(decisions: list, limit: int = 4) -> str:
    names = [d.unit.name for d in decisions]
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def resolve_device(device: str) -> str:
    """Where modelopt calibrates: its ONNX Runtime session runs on CUDA only where the CUDA provider
    and a device are both present. `auto` takes CUDA there and says so when it falls back to CPU;
    an explicit `cuda` without CUDA is an error."""
    if device == "cpu":
        return device
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_present()
    if device == "auto":
        if not cuda:
            log.info("quantize.device: auto: no CUDA device here, calibrating on CPU")
        return "cuda" if cuda else "cpu"
    if not cuda:
        raise InputError(f"quantize.device: '{device}' asked for, but no CUDA device with ONNX Runtime's CUDA "
                         "provider is available here (valid here: cpu, or auto to use CUDA only where present)")
    return device


def modelopt_settings(spec: QuantizeSpec, selected: list, decisions: list, mode: str, device: str,
                      measured: dict[str, str] | None = None) -> dict[str, Any]:
    """modelopt.onnx.quantization.quantize's keyword arguments. `measured`: elementwise nodes (name ->
    op type) whose output ranges an ONNX Runtime target needs too (see integer_elementwise)."""
    problem = spec.float_dtype_problem()  # again here: --target can change the target after the spec was read
    if problem:
        raise SpecError(problem, key="quantize.float_dtype", location=spec.source)
    eps = ["cpu"]
    if device.startswith("cuda"):
        index = device.split(":")[1] if ":" in device else "0"
        eps = [f"cuda:{index}", "cpu"]
    chosen = {d.unit.name for d in selected}
    settings: dict[str, Any] = {
        "quantize_mode": mode,
        "calibration_method": CALIBRATION_METHODS[spec.calibration_algorithm],
        "calibration_eps": eps,
        "high_precision_dtype": spec.resolved_float_dtype,
        # modelopt reads these as regular expressions (re.match): anchor and escape the exact names.
        "nodes_to_quantize": [f"^{re.escape(name)}$" for name in sorted(chosen | set(measured or {}))],
        "nodes_to_exclude": [f"^{re.escape(d.unit.name)}$" for d in decisions if d.unit.name not in chosen],
        "log_level": "WARNING",
    }
    if spec.target == "onnxruntime":
        settings["enable_gemv_detection_for_trt"] = False  # a TensorRT-only heuristic
        # ORT fuses whole DQ -> op -> Q units: have modelopt measure each quantized op's output
        # range too, so place-for-onnxruntime reuses measured ranges instead of guessing them.
        # Elementwise ops between quantized ones are measured the same way, so they can run on uint8.
        settings["op_types_needing_output_quant"] = ["Conv", "Gemm", "MatMul", *sorted(set((measured or {}).values()))]
        settings[_KEEP_SMALL_CONVS] = True
    settings.update(spec.backend_kwargs)
    return settings


def collect_ranges(model: ir.Model) -> dict[str, Any]:
    """Per quantized tensor: scale, zero point, dtype, amax; per node: which of its inputs are quantized."""
    ranges: dict[str, Any] = {}
    quantized_inputs: dict[str, list[str]] = {}
    for node in model.graph:
        if node.op_type == "QuantizeLinear":
            source = _before_casts(node.inputs[0])  # an fp16 graph quantizes `x_cast_to_fp16`: the range is x's
            scale = constant_array(node.inputs[1])
            zero = constant_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if scale is None:
                continue
            out_type = node.outputs[0].dtype
            dtype = out_type.name.lower() if out_type is not None else (str(zero.dtype) if zero is not None else "int8")
            qmax = 448.0 if "float8" in dtype else 127.0
            axis = node.attributes.get("axis")
            ranges[source.name] = {
                "scale": np.asarray(scale, dtype=np.float64).reshape(-1).tolist(),
                "zero_point": np.asarray(zero).astype(np.float64).reshape(-1).tolist() if zero is not None else [0.0],
                "dtype": dtype,
                "amax": (np.abs(np.asarray(scale, dtype=np.float64)) * qmax).reshape(-1).tolist(),
                "axis": axis.as_int() if axis is not None else None,
                "quantize_node": node.name,
            }
    for node in model.graph:
        if node.op_type in QDQ_OPS:
            continue
        inputs = [v.name for v in node.inputs if v is not None and _through_dq(v)]
        if inputs:
            quantized_inputs[node.name] = inputs
    return {"ranges": ranges, "quantized_inputs": quantized_inputs}


def _before_casts(value: ir.Value) -> ir.Value:
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast" and producer.inputs[0] is not None:
        value = producer.inputs[0]
        producer = value.producer()
    return value


def _through_dq(value: ir.Value) -> bool:
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast":
        producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
    return producer is not None and producer.op_type == "DequantizeLinear"


# ---------------------------------------------------------------------------------------------
# The child process


class ModelOptProcess:
    """A child Python process that imports modelopt.onnx and waits for one quantize job.

    Starting it early (`compile_model` does, before the first pass) overlaps the interpreter start
    and modelopt's import (seconds: it pulls in torch) with loading and canonicalizing the graph.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        # Its own entry module: this one is imported with the package, and `python -m` of a module
        # the package already imported warns.
        self.process, self.conn = start_child("tao_qc.passes.modelopt_child")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            # Its teardown (torch, CUDA libraries) takes a while and nothing waits on it: reap it
            # in the background so the exit status is collected without holding compile up.
            import threading

            threading.Thread(target=self.process.wait, name="reap-modelopt", daemon=True).start()
        self.conn.close()


def run_modelopt_in_child(source: Path, target: Path, kwargs: dict[str, Any], batches: Any, *, timeout_s: float,
                          child: ModelOptProcess | None = None) -> dict[str, float]:
    """Run modelopt.onnx.quantization.quantize(source -> target) in a child interpreter, serving it
    calibration batches from `batches` (an `InputBatches`) with a progress bar. Returns timings:
    `child_s` (start to finish), `import_s` (starting Python and importing modelopt in the child),
    `quantize_s` (the quantize() call itself).

    A fresh `python -m tao_qc.passes.modelopt_child` over a socket pair rather than
    multiprocessing's spawn: spawn re-imports the parent's `__main__`, which re-runs a user's
    unguarded script (or fails for `python -` and notebooks).
    """
    started = time.perf_counter()
    child = child or ModelOptProcess()
    process, conn = child.process, child.conn
    timing: dict[str, float] = {}
    iterator = None
    served = 0
    try:
        conn.send((str(source), str(target), kwargs, len(batches)))
        with progress(f"calibrating ({batches.num_samples} samples)", total=batches.num_samples) as bar:
            while True:
                waited = 0.0
                while not conn.poll(1.0):
                    waited += 1.0
                    if process.poll() is not None:
                        raise ModelOptError(f"modelopt.onnx's process ended without a result (exit code {process.returncode})")
                    if waited > timeout_s:
                        raise ModelOptError(f"modelopt.onnx sent nothing for {timeout_s:.0f} s")
                try:
                    message = conn.recv()
                except EOFError:
                    process.wait(5)
                    raise ModelOptError(f"modelopt.onnx's process ended without a result (exit code {process.returncode})") from None
                kind = message[0]
                if kind == "next":
                    if iterator is None:
                        iterator = iter(batches)
                    batch = next(iterator, None)
                    conn.send(batch)
                    if batch is not None and served < batches.num_samples:
                        count = next(iter(batch.values())).shape[0]
                        bar.advance(min(count, batches.num_samples - served))
                        served += count
                elif kind == "first":
                    conn.send(batches.first())
                elif kind == "rewind":
                    iterator = None
                elif kind == "done":
                    timing = {"import_s": message[1], "quantize_s": message[2]}
                    break
                elif kind == "error":
                    _, summary, trace = message
                    log.debug("modelopt.onnx failed:\n%s", trace)
                    raise ModelOptError(f"modelopt.onnx.quantization.quantize failed: {summary}")
        # The model is written; the child's interpreter teardown (torch, CUDA libraries) is not waited for.
    finally:
        child.close()
    if not target.exists():
        raise ModelOptError("modelopt.onnx finished but wrote no model")
    timing["child_s"] = time.perf_counter() - started
    return timing


_KEEP_SMALL_CONVS = "_tao_qc_keep_small_convs"


def _keep_small_convs() -> None:
    """Stop modelopt excluding Convs with fewer than 16 channels.

    That exclusion is a TensorRT kernel constraint (modelopt.onnx.quantization.graph_utils.
    find_nodes_from_convs_to_exclude) with no parameter to turn it off; ONNX Runtime's CPU integer
    kernels take any channel count, so for `target: onnxruntime` the user's selection stands. This
    runs only in modelopt's own child process, so the patch cannot leak.
    """
    from modelopt.onnx.quantization import int8

    int8.find_nodes_from_convs_to_exclude = lambda graph, quantize_mode="int8": []


def _no_gpu_is_no_error(record: logging.LogRecord) -> bool:
    """modelopt asks NVML for the GPU count before calibrating and, on a machine without an NVIDIA
    driver, logs 'Failed to get GPU count: NVML Shared Library Not Found' at ERROR, then calibrates on
    the CPU as asked: on every CPU-only compile a line that reads like a failure. Dropped; every other
    line of modelopt's passes."""
    return not record.getMessage().startswith("Failed to get GPU count")


def child_main(fd: int) -> None:
    from multiprocessing.connection import Connection

    started = time.perf_counter()
    conn = Connection(fd)
    # modelopt and ORT print to stdout; stdout belongs to the parent's results (--json).
    os.dup2(2, 1)
    try:
        from modelopt.onnx.quantization import quantize
        from onnxruntime.quantization import CalibrationDataReader

        logging.getLogger("modelopt.onnx").addFilter(_no_gpu_is_no_error)
        imported = time.perf_counter()
        source, target, kwargs, num_batches = conn.recv()

        class PipeReader(CalibrationDataReader):
            """Calibration batches fetched from the parent one at a time."""

            def get_next(self):
                conn.send(("next",))
                return conn.recv()

            def get_first(self):
                conn.send(("first",))
                return conn.recv()

            def rewind(self):
                conn.send(("rewind",))

            def __len__(self):
                return num_batches

        if kwargs.pop(_KEEP_SMALL_CONVS, False):
            _keep_small_convs()
        called = time.perf_counter()
        quantize(source, calibration_data_reader=PipeReader(), output_path=target, **kwargs)
        conn.send(("done", imported - started, time.perf_counter() - called))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one message
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        conn.send(("error", f"{type(exc).__name__}: {summary}"[:500], traceback.format_exc()))
    finally:
        conn.close()


def _model_name(ctx: PassContext) -> str:
    return f"model {ctx.source_path.name}" if ctx.source_path else "the model"
