"""Real TensorRT engines, wherever TensorRT and an NVIDIA GPU are present (marked `gpu`, skipped elsewhere):

    pytest -m gpu tests/test_tensorrt_gpu.py

They build the INT8 MNIST and dynamic-batch ResNet-18 engines, read the engine inspector's real
output, run and time engines, compare FP32 against INT8 on TensorRT, and check that a graph TensorRT
cannot parse is a one-line error.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from _compile_helpers import MNIST_INPUT, digits
from _runtimes_helpers import build_assets, with_tensorrt_gpu
from tao_qc.errors import InputError
from tao_qc.runtimes.base import RuntimeSettings
from tao_qc.runtimes.onnxruntime import OnnxRuntime
from tao_qc.runtimes.tensorrt import ENGINE_SUFFIX, LAYERS_SUFFIX, SETTINGS_SUFFIX, TensorRT

pytestmark = with_tensorrt_gpu


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def settings(tmp_path, cache_home, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return RuntimeSettings(artifact_dir=tmp_path, save_artifact=True)


def test_int8_mnist_engine_records_what_it_built(assets, settings, tmp_path, cache_home):
    with TensorRT().build(assets.mnist_int8, settings) as engine:
        assert engine.artifact == tmp_path / f"mnist_int8{ENGINE_SUFFIX}" and engine.artifact.stat().st_size > 0
        recorded = json.loads((tmp_path / f"mnist_int8{SETTINGS_SUFFIX}").read_text())
        assert recorded["strongly_typed"] is True and recorded["tf32"] is True
        assert recorded["precision"] == "from Q/DQ in the graph"
        assert " sm" in recorded["device"] and recorded["tensorrt_version"]
        # The timing cache lives in the user's cache, keyed by this GPU and TensorRT version.
        cache = cache_home / "tao-qc" / recorded["timing_cache"].rsplit("/", 1)[-1]
        assert cache.is_file() and recorded["tensorrt_version"] in cache.name
        layers = json.loads((tmp_path / f"mnist_int8{LAYERS_SUFFIX}").read_text())
        assert layers == [row.to_dict() for row in engine.layers]
        assert recorded["layer_precisions"].get("INT8", 0) >= 2  # both Convs
        assert not any("?" in row["inputs"] + row["outputs"] for row in layers)


def test_dynamic_batch_engine_is_inspected_at_its_opt_shapes(assets, settings):
    with TensorRT().build(assets.resnet18_int8, settings) as engine:
        assert engine.profiles["input"]["opt"][0] == 8
        # Read without a context, every tensor of this engine would be "?".
        unknown = [row.name for row in engine.layers if "?" in row.inputs + row.outputs]
        assert not unknown, unknown
        assert engine.build["layer_precisions"].get("INT8", 0) > 10


def test_engine_runs_batches_apart_and_matches_onnxruntime(assets, settings):
    images = digits()[0][:3]
    reference = OnnxRuntime().build(assets.mnist_int8, RuntimeSettings(threads=1, device="cpu"))
    expected = [reference.run({MNIST_INPUT: images[i:i + 1]})[reference.output_names[0]] for i in range(3)]
    with TensorRT().build(assets.mnist_int8, settings) as engine:
        got = [engine.run({MNIST_INPUT: images[i:i + 1]})[engine.output_names[0]] for i in range(3)]
    assert not np.array_equal(got[0], got[1])  # three results, not the last one three times
    for a, b in zip(expected, got):
        cosine = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.99 and a.argmax() == b.argmax()


def test_fp32_against_int8_on_tensorrt(assets, settings):
    from tao_qc.evaluate.compare import compare_models
    from tao_qc.data import model_inputs, open_inputs

    inputs = open_inputs(str(assets.digits), model_inputs(onnx.load(str(assets.mnist_fp32))), max_samples=64)
    result = compare_models(assets.mnist_fp32, assets.mnist_int8, inputs, runtime="tensorrt", runtime_settings=settings)
    assert result.passed, result.failures
    assert result.engines["reference"]["build"]["precision"] == "fp16 graph (AutoCast)"
    assert result.engines["candidate"]["device"] == "cuda"


def test_compile_for_tensorrt_runs_float_layers_in_fp16(assets, tmp_path, cache_home, monkeypatch):
    from tao_qc.driver import compile_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    spec = {"quantize": {"backend": "modelopt.onnx", "device": "cpu", "target": "tensorrt", "compare": {"runtime": "tensorrt"},
                         "calibration": {"data": str(assets.digits), "max_samples": 64}}}
    result = compile_model(assets.mnist_fp32, spec, results_dir=tmp_path / "out")
    assert result.report["float_dtype"] == "fp16"
    # Every engine layer made from a compute node of the graph (not the Casts at its inputs and
    # outputs, not Q/DQ) runs INT8 or FP16: none is left FP32.
    compute = {node.name for node in onnx.load(str(result.model_path)).graph.node
               if node.op_type not in ("Cast", "QuantizeLinear", "DequantizeLinear")}
    layers = [row for row in result.report["comparison"]["engines"]["candidate"]["layers"] if compute & set(row["onnx_nodes"])]
    assert layers and {row["runs_in"] for row in layers} <= {"INT8", "FP16"}, layers
    assert any(row["runs_in"] == "INT8" for row in layers)


def test_bench_times_both_engines_and_releases_them(assets):
    from tao_qc.evaluate.latency import bench_models

    table = bench_models([assets.resnet18_fp32, assets.resnet18_int8], (1, 8), runtime="tensorrt",
                         settings=RuntimeSettings(batch_sizes=(1, 8)), warmup=3, runs=10)
    rows = table.to_dict()["rows"]
    assert [row["batch_size"] for row in rows] == [1, 1, 8, 8]
    assert all(row["median_ms"] > 0 and row["device"] == "cuda" for row in rows)


def test_a_graph_tensorrt_cannot_parse_is_one_line(tmp_path, settings):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="tao.qc.test", name="mystery")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("tao.qc.test", 1)])
    path = tmp_path / "mystery.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError) as info:
        TensorRT().build(path, RuntimeSettings(fp16_baseline=False))
    message = str(info.value)
    assert message.startswith("mystery.onnx: TensorRT ") and "cannot build an engine from it: " in message
    assert "\n" not in message and info.value.exit_code == 2
