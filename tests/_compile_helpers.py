"""Models and data shared by the pipeline, passes, compile and golden tests.

- MNIST_CNTK, CNN_MNIST_PYTORCH: the two small third-party models vendored in tests/assets/.
- digits: scikit-learn's labelled 8x8 digits upscaled to 20x20 and padded to 28x28 (MNIST framing),
  pixels 0-255 (mnist_cntk's scale); cnn_mnist_pytorch takes them divided by 255.
- zoo exports: small_cnn (BatchNorm + residual Add), transformer_block (MatMul/Softmax/LayerNorm),
  exported once per test session with fixed seeds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx

ASSETS = Path(__file__).resolve().parent / "assets"
MNIST_CNTK = ASSETS / "mnist_cntk.onnx"  # vendored copies (tests/assets/MANIFEST.tsv)
CNN_MNIST_PYTORCH = ASSETS / "cnn_mnist_pytorch.onnx"
MNIST_INPUT = "Input3"
PYTORCH_MNIST_INPUT = "0"


def third_party_model(file_name: str, request) -> Path:
    """A third-party model: the vendored copy where there is one, else from ../shared/models (the
    test skips where that folder is absent)."""
    vendored = ASSETS / file_name
    if vendored.is_file():
        return vendored
    return request.getfixturevalue("shared_models") / file_name


@functools.lru_cache(maxsize=None)
def digits() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    images = []
    for image in data.images:
        scaled = Image.fromarray((image * (255.0 / 16.0)).astype(np.float32)).resize((20, 20), Image.BILINEAR)
        images.append(np.pad(np.asarray(scaled, dtype=np.float32), 4))
    return np.stack(images)[:, None].astype(np.float32), data.target.astype(np.int64)


# ONNX Runtime 1.24's integer GEMM gives wrong sums for some shapes (a Conv with 10 inputs and 20
# outputs, like cnn_mnist_pytorch's second, among them), values that differ from process to process
# and from run to run on 2+ threads. For target onnxruntime, fit-ort-integer-kernels reshapes such
# Convs so the fused QLinearConv is right; the tests run the fused graph ORT really runs, and check
# it. Graphs placed for TensorRT get no such rewrite, so sessions keep to one thread: the same
# outputs on every run of a session.
def session(model: str | Path | onnx.ModelProto):
    """One-thread CPU session computing what the CPU the model was compiled for computes: ORT's fused
    integer kernels, or, where this machine's compute other integers than that CPU's (8-bit weights on
    a CPU whose pairs saturate: `tao_qc.spec.cpu.kernels_compute_as`), the graph's own Q/DQ
    arithmetic, as compile's comparison does. A test of this machine's own kernels uses
    `session_on_this_cpu`."""
    from tao_qc.evaluate.compare import computes_otherwise_here

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return _one_thread_session(model, fused=computes_otherwise_here(proto) is None)


def session_on_this_cpu(model: str | Path | onnx.ModelProto):
    """One-thread CPU session through this machine's fused integer kernels, whatever the model is for."""
    return _one_thread_session(model, fused=True)


def _one_thread_session(model: str | Path | onnx.ModelProto, *, fused: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def optimized_ops(path: Path, folder: Path) -> "collections.Counter":
    """The op types of the graph ONNX Runtime runs for `path` (its optimized model, saved in `folder`)."""
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{path.stem}.ort.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def predict(model, input_name: str, images: np.ndarray) -> np.ndarray:
    """Logits for each image, run one at a time (the MNIST models have a fixed batch of 1)."""
    runner = session(model)
    return np.concatenate([runner.run(None, {input_name: images[i : i + 1]})[0] for i in range(len(images))])


def export_zoo(name: str, directory: Path) -> Path:
    from tao_qc.testing import zoo

    path = directory / f"{name}.onnx"
    if not path.exists():
        zoo.export_zoo(name, path)
    return path


def seeded_npz(path: Path, arrays: dict[str, tuple[tuple[int, ...], float]], seed: int = 0) -> Path:
    """Fixed pseudo-random calibration data: name -> (shape, scale)."""
    rng = np.random.default_rng(seed)
    np.savez(path, **{name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, (shape, scale) in arrays.items()})
    return path


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """`tao-qc ARGS` in-process: (exit code, stdout, stderr)."""
    from tao_qc.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def compile_zoo_for_onnxruntime(name: str, folder: Path, *, onnxruntime: dict, dynamic_batch: bool = True):
    """A 64x64 zoo detector exported into `folder`, calibrated on 16 seeded random inputs and compiled
    for target onnxruntime with these `quantize.onnxruntime` settings: (the FP32 path, the compile
    result, the seeded generator, to draw held-out inputs from after the calibration's). The tests of
    these detectors run this machine's fused kernels against the graph's arithmetic, so the CPU is
    this machine's, by name, unless the settings name one."""
    from tao_qc.driver import compile_model
    from tao_qc.spec.cpu import this_machine
    from tao_qc.testing import zoo

    onnxruntime = {"cpu": this_machine().isa, **onnxruntime}
    fp32 = zoo.export_zoo(name, folder / f"{name}.onnx", dynamic_batch=dynamic_batch)
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", input=rng.standard_normal((16, *zoo.input_shape(name)[1:])).astype(np.float32))
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "calibration": {"data": str(folder / "calib.npz")}, "onnxruntime": onnxruntime}}
    return fp32, compile_model(fp32, spec, results_dir=folder / "ort", compare=False), rng
