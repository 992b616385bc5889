"""ONNX Runtime sessions for FP32 and quantized models, with explicit threads and optimization level.

The optimized graph ORT builds is ONNX Runtime's "engine": it is saved as `<stem>.ort-optimized.onnx`
(`SessionOptions.optimized_model_filepath`) so what actually ran can be inspected. Comparison goes
through polygraphy's `OnnxrtRunner` over the very session built here (polygraphy's own
`SessionFromOnnx` cannot set threads or save the optimized model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.data import model_inputs
from tao_qc.errors import InputError
from tao_qc.runtimes.base import RuntimeSettings, artifact_path, cuda_device_present
from tao_qc.runtimes.timing import summarize, time_calls

log = logging.getLogger("tao_qc.runtimes.onnxruntime")

OPTIMIZED_SUFFIX = ".ort-optimized.onnx"

# ONNX Runtime 1.24's CPU graph optimizers read FP8 Q/DQ as integer ones: ReluQuantRewrite drops a
# Relu before a float8 QuantizeLinear whose zero point is 0 (a clamp at 0 only for unsigned integer
# types: the FP8 graph then passes negative values), and the QDQ selectors fuse a float8
# `DQ -> Conv -> Q` unit into a QLinearConv, which takes no float8 (ORT rejects the graph). The CPU
# provider has no FP8 kernels: it runs FP8 Q/DQ around float ops, which is what these two left off give.
FP8_MISREAD_OPTIMIZERS = ("ReluQuantRewrite", "QDQSelectorActionTransformer")
_FLOAT8_TYPES = frozenset({17, 18, 19, 20})  # TensorProto FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ


def has_float8_qdq(model: Any) -> bool:
    """Whether an ONNX model (a ModelProto, serialized bytes or a path) quantizes to a float8 type."""
    import onnx

    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    elif not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    if any(t.data_type in _FLOAT8_TYPES for t in model.graph.initializer):
        return True
    return any(attr.name == "output_dtype" and attr.i in _FLOAT8_TYPES
               for node in model.graph.node if node.op_type == "QuantizeLinear" for attr in node.attribute)


def session_options(settings: RuntimeSettings, optimized_path: Path | None = None) -> Any:
    """`onnxruntime.SessionOptions` from our settings (a pure translation, tested)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[settings.graph_optimization]
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


# ORT's WeightBiasQuantization (BiasQuantization in older releases; onnxruntime/core/optimizer/
# qdq_transformer) quantizes a Q/DQ Conv's float bias to int32 at scale input_scale * weight_scale,
# computed in the scales' type. With fp16 scales (the float part of a graph made for TensorRT) that
# product falls into fp16's subnormals and the bias comes out wrong: measured on UltraFace, a face
# score moved by up to 0.9 against the same graph run unoptimized. TensorRT keeps such a bias in
# float; these passes stay off for such graphs.
_FP16_SCALE_UNSAFE = ["WeightBiasQuantization", "BiasQuantization"]


def has_low_precision_qdq_scales(proto: Any) -> bool:
    """Whether a QuantizeLinear/DequantizeLinear of the graph takes an fp16/bf16 scale initializer."""
    low = _low_precision_types()
    types = {init.name: init.data_type for init in proto.graph.initializer}
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1
               and types.get(node.input[1]) in low for node in proto.graph.node)


def disabled_optimizers_for(proto: Any) -> list[str]:
    """ORT graph optimizers to turn off for this graph, a ModelProto (InferenceSession's `disabled_optimizers`;
    see FP8_MISREAD_OPTIMIZERS and _FP16_SCALE_UNSAFE)."""
    disabled = list(FP8_MISREAD_OPTIMIZERS) if has_float8_qdq(proto) else []
    return disabled + (list(_FP16_SCALE_UNSAFE) if has_low_precision_qdq_scales(proto) else [])


# ORT's CPU QuantizeLinear for float16 input (1.24 here; microsoft/onnxruntime#18576, fixed upstream
# by #32452) converts x / scale to an integer by truncation, not ONNX's round-half-to-even: about
# half of all values land one step toward zero. A graph whose float part is fp16 (made for
# TensorRT, which rounds correctly) then looks far worse on CPU than it is: YuNet's plain INT8
# TensorRT graph measured a lowest output cosine of 0.70 here, 0.97 with correct rounding (its fp32
# twin: 0.98). The CPU sessions run such Q nodes on float32 copies of x and scale instead: both hold
# every fp16 value exactly, so the result is the one ONNX defines. The saved model is not changed.
def _low_precision_types() -> set[int]:
    import onnx

    return {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def fp16_quantize_nodes(proto: Any) -> list[int]:
    """Positions of the graph's QuantizeLinear nodes whose scale (and so input) is fp16 or bf16."""
    low = _low_precision_types()
    types = {init.name: init.data_type for init in proto.graph.initializer}
    types.update({node.output[0]: node.attribute[0].t.data_type for node in proto.graph.node
                  if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    return [index for index, node in enumerate(proto.graph.node)
            if node.op_type == "QuantizeLinear" and len(node.input) > 1 and types.get(node.input[1]) in low]


def with_exact_fp16_quantize(proto: Any) -> Any:
    """`proto`, or a copy whose fp16 QuantizeLinear nodes read float32 casts of their input and scale."""
    import onnx
    from onnx import helper

    targets = set(fp16_quantize_nodes(proto))
    if not targets:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    nodes = []
    for index, node in enumerate(copy.graph.node):
        if index in targets:
            for position in (0, 1):
                wide = f"{node.input[position]}__float32_for_{node.name or node.output[0]}"
                nodes.append(helper.make_node("Cast", [node.input[position]], [wide], to=onnx.TensorProto.FLOAT,
                                              name=wide))
                node.input[position] = wide
        nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def providers_for(device: str) -> list[str]:
    """Execution providers in priority order for `device` (cpu, cuda, auto)."""
    import onnxruntime as ort

    cuda_built = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda":
        if not (cuda_built and cuda_device_present()):
            raise InputError("device cuda: no CUDA device or onnxruntime CUDA provider here (valid here: cpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and cuda_built and cuda_device_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _exact_fp16_quantize_bytes(proto: Any, model_path: Path) -> str | bytes:
    """The serialized rewrite (with_exact_fp16_quantize) of `proto`, the graph read from
    `model_path` without its external weights, or the path itself where it cannot be serialized
    (past protobuf's 2 GB), with a warning."""
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(model_path.parent))  # nothing to do for inline weights
        return with_exact_fp16_quantize(proto).SerializeToString()
    except ValueError as exc:
        log.warning("%s: its fp16 QuantizeLinear nodes run as ONNX Runtime's CPU kernel computes them "
                    "(truncating, one step off for about half the values): %s", model_path.name, exc)
        return str(model_path)


@dataclass
class OrtEngine:
    model_path: Path
    session: Any
    settings: RuntimeSettings
    artifact: Path | None = None
    runtime: str = "onnxruntime"
    input_specs: list = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def runner(self, name: str) -> Any:
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.session, name=name)

    def close(self) -> None:
        # The session's memory goes when the session is collected; dropping it is all there is to do.
        self.session = None

    def latency(self, feeds: dict[str, np.ndarray], *, warmup: int, runs: int):
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        if self.device == "cuda":
            # Inputs and outputs stay on the device: the timed loop holds no host transfers.
            import onnxruntime as ort

            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            call = lambda: self.session.run_with_iobinding(binding)  # noqa: E731
            times = time_calls(call, warmup=warmup, runs=runs, sync=binding.synchronize_outputs)
        else:
            call = lambda: self.session.run(self.output_names, feeds)  # noqa: E731
            times = time_calls(call, warmup=warmup, runs=runs)
        return summarize(
            times, batch, warmup=warmup, model=str(self.model_path), runtime=self.runtime,
            threads=self.settings.intra_op_threads, device=self.device,
        )


class OnnxRuntime:
    name = "onnxruntime"

    def available(self) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def build(self, model_path: Path, settings: RuntimeSettings) -> OrtEngine:
        import onnx
        import onnxruntime as ort

        model_path = Path(model_path)
        if not model_path.is_file():
            raise InputError(f"{model_path} does not exist")
        try:
            proto = onnx.load(str(model_path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
            raise InputError(f"{model_path} is not a readable ONNX model: {exc}") from None
        optimized = artifact_path(model_path, settings, OPTIMIZED_SUFFIX) if settings.save_artifact else None
        options = session_options(settings, optimized)
        disabled = disabled_optimizers_for(proto)
        providers = providers_for(settings.device)
        model: str | bytes = str(model_path)
        if providers[0] == "CPUExecutionProvider" and fp16_quantize_nodes(proto):
            model = _exact_fp16_quantize_bytes(proto, model_path)
        try:
            session = ort.InferenceSession(model, options, providers=providers, disabled_optimizers=disabled)
        except Exception as exc:  # noqa: BLE001 - ORT reports model faults as generic exceptions
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{model_path.name}: onnxruntime cannot load it: {message}") from None
        log.debug("%s: onnxruntime session on %s, %d threads", model_path.name, session.get_providers()[0], settings.intra_op_threads)
        return OrtEngine(
            model_path=model_path,
            session=session,
            settings=settings,
            artifact=optimized if optimized and optimized.exists() else None,
            input_specs=model_inputs(proto),
            output_names=[output.name for output in session.get_outputs()],
        )


def time_by_op_type(model_path: Path, feeds: dict[str, np.ndarray], settings: RuntimeSettings, *, runs: int = 30) -> dict[str, float]:
    """Milliseconds per run spent in each op type of the graph ORT executes (after its fusions:
    QLinearConv, NhwcMaxPool...), from ORT's own profiler, largest first."""
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    options = session_options(settings)
    with tempfile.TemporaryDirectory(prefix="tao-qc-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        proto = onnx.load(str(model_path), load_external_data=False)
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=disabled_optimizers_for(proto))
        session.run(None, feeds)  # the first run allocates; its kernel times are not typical
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3
    # The profile holds the untimed first run too: per run over all runs it saw.
    return {op: ms / (runs + 1) for op, ms in sorted(totals.items(), key=lambda item: -item[1])}
