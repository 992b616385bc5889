"""The one pattern matcher, on a real nn.Module tree, a real exported ONNX graph, and properties."""

from __future__ import annotations

import logging

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _frontends_helpers import CalledThroughContainers
from tao_qc.testing import zoo
from tao_qc.spec.selection import Unit, decide, module_path_from_onnx_name, onnx_unit
from tao_qc.spec import load_spec


def torch_units(model: torch.nn.Module) -> list[Unit]:
    return [Unit(name, type(module).__name__) for name, module in model.named_modules() if name]


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.ResNet18(num_classes=10, width=8).eval()


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory, resnet) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    zoo.export_onnx(resnet, torch.randn(1, 3, 32, 32), path)
    return onnx.load(path)


def onnx_units(model: onnx.ModelProto) -> list[Unit]:
    return [onnx_unit(node.name, node.op_type) for node in model.graph.node]


def selected(result) -> set[str]:
    return {d.unit.name for d in result.decisions if d.quantized}


def spec(**quantize):
    return load_spec({"quantize": quantize})


def test_empty_layers_quantizes_every_compute_layer_and_says_so(resnet):
    s = spec(backend="modelopt.pytorch")
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=True)
    convs = {n for n, m in resnet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert selected(result) == convs
    decision = result.by_name()["layer1.0.conv1"]
    assert (decision.weights, decision.activations) == ("int8", "int8")
    assert "layers is empty" in decision.weights_rule


def test_weight_only_leaves_activations_native(resnet):
    s = spec(backend="torchao")
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=False)
    assert all(d.activations == "native" and d.weights == "int8" for d in result.quantized)


def test_name_then_type_later_entries_override_and_skip_wins(resnet):
    s = spec(
        backend="modelopt.pytorch",
        layers=[
            {"module_name": "Conv2d", "weights": {"dtype": "int8"}, "activations": {"dtype": "int8"}},
            {"module_name": "layer4.*", "weights": {"dtype": "fp8_e4m3fn"}},
            {"module_name": "layer4.1.conv2", "weights": {"dtype": "native"}, "activations": {"dtype": "native"}},
        ],
        skip_names=["layer1.0.*"],
    )
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=True).by_name()
    assert result["layer2.0.conv1"].weights == "int8"
    assert "layers[0] 'Conv2d' (by type)" in result["layer2.0.conv1"].weights_rule
    # layer4 entry overrides only weights; activations stay as entry 0 set them
    assert result["layer4.0.conv1"].weights == "fp8_e4m3fn"
    assert result["layer4.0.conv1"].activations == "int8"
    assert "layers[1] 'layer4.*' (by name)" in result["layer4.0.conv1"].weights_rule
    assert "layers[0]" in result["layer4.0.conv1"].activations_rule
    assert not result["layer4.1.conv2"].quantized
    assert result["layer1.0.conv1"].skipped_by.startswith("skip_names[0] 'layer1.0.*'")
    assert not result["layer1.0.conv1"].quantized
    # Linear is not a Conv2d and no entry names it
    assert not result["fc"].quantized
    assert result["fc"].weights_rule == "not selected by any layers entry"


def test_entry_without_dtypes_quantizes_with_int8_defaults(resnet):
    s = spec(backend="modelopt.pytorch", layers=[{"module_name": "fc"}])
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=True).by_name()
    assert (result["fc"].weights, result["fc"].activations) == ("int8", "int8")
    assert "int8 by default" in result["fc"].weights_rule
    assert not result["conv1"].quantized


def test_pattern_matching_nothing_is_a_warning_naming_it(resnet, caplog):
    caplog.set_level(logging.WARNING, logger="tao_qc")
    s = spec(backend="torchao", layers=[{"module_name": "layer9.*"}], skip_names=["*haed*"])
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=False)
    assert result.unmatched == ["layers[0] 'layer9.*'", "skip_names[0] '*haed*'"]
    assert "pattern layers[0] 'layer9.*' matches nothing" in caplog.text
    assert "pattern skip_names[0] '*haed*' matches nothing" in caplog.text


def test_pattern_selecting_only_non_compute_layers_is_flagged(resnet):
    s = spec(backend="torchao", layers=[{"module_name": "*bn*"}])
    result = decide(torch_units(resnet), s.layers, s.skip_names, static=False)
    assert result.only_other_types == ["layers[0] '*bn*'"]
    assert result.unmatched == []


def test_onnx_node_names_map_back_to_module_paths(resnet, resnet_onnx):
    module_names = {n for n, m in resnet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    onnx_paths = {
        module_path_from_onnx_name(n.name) for n in resnet_onnx.graph.node if n.op_type in ("Conv", "Gemm")
    }
    assert onnx_paths == module_names


def test_one_spec_selects_the_same_layers_in_pytorch_and_onnx(resnet, resnet_onnx):
    s = spec(
        backend="modelopt.pytorch",
        layers=[{"module_name": "Conv2d"}, {"module_name": "Linear"}, {"module_name": "layer3.*"}],
        skip_names=["*downsample*", "layer1.1.conv2", "fc"],
    )
    in_torch = selected(decide(torch_units(resnet), s.layers, s.skip_names, static=True))
    onnx_result = decide(onnx_units(resnet_onnx), s.layers, s.skip_names, static=True)
    in_onnx = {module_path_from_onnx_name(name) for name in selected(onnx_result)}
    assert in_torch == in_onnx
    assert "layer1.1.conv2" not in in_onnx and "fc" not in in_onnx
    assert not any("downsample" in name for name in in_onnx)


def test_onnx_op_type_and_node_name_patterns(resnet_onnx):
    s = spec(backend="modelopt.onnx", layers=[{"module_name": "Gemm"}, {"module_name": "/layer2/*/Conv"}])
    result = decide(onnx_units(resnet_onnx), s.layers, s.skip_names, static=True)
    names = selected(result)
    assert "/fc/Gemm" in names
    assert all(n == "/fc/Gemm" or n.startswith("/layer2/") for n in names)
    assert len(names) == 1 + 5  # 2 blocks x 2 convs + downsample conv


@pytest.mark.parametrize(
    "node_name, module",
    [
        ("/backbone/layer1/layer1.0/conv1/Conv", "backbone.layer1.0.conv1"),
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/conv1/Conv", "conv1"),
        ("/stem/stem.0/Conv", "stem.0"),
        ("/Conv", None),
        ("Conv_12", None),
    ],
)
def test_module_path_from_onnx_name(node_name, module):
    assert module_path_from_onnx_name(node_name) == module


# --- properties, against an oracle written from the rules (SPEC.md, docs/spec-reference.md) and not from the matcher


def glob(pattern: str, text: str) -> bool:
    """Whole-string shell wildcard, case-sensitive: `*` any run of characters, `?` exactly one.
    Dynamic programming over prefixes, sharing no code with the matcher under test."""
    ends = {0}  # lengths of the prefixes of `text` the pattern read so far can match
    for symbol in pattern:
        if symbol == "*":
            ends = set(range(min(ends), len(text) + 1)) if ends else set()
        else:
            ends = {end + 1 for end in ends if end < len(text) and symbol in ("?", text[end])}
    return len(text) in ends


# A PyTorch class answers to the ONNX ops exported from it (Conv2d -> Conv, Linear -> Gemm/MatMul).
EXPORTED_AS = {"Conv2d": ("Conv",), "Linear": ("Gemm", "MatMul"), "ReLU": (), "BatchNorm2d": ()}
QUANTIZABLE = {"Conv2d", "Linear"}


def selects(pattern: str, unit: Unit) -> bool:
    return glob(pattern, unit.name) or any(glob(pattern, kind) for kind in (unit.type, *EXPORTED_AS[unit.type]))


def test_the_oracle_itself():
    assert glob("a*", "a") and glob("a*", "abc") and glob("*c", "abc") and glob("a?c", "abc") and glob("*", "")
    assert not glob("a?c", "ac") and not glob("A*", "abc") and not glob("ab", "abc") and not glob("?", "")
    assert glob("*.*", "a.b") and not glob("*.*", "ab") and glob("**a", "a") and glob("a*b*c", "axxbyyc")


letters = "abcxyzABCXYZ"  # upper case too: matching is case-sensitive
segment = st.text(alphabet=letters + "._0123", min_size=1, max_size=6)
names = st.lists(st.builds(lambda parts: ".".join(parts), st.lists(segment, min_size=1, max_size=3)), min_size=1, max_size=8, unique=True)
kinds = st.sampled_from(sorted(EXPORTED_AS))
# Free-form wildcards, and patterns near the type names (other case, ONNX op names, wildcards in them).
type_patterns = st.sampled_from(["Conv2d", "conv2d", "CONV2D", "Conv", "conv", "Conv*", "?onv2d", "Linear", "linear",
                                 "*near", "Gemm", "MatMul", "matmul", "ReLU", "Relu", "*Norm*", "*2d", "*"])
patterns = st.one_of(st.text(alphabet=letters + ".*?", min_size=1, max_size=6), type_patterns)


def near_miss(name: str, how: int, where: int) -> str:
    """A pattern close to `name`: in the other case, with a wildcard for part of it, or both."""
    at = where % len(name)
    return [name.swapcase(), name[:at] + "?" + name[at + 1:], name[:at] + "*", "*" + name[at:].swapcase(),
            name.upper(), name[:at] + "*" + name[at:]][how % 6]


@settings(max_examples=150, deadline=None)
@given(names=names, types=st.lists(kinds, min_size=8, max_size=8), free=st.lists(patterns, max_size=3),
       near=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5), st.integers(0, 20)), max_size=2),
       skips=st.lists(patterns, max_size=2))
def test_properties(names, types, free, near, skips):
    units = [Unit(n, t) for n, t in zip(names, types)]
    pats = free + [near_miss(names[i % len(names)], how, where) for i, how, where in near]
    s = spec(backend="modelopt.pytorch", layers=[{"module_name": p} for p in pats], skip_names=skips)
    result = decide(units, s.layers, s.skip_names, static=True, warn=False)
    by_name = result.by_name()
    assert set(by_name) == {u.name for u in units if u.type in QUANTIZABLE}  # only compute layers get decisions
    for unit in units:
        if unit.type not in QUANTIZABLE:
            continue
        decision = by_name[unit.name]
        skipped = any(selects(p, unit) for p in skips)
        chosen = not pats or any(selects(p, unit) for p in pats)
        # skip_names always wins; otherwise selected <=> some entry matches (or layers is empty)
        assert decision.quantized == (chosen and not skipped)
        assert (decision.skipped_by is not None) == skipped
        if decision.quantized:
            assert (decision.weights, decision.activations) == ("int8", "int8")
    # a pattern is unmatched iff it selects no unit at all, "only other types" iff only non-compute ones
    labelled = [(f"layers[{i}] '{p}'", p) for i, p in enumerate(pats)] + [(f"skip_names[{i}] '{p}'", p) for i, p in enumerate(skips)]
    for label, p in labelled:
        hits = {u.type in QUANTIZABLE for u in units if selects(p, u)}
        assert (label in result.unmatched) == (not hits)
        assert (label in result.only_other_types) == (hits == {False})


@settings(max_examples=100, deadline=None)
@given(pats=st.lists(patterns, min_size=1, max_size=4), name=segment, kind=st.sampled_from(sorted(QUANTIZABLE)))
def test_order_of_entries_decides_weights_dtype(pats, name, kind):
    unit = Unit(name, kind)
    dtypes = ["int8", "fp8_e4m3fn", "native", "fp8_e5m2"]
    layers = [{"module_name": p, "weights": {"dtype": dtypes[i % 4]}} for i, p in enumerate(pats)]
    s = spec(backend="modelopt.pytorch", layers=layers)
    decision = decide([unit], s.layers, [], static=True, warn=False).decisions[0]
    matching = [i for i, p in enumerate(pats) if selects(p, unit)]
    if matching:
        assert decision.weights == dtypes[matching[-1] % 4]
        assert decision.weights_rule.startswith(f"layers[{matching[-1]}] '{pats[matching[-1]]}'")
    else:
        assert not decision.quantized


def test_weight_names_recover_module_paths_the_scope_name_lost(tmp_path):
    from tao_qc.spec.selection import onnx_units

    model = CalledThroughContainers().eval()
    zoo.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "c.onnx")
    graph = onnx.load(tmp_path / "c.onnx")
    s = spec(backend="modelopt.onnx", layers=[{"module_name": "heads.*"}, {"module_name": "wrapper.*"}, {"module_name": "shared"}])
    in_torch = selected(decide(torch_units(model), s.layers, s.skip_names, static=True))
    units = {u.name: u for u in onnx_units(graph)}
    chosen = selected(decide(list(units.values()), s.layers, s.skip_names, static=True))
    assert in_torch == {"heads.cls", "wrapper.conv", "shared"}
    assert {alias for name in chosen for alias in units[name].name_aliases} >= in_torch
    assert len([n for n in chosen if units[n].type == "Conv"]) == 3  # wrapper.conv and both calls of shared


def test_linear_selects_weight_matmuls_but_not_attention(tmp_path):
    from tao_qc.spec.selection import onnx_units

    model = zoo.build("tiny_vit")
    zoo.export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "vit.onnx")
    s = spec(backend="modelopt.onnx", layers=[{"module_name": "Linear"}])
    chosen = selected(decide(onnx_units(onnx.load(tmp_path / "vit.onnx")), s.layers, s.skip_names, static=True))
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {module_path_from_onnx_name(n) for n in chosen} == linears
    # onnx_ir models give the same units
    import onnx_ir as ir

    assert [u.name for u in onnx_units(ir.load(tmp_path / "vit.onnx"))] == [u.name for u in onnx_units(onnx.load(tmp_path / "vit.onnx"))]
