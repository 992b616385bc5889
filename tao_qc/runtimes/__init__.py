"""Runtime adapters: ONNX Runtime and TensorRT engines.

`get_runtime("onnxruntime" | "tensorrt")` gives an adapter; `adapter.build(model_path, RuntimeSettings(...))`
gives an `Engine` that runs feeds, exposes a polygraphy runner and times itself. The adapters import
their heavy libraries only when used; TensorRT's absence is a one-line error.
"""

from tao_qc.runtimes.base import Engine, Runtime, RuntimeSettings
from tao_qc.runtimes.registry import get_runtime

__all__ = ["Engine", "Runtime", "RuntimeSettings", "get_runtime"]
