"""Models and data shared by the runtimes, compare, latency and report tests, built once per test run.

- digits: scikit-learn's labelled 8x8 digits, upscaled to 20x20 and padded to 28x28 (MNIST framing),
  pixels 0-255 as mnist_cntk expects; saved as an .npz named by mnist_cntk's input, labels as .npy.
- mnist_fp32: the vendored mnist_cntk model moved to opset 13 with initializers no longer listed as
  inputs (modelopt's checker rejects the old-IR form), numerically the same model.
- mnist_int8 / resnet18_int8: modelopt.onnx INT8 (max calibration, CPU, fp32 high precision).
  Quantization runs in a child process: importing modelopt.onnx patches onnxruntime.quantization,
  which must not leak into other tests of this process.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _compile_helpers import MNIST_CNTK, digits

from tao_qc.runtimes.base import cuda_device_present
from tao_qc.runtimes.tensorrt import tensorrt_available

# Tests of the message a user without TensorRT gets mean nothing where TensorRT is installed.
without_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
# Tests that build engines: wherever TensorRT and an NVIDIA GPU are present.
with_tensorrt_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (tensorrt_available() and cuda_device_present()), reason="needs TensorRT and an NVIDIA GPU"),
]

MNIST_INPUT = "Input3"


@dataclass(frozen=True)
class Assets:
    root: Path
    digits: Path  # .npz {Input3: float32[N,1,28,28]}
    labels: Path  # .npy int64[N]
    mnist_fp32: Path
    mnist_int8: Path
    mnist_corrupted: Path
    resnet18_fp32: Path
    resnet18_int8: Path


def modernize_mnist(source: Path, target: Path) -> Path:
    import onnx
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(source)), 13)
    initializers = {init.name for init in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def corrupt_weights(source: Path, target: Path, scale: float = 0.6, seed: int = 0) -> Path:
    """A copy whose Conv/MatMul weights carry Gaussian noise of `scale` times each tensor's std."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    weights = {node.input[1] for node in model.graph.node if node.op_type in ("Conv", "MatMul")}
    rng = np.random.default_rng(seed)
    for index, init in enumerate(model.graph.initializer):
        if init.name in weights:
            array = numpy_helper.to_array(init)
            noisy = array + rng.standard_normal(array.shape).astype(array.dtype) * scale * array.std()
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, init.name))
    onnx.save(model, str(target))
    return target


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from modelopt.onnx.quantization import quantize
    from tao_qc.testing import zoo

    root = sys.argv[1]
    def int8(source, target, data):
        quantize(source, quantize_mode="int8", calibration_data=data, calibration_method="max",
                 calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=target)

    digits = np.load(f"{root}/digits.npz")["Input3"]
    int8(f"{root}/mnist_fp32.onnx", f"{root}/mnist_int8.onnx", {"Input3": digits[:64]})

    torch.manual_seed(0)
    zoo.export_zoo("resnet18", f"{root}/resnet18.onnx", dynamic_batch=True)
    sample = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    int8(f"{root}/resnet18.onnx", f"{root}/resnet18_int8.onnx", {"input": sample})
    """
)


@functools.lru_cache(maxsize=None)
def build_assets(base: Path) -> Assets:
    root = Path(tempfile.mkdtemp(prefix="runtimes-", dir=base))
    images, labels = digits()
    np.savez(root / "digits.npz", **{MNIST_INPUT: images})
    np.save(root / "labels.npy", labels)
    mnist = modernize_mnist(MNIST_CNTK, root / "mnist_fp32.onnx")
    corrupt_weights(mnist, root / "mnist_corrupted.onnx")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"building INT8 test models failed:\n{child.stderr[-4000:]}")
    return Assets(
        root=root,
        digits=root / "digits.npz",
        labels=root / "labels.npy",
        mnist_fp32=mnist,
        mnist_int8=root / "mnist_int8.onnx",
        mnist_corrupted=root / "mnist_corrupted.onnx",
        resnet18_fp32=root / "resnet18.onnx",
        resnet18_int8=root / "resnet18_int8.onnx",
    )
