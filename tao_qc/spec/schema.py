"""The `quantize` spec: validated once, at the edge, into typed objects.

Everything past `load_spec` receives a `QuantizeSpec`, never a raw mapping. Every error is a
`SpecError` whose message is one line: `q.yaml:14:7: quantize.layers[2].weights.dtype: 'int4' is not
supported (valid: int8, fp8_e4m3fn, fp8_e5m2, native)`.

Relative paths in a spec file are resolved against the file's own folder, so a spec and its data can
move together; paths in a dict are resolved against the working directory.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tao_qc.errors import SpecError
from tao_qc.spec.backend_params import backend_parameters
from tao_qc.spec.cpu import CPU_SETTINGS
from tao_qc.spec.datasets import label_problem

log = logging.getLogger("tao_qc.spec")

DTYPES = ("int8", "fp8_e4m3fn", "fp8_e5m2", "native")
DTYPE_ALIASES = {"float8_e4m3fn": "fp8_e4m3fn", "float8_e5m2": "fp8_e5m2"}
BACKENDS = ("torchao", "modelopt.pytorch", "modelopt.onnx", "modelopt")
MODES = ("weight_only_ptq", "static_ptq")
ALGORITHMS = ("minmax", "entropy", "max", "percentile", "auto")
CORRECTIONS = ("bias", "adaround")
ACCURACY_STEPS = ("clip", "ranges", "corrections", "float")
TARGETS = ("tensorrt", "onnxruntime")
FLOAT_DTYPES = ("auto", "fp32", "fp16")
RUNTIMES = ("onnxruntime", "tensorrt")
LAYOUTS = ("NCHW", "NHWC")
COLORS = ("auto", "rgb", "bgr", "gray")
TASKS = ("auto", "classification", "detection", "dense")
BACKEND_MODES = {"torchao": "weight_only_ptq", "modelopt.pytorch": "static_ptq", "modelopt.onnx": "static_ptq"}
_DEVICE_RE = re.compile(r"^(cpu|cuda|auto|cuda:\d+)$")

# Messages already printed this process: deprecations warn once, not once per load.
_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def did_you_mean(value: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.6)
    if not close:
        lowered = {v.lower(): v for v in valid}
        if str(value).lower() in lowered:
            close = [lowered[str(value).lower()]]
    return f"; did you mean '{close[0]}'?" if close else ""


def _choice(valid: tuple[str, ...], aliases: Mapping[str, str] | None = None):
    """A validator accepting one of `valid` (or an alias), with a message naming every option."""
    aliases = dict(aliases or {})

    def check(value: Any) -> str:
        if isinstance(value, str):
            value = aliases.get(value, value)
            if value in valid:
                return value
        shown = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        raise PydanticCustomError(
            "tao_choice",
            "{shown} is not supported (valid: {valid}){hint}",
            {"shown": shown, "valid": ", ".join(valid), "hint": did_you_mean(str(value), valid)},
        )

    return BeforeValidator(check)


def _device(value: Any) -> str:
    if isinstance(value, str) and _DEVICE_RE.match(value):
        return value
    raise PydanticCustomError(
        "tao_choice", "{shown} is not a device (valid: cuda, cpu, cuda:N, auto)", {"shown": repr(value)}
    )


def _pattern_list(value: Any) -> Any:
    if isinstance(value, str):
        raise PydanticCustomError(
            "tao_type", "expected a list of patterns, got the string {shown} (write [{shown}])", {"shown": repr(value)}
        )
    return value


Dtype = Annotated[str, _choice(DTYPES, DTYPE_ALIASES)]
Backend = Annotated[str, _choice(BACKENDS)]
Mode = Annotated[str, _choice(MODES)]
Algorithm = Annotated[str, _choice(ALGORITHMS)]
Target = Annotated[str, _choice(TARGETS)]
FloatDtype = Annotated[str, _choice(FLOAT_DTYPES)]
RuntimeName = Annotated[str, _choice(RUNTIMES)]
Layout = Annotated[str, _choice(LAYOUTS)]
Color = Annotated[str, _choice(COLORS)]
Task = Annotated[str, _choice(TASKS)]
CpuSetting = Annotated[str, _choice(CPU_SETTINGS)]
Device = Annotated[str, BeforeValidator(_device)]
PatternList = Annotated[list[str], BeforeValidator(_pattern_list)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DtypeSpec(_Strict):
    dtype: Dtype


class LayerEntry(_Strict):
    module_name: str = Field(min_length=1)
    weights: DtypeSpec | None = None
    activations: DtypeSpec | None = None


def _correction(value: Any) -> Any:
    """`bias` is short for `{method: bias}`."""
    return {"method": value} if isinstance(value, str) else value


class CorrectionSpec(_Strict):
    """Extension: one weight correction after calibration (no data beyond the calibration data)."""

    method: Annotated[str, _choice(CORRECTIONS)]
    samples: int = Field(default=16, ge=1)  # the first N calibration samples it measures on
    # adaround: the layers with the largest output error (quantized inputs against FP32's outputs)
    layers: int = Field(default=8, ge=1)
    nodes: PatternList = Field(default_factory=list)  # adaround: these nodes instead (patterns)
    iterations: int = Field(default=300, ge=1)  # adaround: optimizer steps per layer
    max_seconds: float = Field(default=120.0, gt=0)  # the bound on the whole correction's time
    max_runs: int | None = Field(default=None, ge=1)  # bias: runs of the graph, at most (default one per depth)


def _steps(value: Any) -> Any:
    if isinstance(value, list) and "float" in value and value[-1] != "float":
        raise PydanticCustomError("tao_steps", "'float' must be the last step (got {shown})", {"shown": value})
    if isinstance(value, list) and len(set(map(str, value))) != len(value):
        raise PydanticCustomError("tao_steps", "a step is listed twice (got {shown})", {"shown": value})
    return value


class CalibrationSpec(_Strict):
    """Extension: where calibration data comes from and how images are preprocessed."""

    data: str | None = None  # .npz, .npy, an image folder, or the word `random`
    max_samples: int = Field(default=128, ge=1)
    batch_size: int = Field(default=1, ge=1)
    # Image folders only. mean/std are in 0-255 pixel units: x = (pixel - mean) / std.
    size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [255.0])
    layout: Layout = "NCHW"
    color: Color = "auto"
    # algorithm: percentile (ours): activation ranges clipped at this percentile of |x| (also the
    # first step accuracy fallback tries).
    percentile: float = Field(default=99.9, gt=50, le=100)
    # algorithm: auto (ours): the percentiles tried beside max, MSE and entropy for each activation,
    # and the calibration samples each candidate range is scored on (tao_qc/passes/choose_ranges.py).
    auto_percentiles: list[float] = Field(default_factory=lambda: [99.9, 99.99, 99.999], min_length=1)
    score_samples: int = Field(default=16, ge=1)
    # Weight corrections after calibration, in order (tao_qc/passes/correct_bias.py, tao_qc/passes/round_weights.py).
    corrections: list[Annotated[CorrectionSpec, BeforeValidator(_correction)]] = Field(default_factory=list)


class CompareSpec(_Strict):
    """Extension: the FP32-vs-quantized check that ends `compile` (and drives `tao-qc compare`)."""

    runtime: RuntimeName = "onnxruntime"
    data: str | None = None  # default: the calibration data
    labels: str | None = None
    atol: float | None = Field(default=None, ge=0)
    rtol: float | None = Field(default=None, ge=0)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    fail_on_mismatch: bool = True
    # What the outputs are: `auto` is detection when a decoder is given, else classification for
    # [N, C] outputs and dense for the rest; `dense` never reads a 2-D output as class scores.
    task: Task = "auto"
    decoder: str | None = None  # detection: rtdetr, boxes_scores, or module:function
    annotations: str | None = None  # detection: a COCO json, one image per sample in order
    score_threshold: float | None = Field(default=None, ge=0, le=1)  # detection: default 0.5

    @field_validator("decoder")
    @classmethod
    def _known_decoder(cls, value: str | None) -> str | None:
        if value is None or value in BUILTIN_DECODERS or USER_DECODER_RE.match(value):
            return value
        raise PydanticCustomError(
            "tao_choice", "{shown} is not a decoder (valid: rtdetr, boxes_scores, or module:function){hint}",
            {"shown": repr(value), "hint": did_you_mean(value, BUILTIN_DECODERS)},
        )

    @model_validator(mode="after")
    def _detection_fields(self) -> CompareSpec:
        if self.task == "detection" and self.decoder is None:
            raise PydanticCustomError(
                "tao_missing", "task 'detection' needs a decoder (valid: rtdetr, boxes_scores, or module:function)", {})
        if self.task in ("classification", "dense"):
            given = [name for name in ("decoder", "annotations", "score_threshold") if getattr(self, name) is not None]
            if given:
                raise PydanticCustomError(
                    "tao_conflict", "{fields}: only for task 'detection' (task is '{task}')",
                    {"fields": ", ".join(given), "task": self.task})
        return self

    @property
    def resolved_task(self) -> str:
        """`auto` made concrete where it can be without the outputs: detection when a decoder is set."""
        if self.task == "auto" and self.decoder is not None:
            return "detection"
        return self.task


FALLBACK_MODES = ("auto", "off")
SPEED_MODES = ("auto", "check", "search", "off")
ACTIVATION_RANGES = ("auto", "asymmetric", "symmetric")
EXECUTORS = ("local", "ray")
BUILTIN_METRICS = ("cosine", "top1_agreement", "top1_accuracy", "map")
BUILTIN_DECODERS = ("rtdetr", "boxes_scores")  # compare.decoder
USER_DECODER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_USER_METRIC_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _off_from_yaml(value: Any) -> Any:
    """YAML 1.1 reads an unquoted `off` as false."""
    return "off" if value is False else value


def _fallback_mode(value: Any) -> Any:
    """YAML 1.1 reads an unquoted `off` as false (and `on` as true): `fallback: off` means what it says."""
    return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


def _metric(value: Any) -> Any:
    if value is None or (isinstance(value, str) and (value in BUILTIN_METRICS or _USER_METRIC_RE.match(value))):
        return value
    raise PydanticCustomError(
        "tao_choice",
        "{shown} is not a metric (valid: {valid}, or module:function for your own){hint}",
        {"shown": repr(value), "valid": ", ".join(BUILTIN_METRICS), "hint": did_you_mean(str(value), BUILTIN_METRICS)},
    )


class AccuracySpec(_Strict):
    """Extension: what "accurate enough" means, and what compile does when the quantized model is not."""

    data: str | None = None  # default: compare.data, else a part of the calibration data held back
    labels: str | None = None
    metric: Annotated[str | None, BeforeValidator(_metric)] = None  # default: the comparison's own checks
    min: float | None = None
    max_drop: float | None = Field(default=None, ge=0)
    fallback: Annotated[str, _choice(FALLBACK_MODES), BeforeValidator(_fallback_mode)] = "auto"
    max_float_fraction: float = Field(default=0.25, ge=0, le=1)
    executor: Annotated[str, _choice(EXECUTORS)] = "local"
    ray_address: str = "auto"
    workers: int | None = Field(default=None, ge=1)  # local executor: processes (default: physical cores)
    ranking_samples: int = Field(default=32, ge=1)  # the worst-error samples sensitivity is ranked on
    # What fallback tries when the target is missed, in order; each step is kept where it measures
    # better, and the first that meets the target ends the search (`float` keeps nodes in float).
    steps: Annotated[list[Annotated[str, _choice(ACCURACY_STEPS)]], BeforeValidator(_steps)] = Field(
        default_factory=lambda: ["clip", "float"], min_length=1)


class ShapeProfile(_Strict):
    min: list[int]
    opt: list[int]
    max: list[int]


class TensorRTSpec(_Strict):
    """Extension: engine build settings used where TensorRT is the runtime."""

    workspace_gib: float = Field(default=4.0, gt=0)
    timing_cache: str | None = None
    # TensorRT's own default (BuilderFlag.TF32 is on unless cleared); polygraphy's CreateConfig clears it unless asked.
    tf32: bool = True
    fp16_baseline: bool = True
    profiles: dict[str, ShapeProfile] = Field(default_factory=dict)


class OnnxRuntimeSpec(_Strict):
    """Extension: what `target: onnxruntime` compiles for (tao_qc/spec/cpu.py)."""

    # The instruction set ORT's integer kernels run on: auto (the machine that compiles) or one named.
    # avx2 and avx512 (no VNNI) get 7-bit weights, which their saturating U8S8 kernels compute exactly.
    cpu: CpuSetting = "auto"
    # Compare ORT's fused integer kernels with the graph's own Q/DQ arithmetic on the comparison data.
    kernel_fidelity: bool = True
    # Speed on this machine (tao_qc/speed): `check` times the model against FP32 and, where it is
    # slower, says where the time goes; `search` also times each class of quantized unit (depthwise
    # Convs, few-channel Convs, ...) in float and keeps float the classes that are faster so, twice
    # (the model then depends on timings); `auto` searches where INT8 is not clearly faster than
    # FP32 (TAO_QC_SPEED=check makes it `check`); `off`.
    speed: Annotated[str, _choice(SPEED_MODES), BeforeValidator(_off_from_yaml)] = "auto"
    # Each uint8 activation grid: `asymmetric` (the data's own [min, max] within modelopt's +-amax, the
    # zero point where 0 falls: tao_qc/passes/measure_activation_bounds.py), up to twice as fine a step as
    # `symmetric` (modelopt's +-amax, zero point 128), which is what TensorRT-style grids give. `auto`:
    # asymmetric, and where accuracy trials run, symmetric too, the better measured kept (the finer
    # step can cost more than it gives where unseen data goes past the calibration data's bounds).
    activation_ranges: Annotated[str, _choice(ACTIVATION_RANGES)] = "auto"


class QuantizeSpec(_Strict):
    backend: Backend = "torchao"
    mode: Mode = "weight_only_ptq"
    algorithm: Algorithm = "minmax"
    default_layer_dtype: Dtype = "native"
    default_activation_dtype: Dtype = "native"
    layers: list[LayerEntry] = Field(default_factory=list)
    skip_names: PatternList = Field(default_factory=list)
    model_path: str | None = None
    results_dir: str | None = None
    backend_kwargs: dict[str, Any] = Field(default_factory=dict)
    # The reference defaults to cuda; auto behaves the same on a GPU machine and still works on a CPU one.
    device: Device = "auto"
    # Extensions
    target: Target = "tensorrt"
    float_dtype: FloatDtype = "auto"  # everything not quantized; see resolved_float_dtype
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    compare: CompareSpec = Field(default_factory=CompareSpec)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec)
    onnxruntime: OnnxRuntimeSpec = Field(default_factory=OnnxRuntimeSpec)

    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The file this spec was loaded from, if any."""
        return self._source

    @property
    def resolved_float_dtype(self) -> str:
        """`fp16` or `fp32`: `float_dtype`, with `auto` meaning fp16 for target tensorrt (its users
        compare INT8 against an FP16 engine, so the quantized engine's float layers must not run
        FP32) and fp32 for target onnxruntime (its CPU provider lacks most fp16 kernels)."""
        if self.float_dtype != "auto":
            return self.float_dtype
        return "fp16" if self.target == "tensorrt" else "fp32"

    def float_dtype_problem(self) -> str | None:
        """Why `float_dtype` cannot be honoured for this target, or None."""
        if self.float_dtype == "fp16" and self.target == "onnxruntime":
            return ("'fp16' is not supported with target onnxruntime (its placement builds ONNX Runtime's integer "
                    "kernels around fp32 scales, and its CPU provider lacks most fp16 kernels; valid: auto, fp32)")
        return None

    @property
    def calibration_algorithm(self) -> str:
        """`max` and `minmax` are the same max-abs calibration; this is the one spelling used inward.
        `percentile` calibrates with max, then clips activation ranges (tao_qc/passes/clip_ranges.py)."""
        return "minmax" if self.algorithm in ("max", "minmax") else self.algorithm

    def resolve_backend(self, model_path: str | Path | None = None) -> QuantizeSpec:
        """A copy with the `modelopt` short form resolved by the model's format.

        `modelopt` means `modelopt.onnx` for an `.onnx` input and `modelopt.pytorch` otherwise.
        """
        if self.backend != "modelopt":
            return self
        path = model_path or self.model_path
        if path is None:
            raise SpecError(
                "'modelopt' needs a model to choose between modelopt.onnx and modelopt.pytorch "
                "(give model_path, or write the backend in full)",
                key="quantize.backend",
                location=self._source,
            )
        resolved = "modelopt.onnx" if str(path).lower().endswith(".onnx") else "modelopt.pytorch"
        return self._copy_with(backend=resolved)

    def for_onnx_pipeline(self) -> QuantizeSpec:
        """The spec as the ONNX pipeline reads it.

        A spec that never named a backend means "quantize this ONNX model" when handed to `compile`
        with an `.onnx` input, so it runs as modelopt.onnx static PTQ; an explicit torchao or
        modelopt.pytorch backend cannot quantize an ONNX graph and is an error.
        """
        spec = self.resolve_backend(".onnx")
        if "backend" not in self.model_fields_set:
            log.info("backend not set: using modelopt.onnx (static_ptq) for the ONNX pipeline")
            return spec._copy_with(backend="modelopt.onnx", mode="static_ptq")
        if spec.backend != "modelopt.onnx":
            raise SpecError(
                f"'{spec.backend}' cannot quantize an ONNX model (valid for .onnx input: modelopt.onnx, modelopt)",
                key="quantize.backend",
                location=self._source,
            )
        return spec

    def _copy_with(self, **changes: Any) -> QuantizeSpec:
        data = self.model_dump()
        data.update(changes)
        copy = QuantizeSpec.model_validate(data)
        object.__setattr__(copy, "__pydantic_fields_set__", set(self.model_fields_set) | set(changes))
        copy._source = self._source
        return copy

    def normalized(self) -> dict[str, Any]:
        """Plain data with every default filled in and every alias normalized (for reports)."""
        return self.model_dump(mode="json")


class TaskSpec(_Strict):
    """An `evaluate` or `inference` section: run a task, on the quantized artifact if asked."""

    is_quantized: bool = False
    checkpoint: str | None = None
    data: str | None = None
    labels: str | None = None
    batch_size: int = Field(default=32, ge=1)
    results_dir: str | None = None


class ExperimentSpec(BaseModel):
    """A whole experiment file: the `quantize` section plus the tasks that use its artifact.

    Other top-level sections (model, dataset, train, ...) belong to other tools and are kept as-is.
    """

    model_config = ConfigDict(extra="allow")

    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    evaluate: TaskSpec | None = None
    inference: TaskSpec | None = None


# --------------------------------------------------------------------------------------------
# Loading


_PATH_FIELDS = ("model_path", "results_dir")
_NESTED_PATH_FIELDS = {"calibration": ("data",), "compare": ("data", "labels", "annotations"),
                       "accuracy": ("data", "labels"), "tensorrt": ("timing_cache",)}


def _resolve_paths(section: dict[str, Any], base: Path) -> None:
    def fix(owner: dict[str, Any], key: str) -> None:
        value = owner.get(key)
        if isinstance(value, str) and value and value != "random":
            path = Path(value).expanduser()
            owner[key] = str(path if path.is_absolute() else (base / path))

    for key in _PATH_FIELDS:
        fix(section, key)
    for sub, keys in _NESTED_PATH_FIELDS.items():
        if isinstance(section.get(sub), dict):
            for key in keys:
                fix(section[sub], key)


class _Marks:
    """Line/column of every key and value in a YAML document, addressed by key path."""

    def __init__(self, filename: str | None):
        self.filename = filename
        self.keys: dict[tuple, Any] = {}
        self.values: dict[tuple, Any] = {}

    def walk(self, node: yaml.Node, path: tuple = ()) -> None:
        self.values[path] = node.start_mark
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise SpecError(
                        f"duplicate key '{key}' (first at line {seen[key].line + 1})",
                        key=_key_path(path + (key,)),
                        location=self.at_mark(key_node.start_mark),
                    )
                seen[key] = key_node.start_mark
                self.keys[path + (key,)] = key_node.start_mark
                self.walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, path + (index,))

    def at_mark(self, mark: Any) -> str | None:
        if self.filename is None:
            return None
        return f"{self.filename}:{mark.line + 1}:{mark.column + 1}"

    def at(self, path: tuple, prefer_key: bool = False) -> str | None:
        if self.filename is None:
            return None
        for candidate in (path[:i] for i in range(len(path), -1, -1)):
            order = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            for table in order:
                if candidate in table:
                    return self.at_mark(table[candidate])
        return self.filename


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping found at `loc` (None where it is not a model)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _describe(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), f"{type(value).__name__} {value!r}"
    )


def _error_message(err: dict[str, Any], root: type[BaseModel]) -> tuple[str, bool]:
    """One error's message, and whether it points at a key (rather than a value)."""
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind.startswith("tao_"):
        return err["msg"], False
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        valid = tuple(model.model_fields) if model else ()
        return f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), valid)} (valid: {', '.join(valid)})", True
    if kind == "missing":
        return "required key is missing", True
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {_describe(value)}", False
    if kind == "list_type":
        return f"expected a list, got {_describe(value)}", False
    if kind in ("string_type",):
        return f"expected a string, got {_describe(value)}", False
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_describe(value)}", False
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_describe(value)}", False
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_describe(value)}", False
    return f"{err['msg']} (got {value!r})", False


def _validation_to_spec_error(
    exc: ValidationError, root: type[BaseModel], section: str, mark_prefix: tuple, marks: _Marks
) -> SpecError:
    """The first validation error as a SpecError; `section` names the key path's head whether or
    not the file spells it (a bare `quantize` section is still reported as `quantize.…`)."""
    errors = exc.errors()
    message, at_key = _error_message(errors[0], root)
    loc = tuple(errors[0]["loc"])
    more = f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return SpecError(
        message + more, key=_key_path((section,) + loc), location=marks.at(mark_prefix + loc, prefer_key=at_key)
    )


def _cross_check(spec: QuantizeSpec, marks: _Marks, prefix: tuple) -> None:
    def fail(field: str, message: str) -> None:
        raise SpecError(message, key=_key_path(("quantize", field)), location=marks.at(prefix + (field,)))

    if "mode" not in spec.model_fields_set:
        # No mode written: take the one mode this backend supports (both modelopt backends: static).
        default = "weight_only_ptq" if spec.backend == "torchao" else "static_ptq"
        object.__setattr__(spec, "mode", default)
    else:
        supported = "weight_only_ptq" if spec.backend == "torchao" else "static_ptq"
        if spec.mode != supported:
            fail("mode", f"backend '{spec.backend}' does not support mode '{spec.mode}' (it supports only '{supported}')")

    problem = spec.float_dtype_problem()
    if problem:
        fail("float_dtype", problem)

    for field, where in (("default_layer_dtype", "weights"), ("default_activation_dtype", "activations")):
        if field in spec.model_fields_set:
            warn_once(f"quantize.{field} is deprecated and ignored: set quantize.layers[*].{where}.dtype instead")

    accuracy = spec.accuracy
    if accuracy.min is not None and accuracy.max_drop is not None:
        raise SpecError("give min or max_drop, not both (min: the metric's floor; max_drop: the largest drop from FP32)",
                        key="quantize.accuracy.max_drop", location=marks.at(prefix + ("accuracy", "max_drop")))
    problem = label_problem(spec)
    if problem is not None:
        field_path, message = problem
        raise SpecError(message, key=_key_path(("quantize", *field_path)), location=marks.at(prefix + field_path))
    if accuracy.metric is None and (accuracy.min is not None or accuracy.max_drop is not None):
        raise SpecError("min/max_drop need a metric to apply to (valid: cosine, top1_agreement, top1_accuracy, map, "
                        "or module:function); without one the comparison's own checks decide",
                        key="quantize.accuracy.metric", location=marks.at(prefix + ("accuracy",)))

    if "onnxruntime" in spec.model_fields_set and spec.target != "onnxruntime":
        warn_once(f"quantize.onnxruntime applies to target onnxruntime only; target is {spec.target}, so it is ignored")

    if spec.backend == "torchao" and any(entry.activations is not None for entry in spec.layers):
        warn_once("backend torchao quantizes weights only: quantize.layers[*].activations is ignored")

    if spec.backend_kwargs and spec.backend != "modelopt":
        valid = backend_parameters(spec.backend)
        if valid is not None:
            for key in spec.backend_kwargs:
                if key not in valid:
                    raise SpecError(
                        f"unknown key '{key}' for backend {spec.backend}{did_you_mean(key, valid)} "
                        f"(valid: {', '.join(valid)})",
                        key=_key_path(("quantize", "backend_kwargs", key)),
                        location=marks.at(prefix + ("backend_kwargs", key), prefer_key=True),
                    )


def _find_section(document: Any, marks: _Marks) -> tuple[Any, tuple]:
    if document is None:
        raise SpecError("the spec is empty (expected a mapping with a 'quantize' section)", location=marks.filename)
    if not isinstance(document, dict):
        raise SpecError(
            f"expected a mapping with a 'quantize' section at the top, got {_describe(document)}",
            location=marks.at(()),
        )
    if "quantize" in document:
        return document["quantize"], ("quantize",)
    fields = set(QuantizeSpec.model_fields)
    if not document or fields & set(document):
        return document, ()  # the section alone (an empty mapping: all defaults)
    raise SpecError(
        f"no 'quantize' section (top-level keys: {', '.join(map(str, document)) or 'none'})",
        location=marks.at(()),
    )


def _read_yaml(path: Path) -> tuple[Any, _Marks]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"spec path is a folder, not a YAML file: {path}") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec file is not UTF-8 text: {path}") from None
    marks = _Marks(str(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            marks.walk(node)
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", location=marks.at_mark(mark) if mark else str(path)) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", location=str(path)) from None
    return document, marks


def _to_plain(cfg: Any) -> Any:
    """OmegaConf DictConfig / any Mapping -> plain dicts and lists (without importing OmegaConf)."""
    if hasattr(cfg, "_metadata") and hasattr(cfg, "_get_node"):
        from omegaconf import (
            OmegaConf,  # only reachable when the user already has OmegaConf
        )

        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {key: _to_plain(value) for key, value in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_to_plain(value) for value in cfg]
    return cfg


def _validate_section(section: Any, marks: _Marks, prefix: tuple, base: Path) -> QuantizeSpec:
    if isinstance(section, dict):
        section = dict(section)
        _resolve_paths(section, base)
    elif section is None:
        section = {}
    try:
        spec = QuantizeSpec.model_validate(section)
    except ValidationError as exc:
        raise _validation_to_spec_error(exc, QuantizeSpec, "quantize", prefix, marks) from None
    spec._source = marks.filename
    _cross_check(spec, marks, prefix)
    return spec


def load_spec(source: Union[str, Path, Mapping[str, Any], QuantizeSpec, Any]) -> QuantizeSpec:
    """Load and validate a `quantize` spec from a YAML path, a mapping (with or without the
    `quantize` key), an OmegaConf config, or an existing `QuantizeSpec` (returned as is)."""
    if isinstance(source, QuantizeSpec):
        return source
    document, marks, base = _read_document(source)
    section, prefix = _find_section(document, marks)
    return _validate_section(section, marks, prefix, base)


def _read_document(source: Union[str, Path, Mapping[str, Any], Any]) -> tuple[Any, "_Marks", Path]:
    """(plain document, YAML positions, the folder relative paths start from)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        document, marks = _read_yaml(path)
        return document, marks, path.resolve().parent
    return _to_plain(source), _Marks(None), Path.cwd()


def load_experiment(source: Union[str, Path, Mapping[str, Any]]) -> ExperimentSpec:
    """Load a whole experiment file: `quantize` plus optional `evaluate` / `inference` sections."""
    document, marks, base = _read_document(source)
    section, prefix = _find_section(document, marks)
    quantize = _validate_section(section, marks, prefix, base)
    tasks: dict[str, TaskSpec | None] = {}
    for name in ("evaluate", "inference"):
        raw = document.get(name) if prefix else None
        if raw is None:
            continue
        if isinstance(raw, dict):
            raw = dict(raw)
            for key in ("checkpoint", "data", "labels", "results_dir"):
                if isinstance(raw.get(key), str):
                    candidate = Path(raw[key]).expanduser()
                    raw[key] = str(candidate if candidate.is_absolute() else base / candidate)
        try:
            tasks[name] = TaskSpec.model_validate(raw)
        except ValidationError as exc:
            raise _validation_to_spec_error(exc, TaskSpec, name, (name,), marks) from None
    others = {k: v for k, v in document.items() if k not in ("quantize", "evaluate", "inference")} if prefix else {}
    return ExperimentSpec(quantize=quantize, **tasks, **others)
