"""tabulate-activation-chains: a chain between two uint8 grids becomes a 256-entry table that gives,
for every input value, the chain's float64 output quantized; by default only chains a table is
faster for (Mish), and a compiled model with one verifies and runs."""

from __future__ import annotations

import html
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from _activation_chains import CHAINS, REFERENCE, compile_between_convs
from _compile_helpers import optimized_ops
from tao_qc.passes.tabulate_activation_chains import TabulateActivationChains
from tao_qc.passes.verify_quantization import orphan_qdq

# The input's grid covers [-5, 7.75] (scale 0.05, zero point 100); the output's is drawn per chain
# from its range over those values, with a zero point off 128, as asymmetric placement gives.
IN_SCALE, IN_ZERO = 0.05, 100
LEVELS = np.arange(256, dtype=np.uint8).reshape(1, 256)


def _output_grid(case: str) -> tuple[float, int]:
    values = REFERENCE[case]((np.arange(256) - IN_ZERO) * np.float64(np.float32(IN_SCALE)))
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    scale = float(np.float32((high - low) / 255))
    return scale, int(round(-low / scale))


def _unit(case: str) -> onnx.ModelProto:
    """uint8 x -> DequantizeLinear -> the chain -> QuantizeLinear -> uint8 y."""
    nodes, constants, _ = CHAINS[case]
    out_scale, out_zero = _output_grid(case)
    grids = [numpy_helper.from_array(np.array(IN_SCALE, np.float32), "in_scale"),
             numpy_helper.from_array(np.array(IN_ZERO, np.uint8), "in_zero"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "out_scale"),
             numpy_helper.from_array(np.array(out_zero, np.uint8), "out_zero")]
    renamed = [helper.make_node(n.op_type, [{"x": "xf", "y": "yf"}.get(i, i) for i in n.input],
                                [{"x": "xf", "y": "yf"}.get(o, o) for o in n.output], name=f"{case}/{k}",
                                **{a.name: helper.get_attribute_value(a) for a in n.attribute})
               for k, n in enumerate(nodes)]
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["x", "in_scale", "in_zero"], ["xf"], name="dq"),
                               *renamed, helper.make_node("QuantizeLinear", ["yf", "out_scale", "out_zero"], ["y"], name="q")],
                              "unit", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 256])], constants + grids)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": LEVELS})[0]


@pytest.mark.parametrize("case", [c for c in CHAINS if c != "affine only"])
def test_a_tables_entry_is_the_chains_float64_output_quantized_for_every_uint8_input(case):
    before = _unit(case)
    result = TabulateActivationChains(every_chain=True).run(ir.serde.deserialize_model(before), None)
    after = ir.serde.serialize_model(result.model)
    assert result.changed and result.stats["tables"] == 1
    assert Counter(n.op_type for n in after.graph.node) == Counter({"Cast": 1, "Gather": 1})
    assert not orphan_qdq(result.model)

    out_scale, out_zero = _output_grid(case)
    dequantized = (np.arange(256) - IN_ZERO) * np.float64(np.float32(IN_SCALE))
    exact = np.clip(np.rint(REFERENCE[case](dequantized) / out_scale) + out_zero, 0, 255).astype(np.uint8)
    table = _run(after)[0]
    np.testing.assert_array_equal(table, exact)
    assert len(np.unique(table)) > 16  # a grid the chain's values spread over, not a constant
    # ORT's float32 path (DQ, each op, Q) rounds at every op: at most one step from the table.
    assert np.abs(_run(before)[0].astype(int) - table).max() <= 1


def test_by_default_only_chains_a_table_computes_faster_become_tables():
    tabulated = {case for case in CHAINS
                 if TabulateActivationChains().run(ir.serde.deserialize_model(_unit(case)), None).changed}
    # Measured whole on a [1, 64, 80, 80] uint8 map: Mish by Softplus 2.7 ms in float, 0.69 ms as a
    # table; Mish by Exp and Log 0.60 ms, GELU 0.50-0.60 ms, SiLU 0.23 ms in float (the pass's docstring).
    assert tabulated == {"mish"}


def test_a_chain_whose_result_is_also_read_in_float_is_left_alone():
    model = _unit("mish")
    model.graph.output.append(helper.make_tensor_value_info("yf", TensorProto.FLOAT, [1, 256]))
    assert not TabulateActivationChains().run(ir.serde.deserialize_model(model), None).changed


@pytest.mark.slow  # compiles
def test_mish_between_convs_runs_as_a_table_and_the_report_says_so(tmp_path):
    """Conv -> Mish (x * Tanh(Softplus(x)), as torch exports it) -> Conv: modelopt measures the Mul
    (its inputs and output), so after compile ORT runs Tanh(Softplus(x)) as Cast + Gather and the
    product as a QLinearMul between two QLinearConvs, nothing of it in float, and the model's outputs
    are FP32's within the comparison's checks."""
    nodes = [helper.make_node("Softplus", ["x"], ["p"], name="softplus"), helper.make_node("Tanh", ["p"], ["t"], name="tanh"),
             helper.make_node("Mul", ["x", "t"], ["y"], name="mish")]
    result = compile_between_convs(nodes, [], tmp_path, opset=17)
    record = next(r for r in result.records if r.name == "tabulate-activation-chains")
    assert record.stats["tables"] == 1
    ops = optimized_ops(result.model_path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Gather"] == 1 and ops["QLinearMul"] == 1, ops
    assert ops["DequantizeLinear"] == 1, ops  # the output's only
    assert not ops["Softplus"] and not ops["Tanh"] and not ops["Mul"], ops
    assert result.report["comparison"]["passed"]
    (note,) = record.notes
    assert note == "softplus, tanh: a 256-entry uint8 table (Softplus, Tanh; in float about 2.7x the table's time)"
    assert html.escape(note) in (result.results_dir / "report.html").read_text()
