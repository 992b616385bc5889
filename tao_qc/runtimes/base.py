"""The small interface every runtime adapter shares: build an engine from an ONNX file, run it, time it.

A `Runtime` turns an ONNX path and `RuntimeSettings` into an `Engine`. Engines run numpy feeds, expose
a polygraphy runner (so comparison goes through polygraphy's `Comparator`), and time themselves the
way their runtime is best measured (`tao_qc.runtimes.timing` holds the shared statistics).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from tao_qc.errors import InputError
from tao_qc.spec import TensorRTSpec

if TYPE_CHECKING:
    from tao_qc.data import InputInfo
    from tao_qc.runtimes.timing import LatencyResult

RUNTIME_NAMES = ("onnxruntime", "tensorrt")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DEVICES = ("cpu", "cuda", "auto")


def physical_cores() -> int:
    """Physical cores (not hyper-threads) of this machine: the default intra-op thread count.

    Read from /proc/cpuinfo (unique (physical id, core id) pairs) because psutil is not a dependency;
    elsewhere the logical count is the fallback.
    """
    try:
        pairs, physical = set(), "0"
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    pairs.add((physical, value.strip()))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def cuda_device_present() -> bool:
    """A cheap check for an NVIDIA device node; importing CUDA libraries just to ask is slow and noisy."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


@dataclass(frozen=True)
class RuntimeSettings:
    """How an engine is built. The same settings are applied to every model of a comparison or bench."""

    threads: int | None = None  # intra-op threads; None: physical cores
    device: str = "auto"  # cpu | cuda | auto (cuda where a device and the provider are present)
    graph_optimization: str = "all"  # onnxruntime: disable | basic | extended | all
    artifact_dir: Path | None = None  # where engines / optimized models go; None: beside the model
    save_artifact: bool = False  # True: write the runtime's engine artifact (never into a models folder by surprise)
    # TensorRT only: FP32 models are converted to an FP16 graph first (the GPU baseline), see tensorrt.py.
    fp16_baseline: bool = True
    tensorrt: TensorRTSpec = field(default_factory=TensorRTSpec)
    # The batch sizes the engine will run at: a TensorRT engine's default optimization profile covers them.
    batch_sizes: tuple[int, ...] = ()
    # Full shapes of the data it will run (`tao_qc.ir.shapes`): sizes the model leaves open besides the
    # batch come from here (a TensorRT optimization profile needs them).
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads: {self.threads} is not a thread count (valid: 1 or more)")
        if any(size < 1 for size in self.batch_sizes):
            raise InputError(f"batch sizes {list(self.batch_sizes)}: each must be 1 or more")
        if self.device not in DEVICES:
            raise InputError(f"device: {self.device!r} is not supported (valid: {', '.join(DEVICES)})")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise InputError(
                f"graph optimization {self.graph_optimization!r} is not supported "
                f"(valid: {', '.join(GRAPH_OPTIMIZATION_LEVELS)})"
            )

    @property
    def intra_op_threads(self) -> int:
        return self.threads or physical_cores()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threads"] = self.intra_op_threads
        out["artifact_dir"] = str(self.artifact_dir) if self.artifact_dir else None
        out["tensorrt"] = self.tensorrt.model_dump()
        return out


@runtime_checkable
class Engine(Protocol):
    """A model ready to run on one runtime."""

    runtime: str
    model_path: Path
    device: str  # where it runs: cpu or cuda
    artifact: Path | None  # the runtime's saved form (optimized ONNX, .engine), if any
    input_specs: list[InputInfo]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def runner(self, name: str) -> Any:
        """A polygraphy runner (`BaseRunner`) over this engine, named `name`."""
        ...

    def latency(self, feeds: dict[str, np.ndarray], *, warmup: int, runs: int) -> LatencyResult: ...

    def close(self) -> None:
        """Release what the engine holds (device memory, contexts); it cannot run afterwards."""
        ...


@runtime_checkable
class Runtime(Protocol):
    name: str

    def available(self) -> bool: ...

    def build(self, model_path: Path, settings: RuntimeSettings) -> Engine: ...


def artifact_path(model_path: Path, settings: RuntimeSettings, suffix: str) -> Path:
    """`<artifact_dir or model dir>/<stem><suffix>`: where a runtime saves what it built."""
    folder = Path(settings.artifact_dir) if settings.artifact_dir else model_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{model_path.stem}{suffix}"
