"""Each canonicalization and matching pass on real graphs (zoo exports and the shared models):
numbers checked in ONNX Runtime, decisions and warnings checked by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from _compile_helpers import CNN_MNIST_PYTORCH, MNIST_CNTK, export_zoo, session, third_party_model
from tao_qc.errors import InputError
from tao_qc.passes.fold_batchnorm import FoldBatchNorm
from tao_qc.passes.fold_constants import SHAPE_VALUE_OPS, SYMBOLIC_FOLD_OPS, FoldConstants, could_fold
from tao_qc.passes.load_and_check import LoadAndCheck
from tao_qc.passes.match_layers import ATTENTION_DEFAULT_RULE, MatchLayers
from tao_qc.passes.remove_identity import RemoveIdentity
from tao_qc.testing import zoo
from tao_qc.passes import default_passes
from tao_qc.pipeline import PassContext, Pipeline
from tao_qc.spec import load_spec
from tao_qc.ir.textform import format_model


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def ctx(tmp_path: Path, source: Path | None = None, **spec) -> PassContext:
    return PassContext(spec=load_spec({"quantize": {"backend": "modelopt.onnx", **spec}}), work_dir=tmp_path, source_path=source)


def outputs(model, feeds) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return session(proto).run(None, feeds)


def test_batchnorm_folds_into_conv_and_keeps_outputs(tmp_path, zoo_dir):
    path = export_zoo("small_cnn", zoo_dir)
    model = ir.load(path)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    before = outputs(model, feeds)
    result = FoldBatchNorm().run(model, ctx(tmp_path))
    ops = [n.op_type for n in result.model.graph]
    assert result.changed and "BatchNormalization" not in ops
    assert result.stats == {"batchnorm_folded": 3, "batchnorm_kept": 0}
    assert ops.count("Conv") == 4
    after = outputs(result.model, feeds)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-5)
    assert np.abs(before[0]).max() > 1e-2  # the comparison is not between near-zeros


def test_batchnorm_folds_when_its_parameters_are_graph_inputs(tmp_path, shared_models):
    source = shared_models / "ultraface_rfb320.onnx"
    model = ir.load(source)
    assert any(v.name in model.graph.initializers for v in model.graph.inputs)  # old-IR form
    feeds = {"input": np.random.default_rng(1).uniform(-1, 1, (1, 3, 240, 320)).astype(np.float32)}
    before = outputs(model, feeds)
    result = FoldBatchNorm().run(model, ctx(tmp_path))
    assert result.stats["batchnorm_folded"] >= 1 and result.stats["batchnorm_kept"] == 0
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph}
    assert any("graph inputs (old IR)" in note for note in result.notes)
    after = outputs(result.model, feeds)
    for old, new in zip(before, after):
        np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-5)


def test_fold_constants_shrinks_an_exported_transformer_and_keeps_outputs(tmp_path, zoo_dir):
    model = ir.load(export_zoo("transformer_block", zoo_dir))
    feeds = {"input": np.random.default_rng(2).standard_normal((1, 16, 128)).astype(np.float32)}
    before, nodes_before = outputs(model, feeds), len(model.graph)
    result = FoldConstants().run(model, ctx(tmp_path))
    assert result.changed and result.stats["nodes_folded"] == nodes_before - len(result.model.graph) > 0
    np.testing.assert_allclose(outputs(result.model, feeds)[0], before[0], rtol=1e-5, atol=1e-5)


def test_fold_constants_precheck_knows_every_op_onnxscript_simplifies():
    from onnxscript.optimizer import _constant_folding

    registered = {op for (domain, op) in _constant_folding.registry.op_evaluators if domain in ("", "ai.onnx")}
    assert registered - SHAPE_VALUE_OPS <= SYMBOLIC_FOLD_OPS


@pytest.mark.parametrize("name", ["resnet18", "small_cnn", "mobilenet"])
def test_fold_constants_precheck_skips_only_graphs_the_folder_leaves_alone(name, zoo_dir):
    from onnxscript.optimizer import fold_constants

    model = ir.load(export_zoo(name, zoo_dir))
    nodes = len(model.graph)
    assert not could_fold(model)
    assert not fold_constants(model).modified and len(model.graph) == nodes


@pytest.mark.parametrize("name", ["cnn_mnist_pytorch", "mnist_cntk", "ultraface_rfb320"])
def test_fold_constants_precheck_lets_the_folder_see_real_exported_graphs(name, request):
    assert could_fold(ir.load(third_party_model(f"{name}.onnx", request)))


def test_identity_removal_on_an_exported_transformer(tmp_path, zoo_dir):
    model = ir.load(export_zoo("transformer_block", zoo_dir))
    feeds = {"input": np.random.default_rng(3).standard_normal((1, 16, 128)).astype(np.float32)}
    before = outputs(model, feeds)
    assert sum(n.op_type == "Identity" for n in model.graph) == 2
    result = RemoveIdentity().run(model, ctx(tmp_path))
    assert result.changed and not any(n.op_type == "Identity" for n in result.model.graph)
    assert result.stats["identity_removed"] == 2
    np.testing.assert_allclose(outputs(result.model, feeds)[0], before[0], rtol=1e-6)


def test_inference_dropout_and_identities_are_removed_and_output_names_kept(tmp_path):
    proto = onnx.load(str(CNN_MNIST_PYTORCH))
    graph = proto.graph
    # Put a Dropout (opset 9: a no-op at inference) after the first node and an Identity before the output.
    first = graph.node[0]
    out = first.output[0]
    first.output[0] = out + "_pre"
    graph.node.insert(1, helper.make_node("Dropout", [out + "_pre"], [out], name="drop", ratio=0.5))
    final = graph.output[0].name
    producer = next(n for n in graph.node if final in n.output)
    producer.output[list(producer.output).index(final)] = final + "_pre"
    graph.node.append(helper.make_node("Identity", [final + "_pre"], [final], name="ident"))
    onnx.checker.check_model(proto)
    feeds = {"0": np.random.default_rng(4).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)}
    before = outputs(proto, feeds)
    model = ir.from_proto(proto)
    result = RemoveIdentity().run(model, ctx(tmp_path))
    ops = [n.op_type for n in result.model.graph]
    assert "Dropout" not in ops and "Identity" not in ops
    assert result.stats == {"dropout_removed": 1, "identity_removed": 1}
    assert [v.name for v in result.model.graph.outputs] == [final]
    np.testing.assert_allclose(outputs(result.model, feeds)[0], before[0], rtol=1e-6)


def canonicalized(path: Path, tmp_path: Path) -> ir.Model:
    """The graph after load-and-check and the canonicalize group, as `tao-qc compile` runs them."""
    context = ctx(tmp_path, path)
    return Pipeline(default_passes(context.spec)[:2]).run(None, context).model


def test_constant_node_weights_canonicalize_like_their_initializer_twin(tmp_path, zoo_dir):
    twin = export_zoo("lcnet", zoo_dir)
    constants = zoo.with_constant_node_weights(twin, tmp_path / "lcnet_constants.onnx")
    raw = onnx.load(str(constants))
    assert not raw.graph.initializer and sum(n.op_type == "Constant" for n in raw.graph.node) > 100
    feeds = {"input": np.random.default_rng(5).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    expected = outputs(raw, feeds)[0]

    from_twin, from_constants = canonicalized(twin, tmp_path), canonicalized(constants, tmp_path)
    ops = [n.op_type for n in from_constants.graph]
    assert "BatchNormalization" not in ops and "Constant" not in ops
    # The same folded graph, weights included (the text form's digests are CRCs of the tensor bytes).
    assert format_model(from_constants, digests=True) == format_model(from_twin, digests=True)
    got = outputs(from_constants, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)
    assert np.abs(expected).max() > 1e-2


def test_fold_batchnorm_alone_reads_constant_node_parameters(tmp_path, zoo_dir):
    constants = zoo.with_constant_node_weights(export_zoo("small_cnn", zoo_dir), tmp_path / "small_cnn_constants.onnx")
    model = ir.load(constants)
    feeds = {"input": np.random.default_rng(6).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    before = outputs(model, feeds)[0]
    result = FoldBatchNorm().run(model, ctx(tmp_path))
    assert result.stats == {"batchnorm_folded": 3, "batchnorm_kept": 0}
    assert any("were Constant nodes" in note for note in result.notes)
    np.testing.assert_allclose(outputs(result.model, feeds)[0], before, rtol=1e-4, atol=1e-5)


def test_fold_constants_alone_folds_transposes_of_constant_node_weights(tmp_path, zoo_dir):
    twin = export_zoo("transformer_block", zoo_dir)
    constants = zoo.with_constant_node_weights(twin, tmp_path / "transformer_constants.onnx")
    folded = {}
    for label, path in (("twin", twin), ("constants", constants)):
        result = FoldConstants().run(ir.load(path), ctx(tmp_path))
        folded[label] = [n.op_type for n in result.model.graph if n.op_type != "Constant"]
    assert folded["constants"] == folded["twin"] and folded["twin"].count("Transpose") == 3


def test_dropout_with_a_constant_node_training_mode_is_removed(tmp_path, shared_models):
    proto = onnx.load(str(shared_models / "cnn_mnist_pytorch.onnx"))
    graph = proto.graph
    first = graph.node[0]
    out = first.output[0]
    first.output[0] = out + "_pre"
    mode = helper.make_node("Constant", [], ["training_mode"], name="mode",
                            value=helper.make_tensor("training_mode", onnx.TensorProto.BOOL, [], [False]))
    graph.node.insert(1, mode)
    graph.node.insert(2, helper.make_node("Dropout", [out + "_pre", "", "training_mode"], [out], name="drop"))
    proto.opset_import[0].version = 13
    onnx.checker.check_model(proto)
    result = RemoveIdentity().run(ir.from_proto(proto), ctx(tmp_path))
    assert result.stats["dropout_removed"] == 1
    assert "Dropout" not in [n.op_type for n in result.model.graph]


def test_match_layers_records_each_decision_and_its_rule(tmp_path, zoo_dir):
    model = ir.load(export_zoo("small_cnn", zoo_dir))
    context = ctx(tmp_path, layers=[{"module_name": "Conv2d"}, {"module_name": "block.conv2", "weights": {"dtype": "native"}, "activations": {"dtype": "native"}}],
                  skip_names=["*stem*"])
    result = MatchLayers().run(model, context)
    decisions = {d.unit.name: d for d in context.facts["decisions"]}
    assert set(decisions) == {"/stem/stem.0/Conv", "/block/conv1/Conv", "/block/conv2/Conv", "/down/down.0/Conv", "/head/Gemm"}
    assert decisions["/block/conv1/Conv"].quantized and decisions["/block/conv1/Conv"].weights == "int8"
    assert "layers[0] 'Conv2d' (by type)" in decisions["/block/conv1/Conv"].weights_rule
    assert not decisions["/block/conv2/Conv"].quantized and "layers[1] 'block.conv2' (by module name)" in decisions["/block/conv2/Conv"].reason
    assert decisions["/stem/stem.0/Conv"].skipped_by == "skip_names[0] '*stem*' (by name)"
    assert not decisions["/head/Gemm"].quantized  # Conv2d does not select a Gemm
    assert result.stats["selected"] == 2 and result.stats["kept_float"] == 3
    assert not result.changed
    assert any(note.startswith("/stem/stem.0/Conv [Conv]: kept in float: skip_names[0]") for note in result.notes)


def test_match_layers_warns_about_patterns_that_select_nothing(tmp_path, zoo_dir, caplog):
    model = ir.load(export_zoo("small_cnn", zoo_dir))
    context = ctx(tmp_path, layers=[{"module_name": "Conv"}, {"module_name": "*nothing_here*"}, {"module_name": "Relu"}])
    with caplog.at_level("WARNING", logger="tao_qc"):
        result = MatchLayers().run(model, context)
    assert "warning: pattern layers[1] '*nothing_here*' matches nothing" in result.notes
    assert any("layers[2] 'Relu' matches only nodes that cannot be quantized" in n for n in result.notes)
    assert "pattern layers[1] '*nothing_here*' matches nothing" in caplog.text
    assert context.facts["unmatched_patterns"] == ["layers[1] '*nothing_here*'"]


def test_match_layers_errors_when_nothing_is_selected(tmp_path, zoo_dir):
    model = ir.load(export_zoo("small_cnn", zoo_dir))
    with pytest.raises(InputError, match=r"select no Conv/Gemm/MatMul node .*layers\[0\] '\*typo\*'"):
        MatchLayers().run(model, ctx(tmp_path, layers=[{"module_name": "*typo*"}]))


def test_attention_matmuls_stay_float_by_default_and_are_quantized_when_selected(tmp_path, zoo_dir):
    model = ir.from_proto(onnx.load(str(export_zoo("transformer_block", zoo_dir))))
    FoldConstants().run(model, ctx(tmp_path))
    context = ctx(tmp_path)
    MatchLayers().run(model, context)
    decisions = {d.unit.name: d for d in context.facts["decisions"]}
    assert context.facts["activation_matmuls"] == ["/MatMul", "/MatMul_1"]
    for name in ("/MatMul", "/MatMul_1"):
        assert not decisions[name].quantized and decisions[name].weights_rule == ATTENTION_DEFAULT_RULE
    for name in ("/qkv/MatMul", "/proj/MatMul", "/fc1/MatMul", "/fc2/MatMul"):
        assert decisions[name].quantized
    chosen = ctx(tmp_path, layers=[{"module_name": "/MatMul*", "activations": {"dtype": "int8"}}])
    MatchLayers().run(model, chosen)
    picked = {d.unit.name: d for d in chosen.facts["decisions"] if d.quantized}
    assert set(picked) == {"/MatMul", "/MatMul_1"}
    assert picked["/MatMul"].weights == "int8" and "second input is an activation" in picked["/MatMul"].weights_rule


def test_a_model_without_conv_gemm_or_matmul_is_an_input_error(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    context = ctx(tmp_path, source=path)
    model = LoadAndCheck(path).run(None, context).model
    with pytest.raises(InputError, match=r"relu.onnx has no Conv, Gemm or MatMul node.*its ops: Relu"):
        MatchLayers().run(model, context)


def test_load_and_check_records_opset_names_nodes_and_drops_initializer_inputs(tmp_path):
    source = MNIST_CNTK
    original = source.read_bytes()
    context = ctx(tmp_path, source=source)
    result = LoadAndCheck().run(None, context)
    assert context.facts["opset"] == 8
    assert result.stats["initializer_inputs_removed"] == 8
    assert [v.name for v in result.model.graph.inputs] == ["Input3"]
    assert all(n.name for n in result.model.graph)
    onnx.checker.check_model(ir.to_proto(result.model))
    assert source.read_bytes() == original


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all\n" * 3, None])
def test_load_and_check_refuses_unreadable_files_in_one_line(tmp_path, content):
    path = tmp_path / "bad.onnx"
    if content is None:  # truncated real model
        path.write_bytes(MNIST_CNTK.read_bytes()[:3000])
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        LoadAndCheck(path).run(None, ctx(tmp_path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_folded_convs_keep_their_names(tmp_path, zoo_dir):
    model = ir.load(export_zoo("small_cnn", zoo_dir))
    names = [n.name for n in model.graph if n.op_type == "Conv"]
    FoldBatchNorm().run(model, ctx(tmp_path))
    assert [n.name for n in model.graph if n.op_type == "Conv"] == names
    context = ctx(tmp_path, skip_names=["*stem*"])
    MatchLayers().run(model, context)
    assert {d.unit.name for d in context.facts["decisions"] if not d.quantized} == {"/stem/stem.0/Conv"}


def test_check_calibration_accepts_random_only_when_asked_and_says_so_loudly(tmp_path, caplog):
    from tao_qc.passes.check_calibration import CheckCalibration

    source = MNIST_CNTK
    context = ctx(tmp_path, source=source, calibration={"data": "random", "max_samples": 4})
    model = LoadAndCheck().run(None, context).model
    with caplog.at_level("WARNING", logger="tao_qc"):
        result = CheckCalibration().run(model, context)
    assert context.calibration.is_random and result.stats == {"samples": 4, "random": 1}
    assert any("RANDOM" in note for note in result.notes) and "RANDOM" in caplog.text
    with pytest.raises(InputError, match="no data given"):
        CheckCalibration().run(model, ctx(tmp_path, source=source))


def test_fold_conv_affine_takes_the_recognizers_scale_and_shift_steps_into_its_convs(tmp_path, shared_models):
    from tao_qc.testing.corpus import recognizer_input, text_lines

    source = shared_models / "ppocrv5_rec.onnx"
    lines = recognizer_input(text_lines(shared_models / "ppocrv5" / "lines").files[:4])
    expected = session(source).run(None, {"x": lines})[0]
    model = canonicalized(source, tmp_path)
    readers_of_conv = [n for n in model.graph if n.op_type in ("Add", "Mul") and any(
        v.producer() is not None and v.producer().op_type == "Conv" for v in n.inputs if v is not None)
        and any(v.const_value is not None for v in n.inputs if v is not None)]
    assert not readers_of_conv  # no Conv -> constant Add/Mul left
    assert sum(n.op_type in ("Add", "Mul") for n in model.graph) < 80  # 184 in the export
    got = outputs(model, {"x": lines})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def affine_around_conv(pads: list[int], before: list[tuple[str, float]], after: list[tuple[str, float]]) -> onnx.ModelProto:
    """input -> steps `before` -> Conv(pads) -> steps `after` -> output, each step (op, constant)."""
    rng = np.random.default_rng(7)
    tensors = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}
    nodes, current = [], "input"
    steps = [(op, value, 3) for op, value in before] + [("Conv", 0.0, 4)] + [(op, value, 4) for op, value in after]
    for index, (op, value, channels) in enumerate(steps):
        out = f"t{index}"
        if op == "Conv":
            nodes.append(helper.make_node("Conv", [current, "w"], [out], name="conv", kernel_shape=[3, 3], pads=pads))
        else:
            tensors[f"c{index}"] = np.full((1, channels, 1, 1), value, np.float32)
            nodes.append(helper.make_node(op, [current, f"c{index}"], [out], name=f"step{index}"))
        current = out
    nodes.append(helper.make_node("Identity", [current], ["output"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(v, k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("pads,before_folded", [([0, 0, 0, 0], 2), ([1, 1, 1, 1], 0)])
def test_fold_conv_affine_folds_steps_before_a_conv_only_without_padding(pads, before_folded, tmp_path):
    from tao_qc.passes.fold_conv_affine import FoldConvAffine

    proto = affine_around_conv(pads, [("Mul", 1.5), ("Add", 0.25)], [("Sub", 0.5), ("Div", 4.0), ("Add", -1.0)])
    feeds = {"input": np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    expected = outputs(proto, feeds)[0]
    result = FoldConvAffine().run(ir.from_proto(proto), ctx(tmp_path))
    assert result.stats == {"folded_after_conv": 3, "folded_before_conv": before_folded}
    np.testing.assert_allclose(outputs(result.model, feeds)[0], expected, rtol=1e-5, atol=1e-5)
