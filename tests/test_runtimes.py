"""Runtime adapters: ONNX Runtime sessions on real models; TensorRT's settings, profiles, timing cache,
FP16 graph, inspector parsing, output copies and build failures (everything that does not need TensorRT
itself; tests/test_tensorrt_gpu.py builds real engines where TensorRT and a GPU are present)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from _compile_helpers import ASSETS, MNIST_CNTK
from _runtimes_helpers import build_assets, without_tensorrt
from tao_qc.data import InputInfo, model_inputs
from tao_qc.errors import InputError, MissingDependencyError, TaoQcError
from tao_qc.runtimes.base import Engine, RuntimeSettings, physical_cores
from tao_qc.runtimes.registry import get_runtime
from tao_qc.runtimes.onnxruntime import OPTIMIZED_SUFFIX, OnnxRuntime, providers_for, session_options
from tao_qc.runtimes.tensorrt import (
    DEFAULT_BATCH_PROFILE,
    TENSORRT_MISSING,
    TensorRT,
    TrtEngine,
    build_settings,
    check_feeds_fit,
    collect_outputs,
    cuda_device_name,
    default_profiles,
    has_qdq,
    inspect_layers,
    parse_engine_layers,
    precision_of,
    precision_summary,
    tensorrt_failures,
    timing_cache_path,
)
from tao_qc.spec import ShapeProfile, TensorRTSpec, load_spec

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


@without_tensorrt
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
    # The batches an engine will run at widen the range; the tuning point stays.
    wide = default_profiles(dynamic, batch_sizes=(1, 64))["input"]
    assert wide == {"min": [mn, 3, 224, 224], "opt": [opt, 3, 224, 224], "max": [64, 3, 224, 224]}
    assert default_profiles(dynamic, batch_sizes=(2, 4))["input"]["max"] == [mx, 3, 224, 224]


def test_open_sizes_in_a_profile_come_from_the_data():
    detector = [_info("x", "n", 3, "h", "w")]
    mn, opt, mx = DEFAULT_BATCH_PROFILE
    profiles = default_profiles(detector, shapes={"x": (1, 3, 640, 480)})
    assert profiles == {"x": {"min": [mn, 3, 640, 480], "opt": [opt, 3, 640, 480], "max": [mx, 3, 640, 480]}}
    with pytest.raises(InputError, match=r"input x float32\[\?,3,\?,\?\] has dynamic dimensions besides the batch: "
                                         r"give data, --input-shapes, or quantize.tensorrt.profiles.x"):
        default_profiles(detector)
    with pytest.raises(InputError, match=r"does not fit the model's input x float32\[\?,3,\?,\?\] \(axis 1\)"):
        default_profiles(detector, shapes={"x": (1, 4, 640, 480)})


def test_explicit_profiles_win_and_are_checked():
    inputs = [_info("x", "N", 3, "H", "W")]
    profile = ShapeProfile(min=[1, 3, 64, 64], opt=[4, 3, 224, 224], max=[8, 3, 512, 512])
    assert default_profiles(inputs, {"x": profile}, batch_sizes=(64,))["x"]["max"] == [8, 3, 512, 512]
    with pytest.raises(InputError, match=r"dynamic dimensions besides the batch: give data, --input-shapes, or quantize.tensorrt.profiles.x"):
        default_profiles(inputs)
    with pytest.raises(InputError, match="is not an input of the model"):
        default_profiles(inputs, {"y": profile})
    with pytest.raises(InputError, match=r"profiles.x.min: \[1, 3, 64\] has 3 dimensions"):
        default_profiles(inputs, {"x": ShapeProfile(min=[1, 3, 64], opt=[1, 3, 64, 64], max=[1, 3, 64, 64])})
    with pytest.raises(InputError, match="dimension 1 is 4 but input .* fixes it at 3"):
        default_profiles(inputs, {"x": ShapeProfile(min=[1, 4, 64, 64], opt=[1, 3, 64, 64], max=[1, 3, 64, 64])})
    with pytest.raises(InputError, match="min <= opt <= max"):
        default_profiles(inputs, {"x": ShapeProfile(min=[8, 3, 64, 64], opt=[1, 3, 64, 64], max=[8, 3, 64, 64])})


def test_feeds_outside_the_profile_are_one_line():
    profiles = default_profiles([_info("x", "N", 3, 8, 8)])
    check_feeds_fit({"x": np.zeros((32, 3, 8, 8), np.float32)}, profiles, "m.onnx")
    with pytest.raises(InputError) as info:
        check_feeds_fit({"x": np.zeros((33, 3, 8, 8), np.float32)}, profiles, "m.onnx")
    assert str(info.value) == ("m.onnx: input 'x' of shape [33, 3, 8, 8] is outside the engine's TensorRT optimization "
                               "profile (min [1, 3, 8, 8], max [32, 3, 8, 8]): set quantize.tensorrt.profiles.x")
    assert info.value.exit_code == 2


def test_build_settings_record_strong_typing_tf32_workspace_and_profiles(tmp_path):
    spec = TensorRTSpec(workspace_gib=2, profiles={"x": ShapeProfile(min=[1, 3, 8, 8], opt=[2, 3, 8, 8], max=[4, 3, 8, 8])})
    settings = RuntimeSettings(tensorrt=spec)
    recorded = build_settings(settings, [_info("x", "N", 3, 8, 8)], model_path=tmp_path / "m.onnx",
                              network_path=tmp_path / "m.fp16.onnx", precision="fp16 graph (AutoCast)",
                              timing_cache=tmp_path / "tensorrt.timing-cache", device="NVIDIA H200 sm90")
    assert recorded["strongly_typed"] is True
    assert recorded["tf32"] is True  # TensorRT's default, not polygraphy's (CreateConfig clears it unless asked)
    assert recorded["workspace_bytes"] == 2 * (1 << 30)
    assert recorded["profiles"]["x"]["max"] == [4, 3, 8, 8]
    assert recorded["profiling_verbosity"] == "DETAILED"
    assert recorded["device"] == "NVIDIA H200 sm90"
    json.dumps(recorded)  # written beside the engine as .engine.json
    off = RuntimeSettings(tensorrt=load_spec({"tensorrt": {"tf32": False}}).tensorrt, batch_sizes=(48,))
    recorded = build_settings(off, [_info("x", "N", 3, 8, 8)], model_path=tmp_path / "m.onnx", network_path=tmp_path / "m.onnx",
                              precision="from Q/DQ in the graph", timing_cache=None)
    assert recorded["tf32"] is False and recorded["profiles"]["x"]["max"] == [48, 3, 8, 8]


def test_qdq_detection(assets):
    assert has_qdq(onnx.load(str(assets.mnist_int8)))
    assert not has_qdq(onnx.load(str(assets.mnist_fp32)))


@pytest.mark.slow
def test_fp16_baseline_graph_runs_close_to_fp32(assets, tmp_path):
    # AutoCast imports modelopt.onnx, which patches onnxruntime.quantization: keep it out of this process.
    inline, external = tmp_path / "inline" / "mnist.fp16.onnx", tmp_path / "external" / "mnist.fp16.onnx"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tao_qc.runtimes.tensorrt import fp16_graph
        for out, limit in ((Path({str(inline)!r}), None), (Path({str(external)!r}), 0)):
            out.parent.mkdir()
            fp16_graph(Path({str(assets.mnist_fp32)!r}), out, external_data_above=limit)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    model = onnx.load(str(inline))
    weights = [init for init in model.graph.initializer if init.dims and np.prod(init.dims) > 16]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    # Inputs and outputs stay FP32, so the same feeds and comparisons work.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sorted(p.name for p in inline.parent.iterdir()) == ["mnist.fp16.onnx"]
    # Past the size limit the weights go beside the graph (as a model over 2 GB must), nothing else is left.
    assert sorted(p.name for p in external.parent.iterdir()) == ["mnist.fp16.onnx", "mnist.fp16.onnx.data"]
    assert external.stat().st_size < inline.stat().st_size / 4
    x = np.load(assets.digits)["Input3"][:32]
    fp32 = OnnxRuntime().build(assets.mnist_fp32, RuntimeSettings(threads=1))
    a = np.concatenate([fp32.run({"Input3": x[i:i + 1]})[fp32.output_names[0]] for i in range(32)])
    for path in (inline, external):
        fp16 = OnnxRuntime().build(path, RuntimeSettings(threads=1))
        b = np.concatenate([fp16.run({"Input3": x[i:i + 1]})[fp16.output_names[0]] for i in range(32)])
        assert np.abs(a - b).max() < 1e-2 * np.abs(a).max()  # FP16 rounding, not a different model
        assert (a.argmax(1) == b.argmax(1)).all()


# ---------------------------------------------------------------------------------------------
# Engine inspector JSON


@pytest.mark.parametrize("fixture", ["tensorrt_inspector_int8_resnet.json", "tensorrt11_inspector_int8_resnet.json"],
                         ids=["tensorrt10-bindings", "tensorrt11-io-tensors"])
def test_inspector_rows_from_a_detailed_int8_engine(fixture):
    document = json.loads((DATA / fixture).read_text())
    assert ("Bindings" in document) != ("I/O Tensors" in document)
    rows = parse_engine_layers(json.dumps(document))
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


def test_inspector_tensor_keys_split_as_polygraphy_reads_them():
    # polygraphy 0.53.6 (inspect model, extractors/_trt.py) reads "Format/Datatype", else "Datatype" and "Format".
    tensor = lambda datatype, layout: {"Name": "t", "Location": "Device", "Dimensions": [8, 64, 56, 56],  # noqa: E731
                                       "Datatype": datatype, "Format": layout}
    rows = parse_engine_layers({"Layers": [{
        "Name": "/layer1/conv/Conv", "LayerType": "CaskConvolution",
        "Inputs": [tensor("Int8", "Thirty-two wide channel vectorized row major")],
        "Outputs": [tensor("Half", "Channel major where channel % 8 == 0")],
        "Weights": {"Type": "Int8", "Count": 36864},
    }, {
        "Name": "/head/Gemm", "LayerType": "CaskGemmConvolution",
        "Inputs": [tensor("FP4", "Row major linear")], "Outputs": [tensor("Float", "Row major linear")],
        "Weights": {"Type": "FP4", "Count": 4096},
    }], "I/O Tensors": [{"Name": "input"}, {"Name": "output"}]})
    assert rows[0].inputs == ["INT8"] and rows[0].outputs == ["FP16"] and rows[0].runs_in == "INT8"
    assert rows[1].inputs == ["FP4"] and rows[1].runs_in == "FP4" and rows[1].outputs == ["FP32"]


def test_inspector_edge_cases():
    assert precision_of("N/A due to dynamic shapes") == "?"
    assert precision_of("Row major linear FP8 format") == "FP8"
    assert precision_of("Row major linear FP4 format") == "FP4"
    assert precision_of("Channel major BF16 format where channel % 8 == 0") == "BF16"
    assert precision_of("Row major linear BFloat16 format") == "BF16"
    assert precision_of("Row major Int32 format") == "INT32"
    assert precision_of("Row major linear UInt8 format") == "UINT8"
    with pytest.raises(InputError, match="ProfilingVerbosity.DETAILED"):
        parse_engine_layers({"Layers": ["conv1 + relu", "fc"], "Bindings": ["input", "output"]})
    with pytest.raises(InputError, match="no 'Layers'"):
        parse_engine_layers("{}")


class _Context:
    """The part of an IExecutionContext the inspector reads: input shapes."""

    def __init__(self, strategy):
        self.strategy, self.shapes = strategy, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = list(shape)
        return True


class _Inspector:
    """Answers as IEngineInspector documents: formats only with a context whose inputs all have shapes."""

    def __init__(self, inputs):
        self.inputs, self.execution_context = inputs, None

    def get_engine_information(self, format_):
        document = json.loads((DATA / "tensorrt_inspector_int8_resnet.json").read_text())
        context = self.execution_context
        if context is None or set(context.shapes) != set(self.inputs):
            for layer in document["Layers"]:
                for tensor in layer["Inputs"] + layer["Outputs"]:
                    tensor.pop("Format/Datatype")
                    tensor["Dimensions"] = [-1, *tensor["Dimensions"][1:]]
        return json.dumps(document)


class _Engine:
    def __init__(self, inputs):
        self.inputs, self.contexts = inputs, []

    def create_execution_context(self, strategy):
        self.contexts.append(_Context(strategy))
        return self.contexts[-1]

    def create_engine_inspector(self):
        return _Inspector(self.inputs)


def test_inspector_reads_a_dynamic_engine_through_a_context_at_the_opt_shapes():
    trt = SimpleNamespace(ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="user-managed"),
                          LayerInformationFormat=SimpleNamespace(JSON="json"))
    profiles = default_profiles([_info("input", "N", 3, 224, 224)])
    engine = _Engine(["input"])
    rows = inspect_layers(trt, engine, profiles)
    (context,) = engine.contexts
    assert context.strategy == "user-managed"  # shapes and formats only: no device memory
    assert context.shapes == {"input": profiles["input"]["opt"]}
    assert "?" not in precision_summary(rows) and all("?" not in r.inputs + r.outputs for r in rows)
    # What the same engine says without the context: no tensor precision at all (weights alone remain).
    unknown = parse_engine_layers(_Inspector(["input"]).get_engine_information("json"))
    assert all(set(r.inputs + r.outputs) == {"?"} for r in unknown) and "?" in precision_summary(unknown)


def test_timing_cache_is_per_user_gpu_and_tensorrt_version(tmp_path):
    def path(environ, device="NVIDIA H200 sm90", version="10.16.0.72", settings=RuntimeSettings()):
        return timing_cache_path(settings, environ, device=device, tensorrt_version=version)

    xdg = path({"XDG_CACHE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "tao-qc" / "tensorrt-10.16.0.72-nvidia-h200-sm90.timing-cache"
    assert path({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "tao-qc" / xdg.name
    others = {path({"XDG_CACHE_HOME": str(tmp_path)}, device="NVIDIA L4 sm89"),
              path({"XDG_CACHE_HOME": str(tmp_path)}, version="11.1.0.10"),
              path({"XDG_CACHE_HOME": str(tmp_path)}, device=None)}
    assert len(others) == 3 and xdg not in others and all(p.parent == xdg.parent for p in others)
    named = RuntimeSettings(tensorrt=TensorRTSpec(timing_cache=str(tmp_path / "mine.cache")))
    assert path({}, settings=named) == tmp_path / "mine.cache"


def test_cuda_device_name_is_none_without_a_driver():
    from tao_qc.runtimes.base import cuda_device_present

    if cuda_device_present():
        pytest.skip("a GPU is present")
    assert cuda_device_name() is None


# ---------------------------------------------------------------------------------------------
# Polygraphy around TensorRT: reused output buffers, closing, build failures


class ReusingRunner(BaseRunner):
    """A polygraphy runner that, like TrtRunner, writes every result into the same host buffer."""

    def __init__(self):
        super().__init__(name="reusing")

    def activate_impl(self):
        self.buffer = np.zeros((2, 3), np.float32)

    def get_input_metadata_impl(self):
        return TensorMetadata().add("x", DataType.FLOAT32, (2, 3))

    def infer_impl(self, feed_dict):
        np.multiply(feed_dict["x"], 2, out=self.buffer)
        self.inference_time = 0.0
        return {"y": self.buffer}

    def deactivate_impl(self):
        del self.buffer


def test_outputs_are_copied_out_of_reused_buffers():
    first, second = np.full((2, 3), 1.0, np.float32), np.full((2, 3), 5.0, np.float32)
    with ReusingRunner() as runner:
        raw = runner.infer({"x": first})["y"]
        runner.infer({"x": second})
        assert (raw == 10).all()  # the runner really overwrote its earlier answer
        a = collect_outputs(runner, {"x": first}, ["y"])["y"]
        b = collect_outputs(runner, {"x": second}, ["y"])["y"]
    assert (a == 2).all() and (b == 10).all()


def test_engine_runs_batches_apart_and_close_releases_its_runner(tmp_path):
    runner = ReusingRunner()
    runner.activate()
    engine = TrtEngine(model_path=tmp_path / "m.onnx", engine=object(), settings=RuntimeSettings(), artifact=None,
                       input_specs=[_info("x", "N", 3)], output_names=["y"],
                       profiles=default_profiles([_info("x", "N", 3)]), _runner=runner)
    batches = [np.full((2, 3), value, np.float32) for value in (1.0, 2.0, 3.0)]
    outputs = [engine.run({"x": batch})["y"] for batch in batches]
    assert [float(out[0, 0]) for out in outputs] == [2.0, 4.0, 6.0]
    with pytest.raises(InputError, match="outside the engine's TensorRT optimization profile"):
        engine.run({"x": np.zeros((64, 3), np.float32)})
    engine.close()
    assert runner.is_active is False and engine.engine is None
    engine.close()  # twice is harmless
    with pytest.raises(TaoQcError, match="closed"):
        engine.run({"x": batches[0]})


def test_a_failed_parse_is_one_line_with_the_parsers_first_error(capsys):
    from polygraphy.backend.trt.util import check_onnx_parser_errors
    from polygraphy.logger import G_LOGGER

    class Parser:  # what polygraphy reads of trt.OnnxParser after a failed parse
        num_errors = 2

        def get_error(self, index):
            return ["In node 3 with name: /custom/Op and operator: MyOp (checkFallbackPluginImporter): INVALID_NODE",
                    "second error"][index]

    routed_before = G_LOGGER.use_python_logging_system
    with pytest.raises(InputError) as info:
        with tensorrt_failures("m.onnx: TensorRT 10.16.0.72 cannot build an engine from it"):
            check_onnx_parser_errors(Parser(), False)
    assert str(info.value) == ("m.onnx: TensorRT 10.16.0.72 cannot build an engine from it: In node 3 with name: "
                               "/custom/Op and operator: MyOp (checkFallbackPluginImporter): INVALID_NODE")
    assert info.value.exit_code == 2
    assert G_LOGGER.use_python_logging_system == routed_before
    assert capsys.readouterr().out == ""  # stdout belongs to --json


def test_a_failed_build_without_logged_errors_names_polygraphys_message():
    from polygraphy.logger import G_LOGGER

    with pytest.raises(InputError, match=r"^m.onnx: cannot build: Invalid Engine. Please ensure the engine was built correctly$"):
        with tensorrt_failures("m.onnx: cannot build"):
            G_LOGGER.critical("Invalid Engine. Please ensure the engine was built correctly")
    with tensorrt_failures("m.onnx: cannot build"):
        pass  # nothing failed: nothing raised


@pytest.mark.parametrize("scale_as", ["initializer", "constant"])
def test_fp16_quantize_linear_rounds_half_to_even_on_cpu(tmp_path, scale_as):
    """ONNX's QuantizeLinear rounds x / scale to nearest, ties to even, in every input type. ORT's
    CPU kernel for fp16 input truncates; the sessions tao-qc builds must give the ONNX result."""
    from onnx import TensorProto, helper

    scale = np.float16(0.0999755859375)
    scale_tensor = numpy_helper.from_array(np.array(scale), "scale")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="quantize"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dequantize")]
    initializers = [numpy_helper.from_array(np.array(0, np.int8), "zero")]
    if scale_as == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["scale"], value=scale_tensor))
    else:
        initializers.append(scale_tensor)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None]),
                               helper.make_tensor_value_info("q", TensorProto.INT8, [None])], initializers)
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    x = (np.random.default_rng(0).standard_normal(4096) * 4).astype(np.float16)
    expected = np.clip(np.rint(x.astype(np.float64) / np.float64(scale)), -128, 127).astype(np.int8)

    engine = OnnxRuntime().build(path, RuntimeSettings(threads=1))
    got = engine.run({"x": x})
    np.testing.assert_array_equal(got["q"], expected)
    np.testing.assert_array_equal(got["y"], (expected.astype(np.float16) * scale).astype(np.float16))
    assert onnx.load(str(path)).graph.node[-1].op_type == "DequantizeLinear"  # the file is untouched
