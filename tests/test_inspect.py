"""`tao-qc inspect` and graph_facts on real modelopt INT8/FP8 graphs and third-party models."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest

from tao_qc.cli import main
from tao_qc.ir.graph_facts import quantization_summary, quantized_node_names
from tao_qc.spec.selection import decide, onnx_unit
from tao_qc.pipeline import PROVENANCE_KEY
from tao_qc.spec import load_spec
from tao_qc.ir.textform import format_model

from _compile_helpers import ASSETS, third_party_model
from _textform_helpers import small_cnn_models

COMPUTE = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return small_cnn_models(tmp_path_factory)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def dq_fed(model: onnx.ModelProto) -> set[str]:
    """Compute nodes whose first two inputs are both produced by DequantizeLinear, read directly."""
    producer = {name: node.op_type for node in model.graph.node for name in node.output}
    return {
        node.name
        for node in model.graph.node
        if node.op_type in COMPUTE and all(producer.get(name) == "DequantizeLinear" for name in node.input[:2])
    }


def test_summary_counts_exactly_the_qdq_and_quantized_nodes_of_the_modelopt_graph(models):
    model = onnx.load(models["int8"])
    summary = quantization_summary(model)
    ops = Counter(node.op_type for node in model.graph.node)
    assert summary["qdq"] == {"QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"]}
    assert ops["QuantizeLinear"] > 0
    assert summary["qdq_dtypes"] == {"int8": ops["QuantizeLinear"] + ops["DequantizeLinear"]}
    quantized = dq_fed(model)
    assert quantized_node_names(model) == quantized
    assert {node.name for node in model.graph.node if node.op_type == "Conv"} <= quantized
    compute = [node for node in model.graph.node if node.op_type in COMPUTE]
    assert summary["compute"] == {
        "total": len(compute),
        "quantized": len(quantized),
        "partial": 0,
        "float": len(compute) - len(quantized),
    }
    facts = {fact["name"]: fact for fact in summary["compute_nodes"]}
    conv = facts["/stem/stem.0/Conv"]
    assert (conv["activation"], conv["weights"], conv["weights_granularity"]) == ("int8", "int8", "per-channel (axis 0)")
    assert "input_DequantizeLinear" in conv["evidence"]


@pytest.mark.parametrize("name", ["mnist_cntk.onnx", "cnn_mnist_pytorch.onnx", "yunet_n_320.onnx"])
def test_unquantized_third_party_graphs_have_no_qdq_and_only_float_compute(name, request):
    plain = onnx.load(third_party_model(name, request))
    facts = quantization_summary(plain)
    assert facts["qdq"] == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert facts["compute"]["float"] == facts["compute"]["total"] == sum(1 for node in plain.graph.node if node.op_type in COMPUTE) > 0


def test_fp8_qdq_dtype(models):
    model = onnx.load(models["fp8"])
    summary = quantization_summary(model)
    ops = Counter(node.op_type for node in model.graph.node)
    assert summary["qdq_dtypes"] == {"float8e4m3fn": ops["QuantizeLinear"] + ops["DequantizeLinear"]}
    assert summary["compute"]["quantized"] == len(dq_fed(model))


def test_integer_ops_count_as_quantized():
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3])
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.int8), "w")
    node = helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mm")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [weight]), opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    [fact] = quantization_summary(model)["compute_nodes"]
    assert (fact["status"], fact["activation"], fact["weights"]) == ("quantized", "uint8", "int8")


def test_cli_summary_human_and_json(models, capsys):
    code, out, err = run(capsys, models["int8"])
    assert code == 0, err
    model = onnx.load(models["int8"])
    quantized, compute = len(dq_fed(model)), sum(1 for n in model.graph.node if n.op_type in COMPUTE)
    assert f"{quantized} quantized, 0 partial, {compute - quantized} float (of {compute} Conv/Gemm/MatMul)" in out
    assert "/head/Gemm" in out and "graph shows" in out

    code, out, _ = run(capsys, models["int8"], "--json")
    assert code == 0
    data = json.loads(out)
    assert data["compute_nodes"] == [
        {**fact, "reason": f"graph shows: {fact['evidence']}", "reason_source": "graph"}
        for fact in quantization_summary(model)["compute_nodes"]
    ]
    assert data["report"] is None and data["opsets"] == {"ai.onnx": 19}

    code, out, _ = run(capsys, models["int8"], "--text")
    assert code == 0 and out == format_model(model)


def test_results_folder_shows_the_reasons_the_report_recorded(models, tmp_path, capsys):
    model = onnx.load(models["int8"])
    spec = load_spec({"quantize": {"backend": "modelopt.onnx", "skip_names": ["*head*"]}})
    units = [onnx_unit(node.name, node.op_type) for node in model.graph.node]
    decisions = decide(units, spec.layers, spec.skip_names, static=True, warn=False).decisions
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(models["int8"], results / "model.int8.onnx")
    records = [{**d.as_dict(), "reason": d.reason} for d in decisions]
    (results / "report.json").write_text(json.dumps({"model": "model.int8.onnx", "match_layers": {"decisions": records}}))

    code, out, err = run(capsys, results, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == str(results / "model.int8.onnx")
    assert data["decisions_in_report"] == len(decisions)
    reasons = {fact["name"]: fact["reason"] for fact in data["compute_nodes"]}
    assert reasons == {d.unit.name: d.reason for d in decisions}
    assert reasons["/head/Gemm"] == "kept in float: skip_names[0] '*head*' (by name)"
    assert not any("disagrees" in fact for fact in data["compute_nodes"])

    # The report planned the head quantized but the graph runs it in float: inspect says so.
    records = [{**record, "quantized": True} if record["name"] == "/head/Gemm" else record for record in records]
    (results / "report.json").write_text(json.dumps({"decisions": records}))
    code, out, _ = run(capsys, results / "model.int8.onnx")
    assert code == 0
    assert "mismatch: report says quantized, graph shows float" in out


def test_cli_diff_of_two_models(models, capsys):
    before, after = onnx.load(models["float"]), onnx.load(models["int8"])
    code, out, err = run(capsys, models["float"], models["int8"], "--json")
    assert code == 0, err
    data = json.loads(out)
    b, a = Counter(n.op_type for n in before.graph.node), Counter(n.op_type for n in after.graph.node)
    assert data["op_delta"] == {op: a[op] - b[op] for op in set(a) | set(b) if a[op] != b[op]}
    assert {c["name"] for c in data["changes"]} == dq_fed(after)
    assert all(c["before"] == "float" and c["after"].startswith("quantized (act int8") for c in data["changes"])
    assert data["before"]["qdq"] == {"QuantizeLinear": 0, "DequantizeLinear": 0}

    code, out, _ = run(capsys, models["float"], models["int8"], "--text")
    assert code == 0
    assert out.startswith(data["op_delta_line"] + "\n")
    assert f"--- {models['float']}" in out and "+%0 = QuantizeLinear(%input, " in out


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_truncated_model_is_a_one_line_input_error(models, tmp_path, capsys, cut):
    data = models["int8"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    code, out, err = run(capsys, path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"tao-qc: error: inspect: {path} ")
    assert "truncated" in err


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, capsys, models):
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "missing.onnx": "does not exist",
        ASSETS / "MANIFEST.tsv": "is not a readable ONNX model",
        tmp_path / "empty": "holds no .onnx model",
    }
    for path, message in cases.items():
        code, out, err = run(capsys, path)
        assert code == 2, err
        assert err.count("\n") == 1 and message in err, err
    code, _, err = run(capsys, models["float"], models["int8"], models["fp8"])
    assert code == 2 and "takes one model or two" in err
    code, _, err = run(capsys, models["int8"], "--report", tmp_path / "nope.json")
    assert code == 2 and "--report" in err and err.count("\n") == 1


def test_a_conv_whose_weight_bypasses_its_dq_is_partial_and_the_diff_says_so(models, tmp_path, capsys):
    model = onnx.load(models["int8"])
    conv = next(node for node in model.graph.node if node.name == "/block/conv1/Conv")
    conv.input[1] = "block.conv1.weight"  # the float weight, skipping its Q/DQ pair
    onnx.checker.check_model(model)
    path = tmp_path / "partial.onnx"
    onnx.save(model, path)
    facts = {fact["name"]: fact for fact in quantization_summary(model)["compute_nodes"]}
    fact = facts["/block/conv1/Conv"]
    assert (fact["status"], fact["activation"], fact["weights"]) == ("partial", "int8", "float")
    assert "weights float from float initializer [16,16,3,3]" in fact["evidence"]
    code, out, _ = run(capsys, models["int8"], path, "--json")
    assert code == 0
    [change] = json.loads(out)["changes"]
    assert change["name"] == "/block/conv1/Conv"
    assert (change["before"], change["after"]) == ("quantized (act int8, w int8)", "partial (act int8, w float)")


def test_a_compute_node_a_pass_added_says_which_pass(models, tmp_path, capsys):
    # A pass that adds a compute node records itself on the node (tao_qc.pipeline.mark_created); the
    # report has no decision for it, so inspect says where it came from beside what the graph shows.
    model = onnx.load(models["int8"])
    added = next(node for node in model.graph.node if node.name == "/head/Gemm")
    entry = added.metadata_props.add()
    entry.key, entry.value = PROVENANCE_KEY, "some-pass"
    results = tmp_path / "results"
    results.mkdir()
    onnx.save(model, results / "model.int8.onnx")
    spec = load_spec({"quantize": {"backend": "modelopt.onnx"}})
    units = [onnx_unit(node.name, node.op_type) for node in model.graph.node if node.name != "/head/Gemm"]
    records = [{**d.as_dict(), "reason": d.reason} for d in decide(units, spec.layers, spec.skip_names, static=True, warn=False).decisions]
    (results / "report.json").write_text(json.dumps({"model": "model.int8.onnx", "match_layers": {"decisions": records}}))

    code, out, err = run(capsys, results, "--json")
    assert code == 0, err
    facts = {fact["name"]: fact for fact in json.loads(out)["compute_nodes"]}
    assert facts["/head/Gemm"]["reason"].startswith("added by some-pass; graph shows: ")
    assert facts["/head/Gemm"]["reason_source"] == "graph"
    assert not any(fact["reason"].startswith("added by") for name, fact in facts.items() if name != "/head/Gemm")


def test_a_compiled_results_folder_gives_the_backends_reason_for_a_node_it_declined(mnist_cntk_compiled, capsys):
    # A report as `compile` writes it: modelopt declined Times212 (GEMV), which the spec selected.
    results = mnist_cntk_compiled.results_dir
    report = json.loads((results / "report.json").read_text())
    declined = {row["name"]: row["declined_by_backend"] for row in report["decisions"] if row.get("declined_by_backend")}
    assert set(declined) == {"Times212"}

    code, out, err = run(capsys, results, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == str(results / "mnist_cntk.int8.onnx") and data["decisions_in_report"] == 3
    facts = {fact["name"]: fact for fact in data["compute_nodes"]}
    assert {name: fact["status"] for name, fact in facts.items()} == {
        "Convolution28": "quantized", "Convolution110": "quantized", "Times212": "float"}
    assert facts["Times212"]["reason"].startswith(declined["Times212"])
    assert facts["Times212"]["reason_source"] == "report"
    assert "layers is empty" in facts["Convolution28"]["reason"]
    assert not [name for name, fact in facts.items() if "disagrees" in fact]

    code, out, _ = run(capsys, results)
    assert code == 0
    assert "mismatch" not in out and "modelopt.onnx left it in float" in out
