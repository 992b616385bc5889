"""TensorRT engines from ONNX, written for TensorRT 10 and 11, through polygraphy's TensorRT backend.

TensorRT 11 removed weak typing: no `--int8`/`--fp16`/`--best` builder flags, no INT8 calibrators,
no layer precision constraints. So every network here is built STRONGLY TYPED: precision comes from
the graph alone. INT8/FP8 come from the explicit Q/DQ nodes the quantizer wrote, and the float part
of a quantized graph is FP16 when `quantize.float_dtype` says so (the default for target tensorrt);
the FP16 baseline a GPU user compares against is an FP16 graph made by ModelOpt's AutoCast
(`fp16_graph`), built the same way. Nothing here relies on calibrators or precision flags, so the
same code builds on 10.x and 11.x. TF32 (a math mode for FP32 layers, not a type) is TensorRT's
default, on, unless `quantize.tensorrt.tf32` turns it off; the build settings record it.

Besides the engine (`<stem>.engine`), a build writes its settings (`<stem>.engine.json`) and, from
the engine inspector (`ProfilingVerbosity.DETAILED`), a table of the precision each layer runs in.

TensorRT cannot be installed everywhere: its absence is a one-line `MissingDependencyError`, and all
that does not need the library (settings, profiles, the timing cache's place, the FP16 graph, the
inspector parser, output copies, build errors) is plain Python, tested without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.data import model_inputs
from tao_qc.errors import InputError, MissingDependencyError, TaoQcError
from tao_qc.fileio import atomic_write_bytes, atomic_write_text
from tao_qc.ir.shapes import resolve_shape
from tao_qc.pipeline import PROTOBUF_LIMIT_BYTES, weight_bytes
from tao_qc.runtimes.base import RuntimeSettings, artifact_path
from tao_qc.runtimes.timing import summarize, time_calls
from tao_qc.spec import ShapeProfile

log = logging.getLogger("tao_qc.runtimes.tensorrt")

TENSORRT_MISSING = "TensorRT is not installed: pip install tao-qc[tensorrt] on a machine with an NVIDIA GPU"
ENGINE_SUFFIX = ".engine"
SETTINGS_SUFFIX = ".engine.json"
LAYERS_SUFFIX = ".layers.json"
FP16_SUFFIX = ".fp16.onnx"
# Default optimization profile for a dynamic batch dimension: batch 1 and 8 (what `tao-qc bench`
# measures by default) inside the range, tuned for 8. The top grows to the largest batch the
# settings say the engine will run at.
DEFAULT_BATCH_PROFILE = (1, 8, 32)


def import_tensorrt() -> Any:
    """`tensorrt`, or a one-line MissingDependencyError."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(TENSORRT_MISSING) from None
    if not hasattr(trt, "Builder"):  # the registry's placeholder package imports but holds nothing
        raise MissingDependencyError(TENSORRT_MISSING)
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except MissingDependencyError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Pure parts: optimization profiles and build settings


def default_profiles(inputs: list[Any], explicit: dict[str, ShapeProfile] | None = None,
                     batch_sizes: Sequence[int] = (),
                     shapes: dict[str, Sequence[int]] | None = None) -> dict[str, dict[str, list[int]]]:
    """Optimization profiles `{input: {min, opt, max}}` for the inputs (`tao_qc.data.InputInfo`).

    Explicit profiles (`spec.tensorrt.profiles`) win and are checked against the input; an input
    whose only dynamic dimension is the batch gets `DEFAULT_BATCH_PROFILE`, widened to cover
    `batch_sizes`; other dynamic dimensions take the sizes of the data the engine runs (`shapes`,
    full shapes: the data's or `--input-shapes`), else they are an error asking for them. Fully
    static inputs need none.
    """
    explicit = explicit or {}
    names = [info.name for info in inputs]
    unknown = [name for name in explicit if name not in names]
    if unknown:
        raise InputError(
            f"quantize.tensorrt.profiles: {', '.join(repr(u) for u in unknown)} is not an input of the model (inputs: {', '.join(names)})"
        )
    smallest, tuned, largest = DEFAULT_BATCH_PROFILE
    largest = max(largest, *batch_sizes) if batch_sizes else largest
    profiles: dict[str, dict[str, list[int]]] = {}
    for info in inputs:
        dims = list(info.shape)
        dynamic = [axis for axis, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
        key = f"quantize.tensorrt.profiles.{info.name}"
        if info.name in explicit:
            profile = explicit[info.name]
            shapes = {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)}
            for which, shape in shapes.items():
                if len(shape) != len(dims):
                    raise InputError(f"{key}.{which}: {shape} has {len(shape)} dimensions but input {info.describe()} has {len(dims)}")
                for axis, (want, got) in enumerate(zip(dims, shape)):
                    if axis not in dynamic and got != want:
                        raise InputError(f"{key}.{which}: dimension {axis} is {got} but input {info.describe()} fixes it at {want}")
                    if got < 1:
                        raise InputError(f"{key}.{which}: dimension {axis} is {got} (valid: 1 or more)")
            for axis in range(len(dims)):
                if not shapes["min"][axis] <= shapes["opt"][axis] <= shapes["max"][axis]:
                    raise InputError(f"{key}: dimension {axis} needs min <= opt <= max, got {shapes['min'][axis]}, {shapes['opt'][axis]}, {shapes['max'][axis]}")
            profiles[info.name] = shapes
            continue
        if not dynamic:
            continue
        if dynamic != [0]:
            if not (shapes or {}).get(info.name):
                raise InputError(
                    f"input {info.describe()} has dynamic dimensions besides the batch: give data, --input-shapes, or "
                    f"quantize.tensorrt.profiles.{info.name}: {{min: [...], opt: [...], max: [...]}}"
                )
            dims = list(resolve_shape(info, shapes, key=key))
        rest = [int(d) for d in dims[1:]]
        profiles[info.name] = {"min": [smallest, *rest], "opt": [tuned, *rest], "max": [largest, *rest]}
    return profiles


def check_feeds_fit(feeds: dict[str, np.ndarray], profiles: dict[str, dict[str, list[int]]], model_name: str) -> None:
    """A one-line InputError when a feed's shape lies outside its optimization profile (TensorRT
    would refuse it deep inside polygraphy's runner)."""
    for name, shapes in profiles.items():
        if name not in feeds:
            continue
        shape = list(np.shape(feeds[name]))
        low, high = shapes["min"], shapes["max"]
        if len(shape) != len(low) or any(not lo <= got <= hi for got, lo, hi in zip(shape, low, high)):
            raise InputError(
                f"{model_name}: input '{name}' of shape {shape} is outside the engine's TensorRT optimization profile "
                f"(min {low}, max {high}): set quantize.tensorrt.profiles.{name}"
            )


def build_settings(settings: RuntimeSettings, inputs: list[Any], *, model_path: Path, network_path: Path,
                   precision: str, timing_cache: Path | None, device: str | None = None) -> dict[str, Any]:
    """Everything that decides the engine, as recorded in `<stem>.engine.json` (a pure function)."""
    trt_spec = settings.tensorrt
    return {
        "model": str(model_path),
        "network": str(network_path),  # the graph actually built (the FP16 graph for the baseline)
        "precision": precision,  # where it comes from: the graph (strongly typed), never builder flags
        "strongly_typed": True,
        "tf32": trt_spec.tf32,
        "workspace_bytes": int(trt_spec.workspace_gib * (1 << 30)),
        "device": device,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "profiles": default_profiles(inputs, trt_spec.profiles, settings.batch_sizes, settings.input_shapes),
        "profiling_verbosity": "DETAILED",
    }


def cuda_device_name(ordinal: int = 0) -> str | None:
    """`<name> sm<major><minor>` of CUDA device `ordinal` (0: the one TensorRT builds on unless the
    process selected another), or None where no CUDA driver answers.

    Asked of the CUDA driver API because it numbers devices as TensorRT sees them (after
    CUDA_VISIBLE_DEVICES); NVML numbers them in PCI order and ignores that variable.
    """
    import ctypes

    try:
        driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return None
    device = ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    compute_capability_major, compute_capability_minor = 75, 76  # CUdevice_attribute in cuda.h
    if (driver.cuInit(0) or driver.cuDeviceGet(ctypes.byref(device), ordinal)
            or driver.cuDeviceGetName(name, len(name), device)
            or driver.cuDeviceGetAttribute(ctypes.byref(major), compute_capability_major, device)
            or driver.cuDeviceGetAttribute(ctypes.byref(minor), compute_capability_minor, device)):
        return None
    return f"{name.value.decode(errors='replace')} sm{major.value}{minor.value}"


def timing_cache_path(settings: RuntimeSettings, environ: dict[str, str] | None = None, *,
                      device: str | None, tensorrt_version: str) -> Path:
    """The spec's timing cache, else one per user, GPU and TensorRT version:
    `$XDG_CACHE_HOME/tao-qc/tensorrt-<version>-<gpu>.timing-cache`.

    Kernel timings hold for one GPU model and one TensorRT release; a cache is never shared across
    them, and never written beside the user's models unasked. A cache the spec names is used as
    given: keeping it to one GPU and version is then the user's choice.
    """
    if settings.tensorrt.timing_cache:
        return Path(settings.tensorrt.timing_cache)
    environ = os.environ if environ is None else environ
    base = Path(environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME", "~")).expanduser() / ".cache")
    key = re.sub(r"[^a-z0-9.]+", "-", f"tensorrt-{tensorrt_version}-{device or 'unknown-gpu'}".lower()).strip("-")
    return base / "tao-qc" / f"{key}.timing-cache"


# ---------------------------------------------------------------------------------------------
# The FP16 baseline graph


def has_qdq(model: Any) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def fp16_graph(model_path: Path, out_path: Path, *, external_data_above: int | None = None) -> Path:
    """An FP16 copy of an FP32 ONNX model, made by ModelOpt's AutoCast, with FP32 inputs and outputs.

    AutoCast keeps in FP32 the nodes whose values or initializers would overflow FP16 (its node
    classifier runs the model once in ONNX Runtime on CPU to find them). TensorRT builds the result
    strongly typed: the FP16 engine a GPU user compares INT8 against. Weights at or above
    `external_data_above` bytes (default: protobuf's 2 GB limit, less a margin) go to
    `<name>.data` beside the graph; the files appear together, when both are whole.
    """
    import onnx_ir as ir
    from modelopt.onnx.autocast import convert_to_mixed_precision

    limit = PROTOBUF_LIMIT_BYTES if external_data_above is None else external_data_above
    converted = ir.from_proto(convert_to_mixed_precision(onnx_path=str(model_path), low_precision_type="fp16",
                                                         keep_io_types=True, providers=["cpu"]))
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix=".tao-qc-fp16-", dir=out_path.parent) as scratch:
        staged = Path(scratch) / out_path.name
        if weight_bytes(converted) >= limit:
            ir.save(converted, staged, external_data=f"{out_path.name}.data")
        else:
            ir.save(converted, staged)
        # The weights file first: the graph never points at a file that is not there yet.
        for produced in sorted(Path(scratch).iterdir(), key=lambda path: path == staged):
            os.replace(produced, out_path.parent / produced.name)
    return out_path


# ---------------------------------------------------------------------------------------------
# The engine inspector's JSON → rows of layer precisions (pure, tested against fixtures)

_PRECISION_TOKENS = (
    ("FP4", ("fp4", "float4", "e2m1")),
    ("FP8", ("fp8", "float8", "e4m3", "e5m2")),
    ("E8M0", ("e8m0",)),
    ("INT4", ("int4",)),
    ("UINT8", ("uint8",)),
    ("INT8", ("int8",)),
    ("INT16", ("int16",)),
    ("INT32", ("int32",)),
    ("INT64", ("int64",)),
    ("BOOL", ("bool",)),
    ("BF16", ("bf16", "bfloat16")),
    ("FP16", ("fp16", "half", "float16")),
    ("FP32", ("fp32", "float32", "float")),
)
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_COMPUTE_PRECISIONS = ("FP4", "FP8", "INT4", "INT8", "FP16", "BF16", "FP32")


def precision_of(text: str) -> str:
    """`INT8`, `FP16`, ... from an inspector format string such as 'Row major linear FP16 format' or
    'Thirty-two wide channel vectorized row major Int8 format.'; `?` when unknown (an engine with
    dynamic shapes inspected without an execution context shows no formats)."""
    lowered = text.lower()
    for name, tokens in _PRECISION_TOKENS:
        if any(token in lowered for token in tokens):
            return name
    return "?"


@dataclass
class LayerPrecision:
    name: str
    type: str
    inputs: list[str]  # precision of each input tensor
    outputs: list[str]
    weights: str | None = None  # precision of the weights where the layer has them
    onnx_nodes: list[str] = field(default_factory=list)  # the ONNX nodes fused into it
    tactic: str | None = None

    @property
    def runs_in(self) -> str:
        """The precision the layer computes in: its weights' or its inputs' lowest precision."""
        for precision in _COMPUTE_PRECISIONS:
            if self.weights == precision or precision in self.inputs:
                return precision
        return self.inputs[0] if self.inputs else "?"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["runs_in"] = self.runs_in
        return out


def _tensor_precision(tensor: Any) -> str:
    if isinstance(tensor, str):
        return precision_of(tensor)
    if "Format/Datatype" in tensor:
        return precision_of(str(tensor["Format/Datatype"]))
    # Separate keys, as polygraphy 0.53.6 reads TensorRT 11 (tools/inspect/.../extractors/_trt.py).
    return precision_of(f"{tensor.get('Datatype', '')} {tensor.get('Format', '')}")


def parse_engine_layers(info: str | dict[str, Any]) -> list[LayerPrecision]:
    """Rows (layer, type, input/output precisions, weights) from `IEngineInspector.get_engine_information(JSON)`
    of TensorRT 10 (engine I/O under "Bindings") or 11 (under "I/O Tensors"); only "Layers" is read.

    An engine built without `ProfilingVerbosity.DETAILED` lists only layer names: that is an error,
    since the table would say nothing about precision.
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers") if isinstance(data, dict) else None
    if layers is None:
        raise InputError("engine information has no 'Layers' list (not TensorRT engine inspector JSON)")
    rows = []
    for layer in layers:
        if isinstance(layer, str):
            raise InputError("the engine was built without ProfilingVerbosity.DETAILED: layer precisions are not recorded")
        weights = layer.get("Weights")
        weight_precision = precision_of(str(weights.get("Type", ""))) if isinstance(weights, dict) and weights.get("Count", 1) else None
        rows.append(LayerPrecision(
            name=str(layer.get("Name", "?")),
            type=str(layer.get("LayerType", "?")),
            inputs=[_tensor_precision(t) for t in layer.get("Inputs", [])],
            outputs=[_tensor_precision(t) for t in layer.get("Outputs", [])],
            weights=weight_precision,
            onnx_nodes=_ONNX_LAYER.findall(str(layer.get("Metadata", ""))),
            tactic=layer.get("TacticName") or layer.get("TacticValue"),
        ))
    return rows


def precision_summary(rows: list[LayerPrecision]) -> dict[str, int]:
    """How many layers compute in each precision (Reformat/NoOp layers are bookkeeping, left out)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.type in ("Reformat", "NoOp", "Shuffle", "Constant"):
            continue
        counts[row.runs_in] = counts.get(row.runs_in, 0) + 1
    return dict(sorted(counts.items()))


def inspect_layers(trt: Any, engine: Any, profiles: dict[str, dict[str, list[int]]]) -> list[LayerPrecision]:
    """The engine's layer table, read through an execution context set to the profiles' opt shapes.

    Without a context whose input shapes are all set, "values dependent on input shapes will be
    displayed as -1 and format information will not be shown" (IEngineInspector::setExecutionContext,
    NvInferRuntime.h): every precision of a dynamic-shape engine would read "?". The context is
    USER_MANAGED, so it takes no device memory: it only answers shapes and formats.
    """
    context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    if not context:
        raise TaoQcError("TensorRT could not create an execution context to inspect the engine")
    for name, shapes in profiles.items():
        if not context.set_input_shape(name, tuple(shapes["opt"])):
            raise TaoQcError(f"TensorRT refused input '{name}' at its profile's opt shape {shapes['opt']}")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, context  # the inspector does not own the context: drop it first
    return parse_engine_layers(info)


# ---------------------------------------------------------------------------------------------
# Polygraphy around TensorRT: outputs and failures

@contextmanager
def tensorrt_failures(what: str) -> Iterator[None]:
    """Turn polygraphy's failure in the block into one InputError line: `<what>: <first error>`.

    polygraphy logs TensorRT's and the ONNX parser's errors, then raises a bare PolygraphyException
    ("Could not parse ONNX correctly", "Invalid Engine..."). For the block its log goes through
    Python's logging (`G_LOGGER.use_python_logging_system`), where the first error is kept: that is
    the line worth showing. It also keeps polygraphy's messages off stdout, which belongs to --json.
    """
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    errors: list[logging.LogRecord] = []

    class KeepErrors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    handler = KeepErrors(level=logging.ERROR)
    python_logger = logging.getLogger("Polygraphy")
    routed = hasattr(type(G_LOGGER), "use_python_logging_system")  # polygraphy >= 0.53.5
    before = (G_LOGGER.use_python_logging_system if routed else None, G_LOGGER.colors)
    if routed:
        G_LOGGER.use_python_logging_system = True
    # Colours would only put escape codes into our log, and polygraphy's first colour lookup prints
    # a note on stdout when the `colored` module is missing.
    G_LOGGER.colors = False
    python_logger.addHandler(handler)
    try:
        yield
    except PolygraphyException as exc:
        first = min(errors, key=lambda record: record.levelno, default=None)  # an ERROR before the CRITICAL
        text = first.getMessage() if first is not None else str(exc)
        cause = text.strip().removeprefix("[E]").removeprefix("[!]").strip().splitlines()
        raise InputError(f"{what}: {cause[0] if cause else type(exc).__name__}") from None
    finally:
        python_logger.removeHandler(handler)
        if routed:
            G_LOGGER.use_python_logging_system = before[0]
        G_LOGGER.colors = before[1]


def collect_outputs(runner: Any, feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """`names` from one `runner.infer(feeds)` of an active polygraphy runner, as arrays of their own.

    "Runners may reuse these output buffers" (polygraphy BaseRunner.infer): TrtRunner returns views
    of host buffers it overwrites on the next call, so without a copy several batches would all
    read as the last one.
    """
    outputs = runner.infer(feeds)
    return {name: np.array(outputs[name], copy=True) for name in names}


# ---------------------------------------------------------------------------------------------
# Building and running (needs TensorRT)


@dataclass
class TrtEngine:
    model_path: Path
    engine: Any
    settings: RuntimeSettings
    artifact: Path | None
    input_specs: list
    output_names: list[str]
    layers: list[LayerPrecision] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    runtime: str = "tensorrt"
    device: str = "cuda"
    _runner: Any = None

    def runner(self, name: str) -> Any:
        from polygraphy.backend.trt import TrtRunner

        if self.engine is None:
            raise TaoQcError(f"{self.model_path.name}: the TensorRT engine was closed")
        return TrtRunner(self.engine, name=name)

    def _active(self) -> Any:
        if self._runner is None:
            runner = self.runner(f"{self.model_path.stem}-trt")
            runner.activate()
            self._runner = runner
        return self._runner

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds_fit(feeds, self.profiles, self.model_path.name)
        return collect_outputs(self._active(), feeds, self.output_names)

    def latency(self, feeds: dict[str, np.ndarray], *, warmup: int, runs: int):
        """Inputs copied to the device once; outputs stay there: no host transfer in the timed loop."""
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        check_feeds_fit(feeds, self.profiles, self.model_path.name)
        runner = self._active()
        device_feeds = {}
        for name, array in feeds.items():
            device = cuda.DeviceArray(shape=array.shape, dtype=DataType.from_dtype(array.dtype))
            device.copy_from(np.ascontiguousarray(array))
            device_feeds[name] = device
        try:
            # check_inputs=False: the metadata check is host-side work that is not the engine's time.
            call = lambda: runner.infer(device_feeds, check_inputs=False, copy_outputs_to_host=False)  # noqa: E731
            times = time_calls(call, warmup=warmup, runs=runs)
        finally:
            for array in device_feeds.values():
                array.free()
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        return summarize(times, batch, warmup=warmup, model=str(self.model_path), runtime=self.runtime,
                         threads=None, device="cuda")

    def close(self) -> None:
        """Release the execution context, stream and buffers of the runner `run`/`latency` used, and
        the engine itself. Runners handed out by `runner()` are their users' to deactivate."""
        runner, self._runner = self._runner, None
        if runner is not None and runner.is_active:
            runner.deactivate()
        self.engine = None

    def __enter__(self) -> TrtEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TensorRT:
    name = "tensorrt"

    def available(self) -> bool:
        return tensorrt_available()

    def build(self, model_path: Path, settings: RuntimeSettings) -> TrtEngine:
        import onnx

        trt = import_tensorrt()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise InputError(f"{model_path} does not exist")
        proto = onnx.load(str(model_path), load_external_data=False)
        inputs = model_inputs(proto)
        network_path, precision = model_path, "from Q/DQ in the graph"
        scratch = None
        if not has_qdq(proto):
            if settings.fp16_baseline:
                if settings.save_artifact:
                    target = artifact_path(model_path, settings, FP16_SUFFIX)
                else:
                    scratch = tempfile.TemporaryDirectory(prefix="tao-qc-trt-")
                    target = Path(scratch.name) / f"{model_path.stem}{FP16_SUFFIX}"
                network_path = fp16_graph(model_path, target)
                precision = "fp16 graph (AutoCast)"
            else:
                precision = "fp32 graph"
        try:
            return self._build(trt, model_path, proto, inputs, network_path, precision, settings)
        finally:
            if scratch is not None:
                scratch.cleanup()

    def _build(self, trt: Any, model_path: Path, proto: Any, inputs: list, network_path: Path, precision: str,
               settings: RuntimeSettings) -> TrtEngine:
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxPath,
            Profile,
        )

        device = cuda_device_name()
        cache = timing_cache_path(settings, device=device, tensorrt_version=trt.__version__)
        cache.parent.mkdir(parents=True, exist_ok=True)
        recorded = build_settings(settings, inputs, model_path=model_path, network_path=network_path,
                                  precision=precision, timing_cache=cache, device=device)

        profile = Profile()
        for name, shapes in recorded["profiles"].items():
            profile.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
        config = CreateConfig(
            tf32=recorded["tf32"],
            memory_pool_limits={trt.MemoryPoolType.WORKSPACE: recorded["workspace_bytes"]},
            profiles=[profile] if recorded["profiles"] else None,
            load_timing_cache=str(cache) if cache.exists() else None,
            profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        )
        network = NetworkFromOnnxPath(str(network_path), strongly_typed=True)
        with tensorrt_failures(f"{model_path.name}: TensorRT {trt.__version__} cannot build an engine from it"):
            engine = EngineFromNetwork(network, config, save_timing_cache=str(cache))()

        layers = inspect_layers(trt, engine, recorded["profiles"])
        recorded["tensorrt_version"] = trt.__version__
        recorded["layer_precisions"] = precision_summary(layers)

        artifact = None
        if settings.save_artifact:
            artifact = artifact_path(model_path, settings, ENGINE_SUFFIX)
            atomic_write_bytes(artifact, bytes(engine.serialize()))
            atomic_write_text(artifact.with_name(artifact.name[: -len(ENGINE_SUFFIX)] + SETTINGS_SUFFIX), json.dumps(recorded, indent=2))
            atomic_write_text(artifact.with_name(artifact.name[: -len(ENGINE_SUFFIX)] + LAYERS_SUFFIX),
                              json.dumps([row.to_dict() for row in layers], indent=2))
        log.info("%s: TensorRT %s engine, layers by precision: %s", model_path.name, trt.__version__, recorded["layer_precisions"])
        return TrtEngine(
            model_path=model_path,
            engine=engine,
            settings=settings,
            artifact=artifact,
            input_specs=inputs,
            output_names=[output.name for output in proto.graph.output],
            layers=layers,
            build=recorded,
            profiles=recorded["profiles"],
        )
