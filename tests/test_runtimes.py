"""Runtime adapters: ONNX Runtime sessions on real models; TensorRT's settings, profiles, FP16 graph and
inspector parsing (everything that does not need TensorRT itself, which cannot be installed here)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from _compile_helpers import ASSETS, MNIST_CNTK
from _runtimes_helpers import build_assets
from tao_qc.data import InputInfo, model_inputs
from tao_qc.errors import InputError, MissingDependencyError
from tao_qc.runtimes.base import Engine, RuntimeSettings, get_runtime, physical_cores
from tao_qc.runtimes.onnxruntime import OPTIMIZED_SUFFIX, OnnxRuntime, providers_for, session_options
from tao_qc.runtimes.tensorrt import (
    DEFAULT_BATCH_PROFILE,
    TENSORRT_MISSING,
    build_settings,
    default_profiles,
    has_qdq,
    parse_engine_layers,
    precision_of,
    precision_summary,
)
from tao_qc.runtimes.tensorrt import TensorRT
from tao_qc.spec import ShapeProfile, TensorRTSpec

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.getbasetemp())


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def test_fp32_matches_the_shipped_reference_outputs():
    folder = ASSETS / "mnist_cntk" / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    expected = numpy_helper.to_array(onnx.load_tensor(str(folder / "output_0.pb")))
    engine = OnnxRuntime().build(MNIST_CNTK, RuntimeSettings(threads=1, device="cpu"))
    assert isinstance(engine, Engine)
    assert [i.describe() for i in engine.input_specs] == ["Input3 float32[1,1,28,28]"]
    (name,) = engine.output_names
    got = engine.run({"Input3": x})[name]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert got.argmax() == expected.argmax()


def test_session_options_translate_settings():
    options = session_options(RuntimeSettings(threads=3, graph_optimization="basic"))
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.optimized_model_filepath == ""
    default = session_options(RuntimeSettings())
    assert default.intra_op_num_threads == physical_cores() >= 1
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    off = session_options(RuntimeSettings(graph_optimization="disable"), Path("/tmp/x.onnx"))
    assert off.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert off.optimized_model_filepath == "/tmp/x.onnx"


def test_optimized_model_is_saved_and_runs_the_same(assets, tmp_path):
    settings = RuntimeSettings(threads=1, device="cpu", artifact_dir=tmp_path, save_artifact=True)
    engine = OnnxRuntime().build(assets.mnist_int8, settings)
    assert engine.artifact == tmp_path / f"mnist_int8{OPTIMIZED_SUFFIX}"
    optimized = onnx.load(str(engine.artifact))
    # ORT's fusions ran: the saved graph differs from the input graph.
    ops = [n.op_type for n in optimized.graph.node]
    assert ops != [n.op_type for n in onnx.load(str(assets.mnist_int8)).graph.node]
    x = np.load(assets.digits)["Input3"][:1]
    again = OnnxRuntime().build(engine.artifact, RuntimeSettings(threads=1, device="cpu", graph_optimization="disable"))
    np.testing.assert_allclose(again.run({"Input3": x})[again.output_names[0]],
                               engine.run({"Input3": x})[engine.output_names[0]], rtol=1e-5, atol=1e-4)


def test_nothing_is_written_beside_the_model_by_default(assets):
    before = sorted(p.name for p in assets.root.iterdir())
    engine = OnnxRuntime().build(assets.mnist_fp32, RuntimeSettings(threads=1))
    assert engine.artifact is None
    assert sorted(p.name for p in assets.root.iterdir()) == before


def test_bad_settings_and_models_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="--threads: 0"):
        RuntimeSettings(threads=0)
    with pytest.raises(InputError, match="valid: disable, basic, extended, all"):
        RuntimeSettings(graph_optimization="max")
    with pytest.raises(InputError, match="valid: onnxruntime, tensorrt"):
        get_runtime("tvm")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx"):
        OnnxRuntime().build(bad, RuntimeSettings())


def test_cuda_request_without_a_gpu_is_an_input_error():
    from tao_qc.runtimes.base import cuda_device_present

    if cuda_device_present():
        pytest.skip("a GPU is present")
    assert providers_for("auto") == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="no CUDA device"):
        providers_for("cuda")


# ---------------------------------------------------------------------------------------------
# TensorRT without TensorRT


def test_tensorrt_absence_is_one_line():
    assert not TensorRT().available()
    with pytest.raises(MissingDependencyError) as info:
        get_runtime("tensorrt")
    assert str(info.value) == TENSORRT_MISSING
    assert info.value.exit_code == 2


def _info(name, *shape):
    return InputInfo(name, tuple(shape), np.dtype("float32"))


def test_default_profiles_from_onnx_shapes(assets):
    assert default_profiles([_info("x", 1, 3, 224, 224)]) == {}
    dynamic = model_inputs(onnx.load(str(assets.resnet18_fp32)))
    profiles = default_profiles(dynamic)
    mn, opt, mx = DEFAULT_BATCH_PROFILE
    assert profiles == {"input": {"min": [mn, 3, 224, 224], "opt": [opt, 3, 224, 224], "max": [mx, 3, 224, 224]}}


def test_explicit_profiles_win_and_are_checked():
    inputs = [_info("x", "N", 3, "H", "W")]
    profile = ShapeProfile(min=[1, 3, 64, 64], opt=[4, 3, 224, 224], max=[8, 3, 512, 512])
    assert default_profiles(inputs, {"x": profile})["x"]["opt"] == [4, 3, 224, 224]
    with pytest.raises(InputError, match=r"quantize.tensorrt.profiles.x: .*dynamic dimensions besides the batch|give quantize.tensorrt.profiles.x"):
        default_profiles(inputs)
    with pytest.raises(InputError, match="is not an input of the model"):
        default_profiles(inputs, {"y": profile})
    with pytest.raises(InputError, match=r"profiles.x.min: \[1, 3, 64\] has 3 dimensions"):
        default_profiles(inputs, {"x": ShapeProfile(min=[1, 3, 64], opt=[1, 3, 64, 64], max=[1, 3, 64, 64])})
    with pytest.raises(InputError, match="dimension 1 is 4 but input .* fixes it at 3"):
        default_profiles(inputs, {"x": ShapeProfile(min=[1, 4, 64, 64], opt=[1, 3, 64, 64], max=[1, 3, 64, 64])})
    with pytest.raises(InputError, match="min <= opt <= max"):
        default_profiles(inputs, {"x": ShapeProfile(min=[8, 3, 64, 64], opt=[1, 3, 64, 64], max=[8, 3, 64, 64])})


def test_build_settings_record_strong_typing_workspace_and_profiles(tmp_path):
    spec = TensorRTSpec(workspace_gib=2, profiles={"x": ShapeProfile(min=[1, 3, 8, 8], opt=[2, 3, 8, 8], max=[4, 3, 8, 8])})
    settings = RuntimeSettings(tensorrt=spec)
    recorded = build_settings(settings, [_info("x", "N", 3, 8, 8)], model_path=tmp_path / "m.onnx",
                              network_path=tmp_path / "m.fp16.onnx", precision="fp16 graph (AutoCast)",
                              timing_cache=tmp_path / "tensorrt.timing-cache")
    assert recorded["strongly_typed"] is True
    assert recorded["workspace_bytes"] == 2 * (1 << 30)
    assert recorded["profiles"]["x"]["max"] == [4, 3, 8, 8]
    assert recorded["profiling_verbosity"] == "DETAILED"
    json.dumps(recorded)  # written beside the engine as .engine.json


def test_qdq_detection(assets):
    assert has_qdq(onnx.load(str(assets.mnist_int8)))
    assert not has_qdq(onnx.load(str(assets.mnist_fp32)))


@pytest.mark.slow
def test_fp16_baseline_graph_runs_close_to_fp32(assets, tmp_path):
    # AutoCast imports modelopt.onnx, which patches onnxruntime.quantization: keep it out of this process.
    out = tmp_path / "mnist.fp16.onnx"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tao_qc.runtimes.tensorrt import fp16_graph
        fp16_graph(Path({str(assets.mnist_fp32)!r}), Path({str(out)!r}))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    model = onnx.load(str(out))
    weights = [init for init in model.graph.initializer if init.dims and np.prod(init.dims) > 16]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    # Inputs and outputs stay FP32, so the same feeds and comparisons work.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.load(assets.digits)["Input3"][:32]
    fp32 = OnnxRuntime().build(assets.mnist_fp32, RuntimeSettings(threads=1))
    fp16 = OnnxRuntime().build(out, RuntimeSettings(threads=1))
    a = np.concatenate([fp32.run({"Input3": x[i:i + 1]})[fp32.output_names[0]] for i in range(32)])
    b = np.concatenate([fp16.run({"Input3": x[i:i + 1]})[fp16.output_names[0]] for i in range(32)])
    assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()  # FP16 rounding, not a different model
    assert (a.argmax(1) == b.argmax(1)).all()


# ---------------------------------------------------------------------------------------------
# Engine inspector JSON


def test_inspector_rows_from_a_detailed_int8_engine():
    rows = parse_engine_layers((DATA / "tensorrt_inspector_int8_resnet.json").read_text())
    assert [r.type for r in rows] == ["Scale", "CaskConvolution", "CaskPooling", "CaskPooling", "CaskGemmConvolution", "Reformat"]
    quantize, conv, maxpool, avgpool, fc, reformat = rows
    assert quantize.inputs == ["FP32"] and quantize.outputs == ["INT8"]
    assert conv.onnx_nodes == ["/conv1/weight_quantizer/DequantizeLinear", "/conv1/Conv", "/relu/Relu"]
    assert conv.weights == "INT8" and conv.runs_in == "INT8" and conv.tactic.startswith("sm80_xmma_fprop")
    assert maxpool.runs_in == "INT8"
    assert avgpool.inputs == ["INT8"] and avgpool.outputs == ["FP16"]
    assert fc.weights == "FP16" and fc.runs_in == "FP16"
    assert reformat.outputs == ["FP32"]
    assert precision_summary(rows) == {"FP16": 1, "FP32": 1, "INT8": 3}
    assert rows[1].to_dict()["runs_in"] == "INT8"


def test_inspector_edge_cases():
    assert precision_of("N/A due to dynamic shapes") == "?"
    assert precision_of("Row major linear FP8 format") == "FP8"
    assert precision_of("Channel major BF16 format where channel % 8 == 0") == "BF16"
    assert precision_of("Row major Int32 format") == "INT32"
    with pytest.raises(InputError, match="ProfilingVerbosity.DETAILED"):
        parse_engine_layers({"Layers": ["conv1 + relu", "fc"], "Bindings": ["input", "output"]})
    with pytest.raises(InputError, match="no 'Layers'"):
        parse_engine_layers("{}")
    # TensorRT 11 describes tensors with separate DataType/Format fields.
    rows = parse_engine_layers({"Layers": [{
        "Name": "/conv/Conv", "LayerType": "CaskConvolution",
        "Inputs": [{"Name": "q", "DataType": "Int8", "Format": "Thirty-two wide channel vectorized row major (kCHW32)"}],
        "Outputs": [{"Name": "y", "DataType": "Half", "Format": "Row major linear (kLINEAR)"}],
        "Weights": {"Type": "Int8", "Count": 1728},
    }], "I/O Tensors": []})
    assert rows[0].inputs == ["INT8"] and rows[0].outputs == ["FP16"] and rows[0].runs_in == "INT8"


def test_timing_cache_is_per_user_unless_the_spec_names_one(tmp_path):
    from tao_qc.runtimes.tensorrt import timing_cache_path

    assert timing_cache_path(RuntimeSettings(), {"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "tao-qc" / "tensorrt.timing-cache"
    assert timing_cache_path(RuntimeSettings(), {"HOME": str(tmp_path)}) == tmp_path / ".cache" / "tao-qc" / "tensorrt.timing-cache"
    named = RuntimeSettings(tensorrt=TensorRTSpec(timing_cache=str(tmp_path / "mine.cache")))
    assert timing_cache_path(named, {}) == tmp_path / "mine.cache"
