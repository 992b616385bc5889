"""name-activation-chains: an activation written in pieces becomes the op it computes, however it
was written, and the model computes what it did on every value a uint8 grid can hold; chains of
functions ONNX Runtime has no integer kernel for are left alone."""

from __future__ import annotations

import html
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from _activation_chains import CHAINS, compile_between_convs
from _compile_helpers import optimized_ops
from tao_qc.passes.name_activation_chains import NameActivationChains

# The 256 values of a uint8 grid (scale 0.05, zero point 100): [-5, 7.75].
GRID_VALUES = ((np.arange(256) - 100) * 0.05).astype(np.float32).reshape(1, 256)


def _model(nodes, constants, opset):
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": GRID_VALUES})[0]


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("case", list(CHAINS))
def test_a_chain_becomes_the_op_it_computes_on_every_uint8_value(case, opset):
    nodes, constants, becomes = CHAINS[case]
    before = _model(nodes, constants, opset)
    model = ir.serde.deserialize_model(before)
    result = NameActivationChains().run(model, None)
    after = ir.serde.serialize_model(result.model)
    ops = Counter(n.op_type for n in after.graph.node)
    if becomes is None:
        assert not result.changed and ops == Counter(n.op_type for n in before.graph.node)
        return
    assert result.changed
    if becomes == "HardSwish" and opset < 14:  # no HardSwish op before opset 14: x * HardSigmoid(x)
        assert ops == Counter({"HardSigmoid": 1, "Mul": 1})
    else:
        assert ops == Counter({becomes: 1})
    assert [o.name for o in after.graph.output] == ["y"]
    np.testing.assert_allclose(_run(after), _run(before), rtol=1e-6, atol=1e-6)


def test_a_chain_whose_inner_value_is_read_elsewhere_is_left_alone():
    nodes, constants, _ = CHAINS["hardswish paddle2onnx"]
    model = _model(nodes, constants, 17)
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 256]))  # the gate, read outside
    result = NameActivationChains().run(ir.serde.deserialize_model(model), None)
    assert not result.changed


@pytest.mark.slow  # compiles
@pytest.mark.parametrize("case, next_kernel", [("hardswish paddle2onnx", 3), ("hardswish paddle2onnx", 1),
                                               ("leakyrelu as max", 3)])
def test_a_decomposed_activation_between_convs_runs_on_integers(tmp_path, case, next_kernel):
    """paddle2onnx's `x * Clip(x + 3, 0, 6) / 6` between two Convs: after compile nothing of it is
    float in what ORT runs (QLinearAdd for the gate, QLinearMul for the product), as for a HardSwish,
    also before a 1x1 Conv, into which fold-conv-affine would fold the `/ 6` were the chain not named
    first (PicoDet's depthwise-then-pointwise blocks); `Max(x, 0.1 x)` runs as one QLinearLeakyRelu."""
    nodes, constants, becomes = CHAINS[case]
    result = compile_between_convs(nodes, constants, tmp_path, opset=11, next_kernel=next_kernel)
    named = next(r for r in result.records if r.name == "name-activation-chains")
    assert named.stats[f"{becomes.lower()}_named"] == 1
    ops = optimized_ops(result.model_path, tmp_path)
    if becomes == "HardSwish":
        assert ops["QLinearMul"] == 1 and ops["QLinearAdd"] == 1
    else:
        assert ops["QLinearLeakyRelu"] == 1
    assert ops["QLinearConv"] == 2 and ops["DequantizeLinear"] <= 1, ops  # the output's only
    assert not ops["Clip"] and not ops["Div"] and not ops["Mul"] and not ops["Max"] and not ops["LeakyRelu"], ops
    assert result.report["comparison"]["passed"]
    # report.html's pass table says which nodes became which op
    (note,) = named.notes
    assert note.endswith(f": {becomes}" + ("(alpha=0.1)" if becomes == "LeakyRelu" else ""))
    assert html.escape(note) in (result.results_dir / "report.html").read_text()
