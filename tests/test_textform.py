"""The canonical text form on real graphs: zoo exports, third-party models, a modelopt Q/DQ graph."""

from __future__ import annotations

import random
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from tao_qc.testing import zoo
from tao_qc.pipeline import PROVENANCE_KEY, mark_created
from tao_qc.ir.textform import counts_from_text, diff_text, format_model, op_counts, op_delta

from _compile_helpers import CNN_MNIST_PYTORCH, MNIST_CNTK, third_party_model
from _textform_helpers import small_cnn_models

SHARED = ["mnist_cntk.onnx", "cnn_mnist_pytorch.onnx", "ultraface_rfb320.onnx", "yunet_n_320.onnx", "fastestdet.onnx"]
DEFINED = re.compile(r"^\s*(%\S+(?:, %\S+)*) = ", re.MULTILINE)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return small_cnn_models(tmp_path_factory)


@pytest.fixture(scope="module")
def qdq(models) -> onnx.ModelProto:
    return onnx.load(models["int8"])


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's note about iterating a tensor in the attention block
        return onnx.load(zoo.export_zoo("tiny_vit", tmp_path_factory.mktemp("vit") / "tiny_vit.onnx"))


def shuffled(model: onnx.ModelProto, order: list[int]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[i] for i in order]
    new_nodes = [onnx.NodeProto() for _ in nodes]
    for target, node in zip(new_nodes, nodes):
        target.CopyFrom(node)
    del copy.graph.node[:]
    copy.graph.node.extend(new_nodes)
    return copy


def defined_values(text: str) -> list[str]:
    return [name for match in DEFINED.finditer(text) for name in match.group(1).split(", ")]


def node_line(text: str, node_name: str) -> str:
    [line] = [line for line in text.splitlines() if line.endswith(f"# {node_name}")]
    return line


def test_same_model_loaded_resaved_or_converted_to_onnx_ir_prints_identically(models, qdq, tmp_path):
    text = format_model(qdq)
    assert format_model(onnx.load(models["int8"])) == text
    onnx.save(qdq, tmp_path / "again.onnx")
    assert format_model(onnx.load(tmp_path / "again.onnx")) == text
    assert format_model(ir.load(models["int8"])) == text
    assert format_model(ir.serde.deserialize_model(qdq)) == text


def test_node_order_does_not_change_the_text(qdq, tiny_vit):
    for model in (qdq, tiny_vit):
        order = list(range(len(model.graph.node)))
        random.Random(7).shuffle(order)
        assert order != sorted(order)
        assert format_model(shuffled(model, order)) == format_model(model)


def topological_permutations(model: onnx.ModelProto):
    """Random valid topological orders of the graph (each a permutation of node indices)."""
    producer = {name: i for i, node in enumerate(model.graph.node) for name in node.output}
    preds = [{producer[n] for n in node.input if n in producer} for node in model.graph.node]

    @st.composite
    def orders(draw):
        done, order = set(), []
        while len(order) < len(preds):
            ready = [i for i in range(len(preds)) if i not in done and preds[i] <= done]
            pick = draw(st.sampled_from(ready))
            done.add(pick)
            order.append(pick)
        return order

    return orders()


@pytest.fixture(scope="module")
def qdq_text(qdq) -> str:
    return format_model(qdq)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_valid_topological_order_prints_the_same_text(data, qdq, qdq_text):
    order = data.draw(topological_permutations(qdq))
    model = shuffled(qdq, order)
    onnx.checker.check_model(model)  # the permutation is a valid graph
    assert format_model(model) == qdq_text


def test_internal_values_are_renamed_in_definition_order_and_graph_io_keeps_names(qdq, qdq_text):
    internal = [name for node in qdq.graph.node for name in node.output if name != "output"]
    code = "\n".join(line.split("  # ")[0] for line in qdq_text.splitlines())  # node names trail after '#'
    for name in internal:
        assert name not in code
    defined = defined_values(qdq_text)
    renamed = [v for v in defined if re.fullmatch(r"%\d+", v)]
    assert renamed == [f"%{i}" for i in range(len(internal))]
    assert defined[-1] == "%output"
    assert "  in  %input: f32[1,3,32,32]" in qdq_text
    assert "  out %output: f32[1,10]" in qdq_text
    assert qdq_text.splitlines()[-3] == "return %output"
    # Every operand was defined on an earlier line: the printed order is topological.
    seen = {"%input"}
    for line in qdq_text.splitlines():
        if " = " in line:
            lhs, rhs = line.split(" = ", 1)
            for operand in re.findall(r"%[\w\"./]+", rhs.split(" : ")[0]):
                assert operand in seen, line
            seen.update(lhs.split(", "))


def test_qdq_scales_and_zero_points_print_rounded_with_result_types(qdq, qdq_text):
    initializers = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    activation_qs = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and initializers[n.input[1]].ndim == 0]
    assert activation_qs
    for node in activation_qs:
        scale, zero_point = float(initializers[node.input[1]]), int(initializers[node.input[2]])
        line = node_line(qdq_text, node.name)
        assert f", {scale:.6g} f32[], {zero_point} i8[])" in line
        assert re.search(r" : i8\[1,\d+,\d+,\d+\]  #", line), line
    # Per-channel weight scales (16+ values) show only their type.
    weight_q = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and initializers[n.input[1]].ndim == 1)
    channels = initializers[weight_q.input[1]].shape[0]
    assert f"f32[{channels}], i8[{channels}]) {{axis=0}}" in node_line(qdq_text, weight_q.name)


def test_large_initializers_print_their_type_never_their_values(qdq, qdq_text):
    weight = next(t for t in qdq.graph.initializer if t.name == "stem.0.weight")
    values = numpy_helper.to_array(weight).reshape(-1)
    assert "(%input, f32[16,3,3,3]" not in qdq_text  # it feeds a QuantizeLinear, first operand
    assert "QuantizeLinear(f32[16,3,3,3], f32[16], i8[16])" in qdq_text
    for value in values[:20]:
        assert f"{value:.6g}" not in qdq_text
    assert len(qdq_text) < 200 * len(qdq.graph.node)


def test_digests_show_a_weight_change_only_when_asked(models):
    model = onnx.load(models["float"])
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    tensor = next(t for t in changed.graph.initializer if t.name == "block.conv1.weight")
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, tensor.name))
    assert format_model(changed) == format_model(model)
    with_digest, without = format_model(changed, digests=True), format_model(model, digests=True)
    assert with_digest != without
    diff = diff_text(without, with_digest, before_name="a", after_name="b")
    assert diff.startswith("# ops: no change (nodes 15)\n")
    assert [line for line in diff.splitlines() if line.startswith("+%")] == [
        "+" + line for line in with_digest.splitlines() if line.endswith("# /block/conv1/Conv")
    ]


@pytest.mark.parametrize("name", SHARED)
def test_third_party_models_print_with_true_counts_and_known_types(request, name):
    model = onnx.load(third_party_model(name, request))
    text = format_model(model)
    real = Counter(node.op_type for node in model.graph.node)
    assert counts_from_text(text) == dict(real) == op_counts(model) == op_counts(ir.serde.deserialize_model(model))
    assert f"# ops ({len(model.graph.node)} nodes): " in text
    assert " : ?" not in text and "%?" not in text
    assert format_model(ir.serde.deserialize_model(model)) == text
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert f"# opsets: ai.onnx {opset}" in text


def test_old_ir_initializers_listed_as_inputs_print_inline_and_odd_names_are_quoted():
    cntk = format_model(onnx.load(MNIST_CNTK))
    assert [line for line in cntk.splitlines() if line.startswith("  in ")] == ["  in  %Input3: f32[1,1,28,28]"]
    assert "  initializers also listed as graph inputs: 8" in cntk
    assert "Conv(%Input3, f32[8,1,5,5])" in cntk
    torch_v1 = format_model(onnx.load(CNN_MNIST_PYTORCH))
    assert '  in  %"0": f32[1,1,28,28]' in torch_v1
    assert 'Conv(%"0", f32[10,1,5,5], f32[10])' in torch_v1
    assert "return %\"21\"" in torch_v1


def test_diff_is_headed_by_the_real_op_delta(models, qdq):
    before_model = onnx.load(models["float"])
    before, after = format_model(before_model), format_model(qdq)
    b, a = Counter(n.op_type for n in before_model.graph.node), Counter(n.op_type for n in qdq.graph.node)
    diff = diff_text(before, after, before_name="01-load.txt", after_name="04-quantize.txt")
    header, from_line, to_line = diff.splitlines()[:3]
    added = ", ".join(f"+{op} {a[op] - b[op]}" for op in sorted(a) if a[op] > b[op])
    assert header == f"# ops: {added} (nodes {sum(b.values())} -> {sum(a.values())})"
    assert (from_line, to_line) == ("--- 01-load.txt", "+++ 04-quantize.txt")
    assert op_delta(op_counts(qdq), op_counts(before_model)).startswith("# ops: -DequantizeLinear ")
    added_q = [line for line in diff.splitlines() if line.startswith("+") and "= QuantizeLinear(" in line]
    assert len(added_q) == a["QuantizeLinear"]


def test_op_delta_lists_additions_then_removals_and_no_change():
    assert op_delta({"Conv": 2, "BatchNormalization": 2}, {"Conv": 2, "QuantizeLinear": 3}) == (
        "# ops: +QuantizeLinear 3, -BatchNormalization 2 (nodes 4 -> 5)"
    )
    assert op_delta({"Conv": 2}, {"Conv": 2}) == "# ops: no change (nodes 2)"


def test_provenance_and_node_names_trail_each_line(models):
    model = ir.load(models["float"])
    relu = next(node for node in model.graph if node.op_type == "Relu")
    mark_created(relu, "fold-batchnorm")
    text = format_model(model)
    assert node_line(text, f"{relu.name} [{PROVENANCE_KEY}=fold-batchnorm]").startswith("%")


def test_if_subgraphs_print_indented_with_outer_values_renamed():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    branch_out = helper.make_tensor_value_info("branch_out", onnx.TensorProto.FLOAT, [2])
    then_graph = helper.make_graph([helper.make_node("Relu", ["doubled"], ["branch_out"], name="then_relu")], "then", [], [branch_out])
    else_graph = helper.make_graph([helper.make_node("Neg", ["doubled"], ["branch_out"], name="else_neg")], "else", [], [branch_out])
    nodes = [
        helper.make_node("Add", ["x", "x"], ["doubled"], name="double"),
        helper.make_node("ReduceSum", ["doubled"], ["total"], name="sum", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
        helper.make_node("If", ["positive"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [zero]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    text = format_model(model)
    lines = text.splitlines()
    start = lines.index(node_line(text, "branch"))
    assert lines[start].startswith("%y = If(%2) {else_branch=@else_branch, then_branch=@then_branch}")
    assert lines[start + 1 : start + 5] == [
        "  else_branch() {",
        "    %branch_out = Neg(%0) : f32[2]  # else_neg",
        "    return %branch_out",
        "  }",
    ]
    assert "    %branch_out = Relu(%0) : f32[2]  # then_relu" in lines
    assert "Greater(%1, 0 f32[])" in text
    # The If reads %0 inside its branches, so reordering cannot hoist it above the Add.
    assert format_model(shuffled(model, [3, 2, 1, 0])) == text


def test_loop_body_prints_its_inputs_and_reads_outer_values_by_their_new_names():
    import onnxruntime as ort

    f32, i64, boolean = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"], name="accumulate"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", i64, []),
            helper.make_tensor_value_info("cond_in", boolean, []),
            helper.make_tensor_value_info("acc_in", f32, [2]),
        ],
        [helper.make_tensor_value_info("cond_out", boolean, []), helper.make_tensor_value_info("acc_out", f32, [2])],
    )
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["step"], name="square"),
        helper.make_node("Loop", ["trips", "", "x"], ["total"], name="repeat", body=body),
    ]
    trips = numpy_helper.from_array(np.array(3, dtype=np.int64), "trips")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", f32, [2])], [helper.make_tensor_value_info("total", f32, [2])], [trips]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": np.array([1, 2], np.float32)})[0], [4, 14])

    lines = format_model(model).splitlines()
    assert "%total = Loop(3 i64[], none, %x) {body=@body} : f32[2]  # repeat" in lines
    assert "  body(%i: i64[], %cond_in: bool[], %acc_in: f32[2]) {" in lines
    assert "    %acc_out = Add(%acc_in, %0) : f32[2]  # accumulate" in lines
    assert format_model(shuffled(model, [1, 0])) == "\n".join(lines) + "\n"
