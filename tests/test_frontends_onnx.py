"""Lowering to ONNX: the same spec selects the same layers in the PyTorch module tree and in the
exported graph, and a modelopt.pytorch model lowers to a Q/DQ graph that runs."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from tao_qc.errors import InputError
from tao_qc.frontends.lower_to_onnx import lower_to_onnx
from tao_qc.frontends.module_selection import module_units
from tao_qc.spec.selection import decide, module_path_from_onnx_name, onnx_units
from tao_qc.spec import load_spec
from _frontends_helpers import CalledThroughContainers
from tao_qc.testing.zoo import ResNet18, SmallResidualCNN, build

ONNX_COMPUTE = ("Conv", "Gemm", "MatMul")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, width=8).eval()
    path = lower_to_onnx(model, torch.randn(1, 3, 64, 64), tmp_path_factory.mktemp("resnet") / "resnet.onnx")
    return model, onnx.load(str(path))


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    model = build("small_cnn")
    path = lower_to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path_factory.mktemp("small") / "small_cnn.onnx")
    return model, onnx.load(str(path))


# Each spec selects some layers of its model (and, where it can, leaves some out): two empty
# selections would compare equal and prove nothing.
SPECS = {
    "resnet": [
        {"layers": [{"module_name": "layer1.*", "weights": {"dtype": "int8"}}]},
        {"layers": [{"module_name": "*downsample*", "weights": {"dtype": "fp8_e4m3fn"}, "activations": {"dtype": "fp8_e4m3fn"}}]},
        {"layers": [{"module_name": "Conv2d"}]},
        {"layers": [{"module_name": "Linear", "weights": {"dtype": "int8"}}]},
        {"layers": [], "skip_names": ["*fc*"]},
        {"layers": [{"module_name": "Conv2d"}, {"module_name": "layer4.*", "weights": {"dtype": "native"}},
                    {"module_name": "*head*"}], "skip_names": ["*fc*", "*stem*"]},
    ],
    "small_cnn": [
        {"layers": [{"module_name": "block.*", "weights": {"dtype": "int8"}}]},
        {"layers": [{"module_name": "down.?", "weights": {"dtype": "fp8_e4m3fn"}, "activations": {"dtype": "fp8_e4m3fn"}}]},
        {"layers": [{"module_name": "Conv2d"}]},
        {"layers": [{"module_name": "Linear", "weights": {"dtype": "int8"}}]},
        {"layers": [], "skip_names": ["*head*"]},
        {"layers": [{"module_name": "Conv2d"}, {"module_name": "block.conv2", "weights": {"dtype": "native"}},
                    {"module_name": "*head*"}], "skip_names": ["stem*"]},
    ],
}
CASES = [(which, spec) for which, specs in SPECS.items() for spec in specs]


def compute_units(graph: onnx.ModelProto):
    return [u for u in onnx_units(graph) if u.type in ONNX_COMPUTE]


def module_of(unit, modules: set[str]) -> str:
    """The PyTorch module an ONNX node came from: the last of its aliases that is a real module
    (onnx_unit lists the weight initializer's path, the reliable one, after the scope's)."""
    found = [alias for alias in reversed(unit.name_aliases) if alias in modules]
    assert found, f"ONNX node {unit.name} maps to no module (aliases: {unit.name_aliases})"
    return found[0]


def both_worlds(model, graph: onnx.ModelProto, spec_dict):
    spec = load_spec({"backend": "modelopt.pytorch", **spec_dict})
    torch_result = decide(module_units(model), spec.layers, spec.skip_names, static=True, warn=False)
    onnx_result = decide(compute_units(graph), spec.layers, spec.skip_names, static=True, warn=False)
    modules = {name for name, _ in model.named_modules()}
    torch_selected = {d.unit.name: (d.weights, d.activations) for d in torch_result.quantized}
    onnx_selected = {module_of(d.unit, modules): (d.weights, d.activations) for d in onnx_result.quantized}
    return torch_selected, onnx_selected


@pytest.mark.parametrize(("which", "spec"), CASES, ids=[f"{which}-{str(spec)[:60]}" for which, spec in CASES])
def test_same_spec_selects_the_same_layers_in_both_worlds(which, spec, request):
    model, graph = request.getfixturevalue(which)
    torch_selected, onnx_selected = both_worlds(model, graph, spec)
    assert torch_selected, "the spec selects nothing in this model: the comparison would be empty"
    assert onnx_selected == torch_selected


def test_every_exported_compute_node_maps_back_to_its_module(resnet, small_cnn):
    for model, graph in (resnet, small_cnn):
        modules = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
        # The scope name alone already gives the module path for these plainly nested models.
        mapped = {module_path_from_onnx_name(n.name) for n in graph.graph.node if n.op_type in ONNX_COMPUTE}
        assert mapped == modules


def test_patterns_select_something_in_both_worlds(resnet):
    # The parametrized test would also pass if both sides selected nothing: check it does not.
    model, graph = resnet
    torch_selected, onnx_selected = both_worlds(model, graph, SPECS["resnet"][1])
    assert set(onnx_selected) == {"layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"}
    torch_selected, onnx_selected = both_worlds(model, graph, SPECS["resnet"][4])
    assert "fc" not in onnx_selected and len(onnx_selected) == 20


@pytest.mark.slow
def test_modelopt_model_lowers_to_a_qdq_graph_that_runs(tmp_path):
    import onnxruntime as ort

    from tao_qc.frontends.quantizer import ModelQuantizer

    model = SmallResidualCNN().eval()
    torch.manual_seed(1)
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    quantizer = ModelQuantizer({"backend": "modelopt.pytorch", "device": "cpu", "skip_names": ["head"]})
    quantized = quantizer.quantize_model(copy.deepcopy(model), calibration)
    example = torch.randn(1, 3, 32, 32)
    path = lower_to_onnx(quantized, example, tmp_path / "q.onnx", quantized=True)
    graph = onnx.load(str(path))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 8  # 4 convs: weight + input each
    gemm = next(n for n in graph.graph.node if n.op_type == "Gemm")
    assert gemm.name == "/head/Gemm"
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in gemm.input)  # head skipped: no Q/DQ
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": example.numpy()})
    with torch.no_grad():
        torch_out = quantized(example).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-3)


def test_fp32_lowering_matches_torch(small_cnn, tmp_path):
    import onnxruntime as ort

    model, _ = small_cnn
    example = torch.randn(2, 3, 32, 32)
    path = lower_to_onnx(model, example, tmp_path / "fp32.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": example.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(example).numpy(), atol=1e-5, rtol=1e-4)


def test_lowering_errors(small_cnn, tmp_path):
    from tao_qc.frontends.quantizer import ModelQuantizer

    model, _ = small_cnn
    with pytest.raises(InputError, match="has no ModelOpt quantizers"):
        lower_to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "x.onnx", quantized=True)
    with pytest.raises(InputError, match="must end in .onnx"):
        lower_to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "x.pth")
    torchao_model = ModelQuantizer({"backend": "torchao", "device": "cpu"}).quantize_model(copy.deepcopy(model))
    with pytest.raises(InputError, match="torchao-quantized model cannot be lowered"):
        lower_to_onnx(torchao_model, torch.randn(1, 3, 32, 32), tmp_path / "y.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_modules_reached_through_containers_keep_their_paths(tmp_path):
    # The exporter names heads.cls '/cls/Gemm', wrapper.conv '/conv/Conv' and the second call of
    # shared '/shared_1/Conv'; the weight initializers keep the state_dict keys.
    model = CalledThroughContainers().eval()
    graph = onnx.load(str(lower_to_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "c.onnx")))
    torch_selected, onnx_selected = both_worlds(model, graph, {"layers": [{"module_name": "heads.*"}, {"module_name": "wrapper.*"}]})
    assert onnx_selected == torch_selected
    modules = {name for name, _ in model.named_modules()}
    assert sorted(module_of(u, modules) for u in compute_units(graph)) == ["heads.cls", "shared", "shared", "stem", "wrapper.conv"]


def test_linear_pattern_selects_no_attention_matmul(tmp_path):
    model = build("tiny_vit")
    graph = onnx.load(str(lower_to_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "vit.onnx")))
    torch_selected, onnx_selected = both_worlds(model, graph, {"layers": [{"module_name": "Linear"}]})
    assert onnx_selected == torch_selected
    assert len(torch_selected) == 9  # 4 Linear per block x 2 + head


def test_lower_pytorch_file_takes_names_and_shapes_from_the_data(tmp_path):
    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.frontends.lower_to_onnx import lower_pytorch_file

    model = build("small_cnn")
    torch.save(model.state_dict(), tmp_path / "small.pth")
    np.savez(tmp_path / "calib.npz", images=np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32))
    path = lower_pytorch_file(tmp_path / "small.pth", tmp_path / "small.onnx", factory="tao_qc.zoo:SmallResidualCNN",
                              data=tmp_path / "calib.npz")
    graph = onnx.load(str(path))
    (info,) = model_inputs(graph)
    assert info.name == "images" and info.shape[1:] == (3, 32, 32) and info.fixed_batch is None
    batches = open_inputs(tmp_path / "calib.npz", [info], batch_size=3)  # the same file calibrates the lowered graph
    assert batches.num_samples == 6
    with pytest.raises(InputError, match="needs its input shape"):
        lower_pytorch_file(tmp_path / "small.pth", tmp_path / "x.onnx", factory="tao_qc.zoo:SmallResidualCNN")
    lower_pytorch_file(tmp_path / "small.pth", tmp_path / "y.onnx", factory="tao_qc.zoo:SmallResidualCNN", input_shape=(1, 3, 16, 16))
    assert model_inputs(onnx.load(str(tmp_path / "y.onnx")))[0].shape[1:] == (3, 16, 16)


class _NameClashes(torch.nn.Module):
    """A nested module whose last atom equals another module's name: the exporter names
    `inner.conv1` '/conv1/Conv' and the root `conv1` '/conv1_1/Conv'."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Module()
        self.inner.conv1 = torch.nn.Conv2d(3, 4, 1)
        self.conv1 = torch.nn.Conv2d(4, 4, 1)
        self.heads = torch.nn.ModuleDict({"cls": torch.nn.Linear(4, 3)})

    def forward(self, x):
        return self.heads["cls"](self.conv1(self.inner.conv1(x)).mean((2, 3)))


@pytest.mark.parametrize("spec", [{"layers": [{"module_name": "conv1"}]}, {"layers": [], "skip_names": ["cls"]}], ids=["conv1", "skip-cls"])
def test_a_stale_scope_alias_does_not_select(spec, tmp_path):
    model = _NameClashes().eval()
    graph = onnx.load(str(lower_to_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "clash.onnx")))
    torch_selected, onnx_selected = both_worlds(model, graph, spec)
    assert onnx_selected == torch_selected
