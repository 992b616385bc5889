"""The runtime adapters by name."""

from __future__ import annotations

from tao_qc.errors import InputError, MissingDependencyError
from tao_qc.runtimes.base import RUNTIME_NAMES, Runtime
from tao_qc.runtimes.onnxruntime import OnnxRuntime
from tao_qc.runtimes.tensorrt import TENSORRT_MISSING, TensorRT


def get_runtime(name: str) -> Runtime:
    """The runtime adapter called `name`; an unknown or uninstalled one is a one-line error."""
    if name == "onnxruntime":
        runtime: Runtime = OnnxRuntime()
    elif name == "tensorrt":
        runtime = TensorRT()
    else:
        raise InputError(f"--runtime: {name!r} is not a runtime (valid: {', '.join(RUNTIME_NAMES)})")
    if not runtime.available():
        if name == "tensorrt":
            raise MissingDependencyError(TENSORRT_MISSING)
        raise MissingDependencyError(f"{name} is not installed (pip install tao-qc)")
    return runtime
