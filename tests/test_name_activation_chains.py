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
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import optimized_ops
from tao_qc.passes.name_activation_chains import NameActivationChains

# The 256 values of a uint8 grid (scale 0.05, zero point 100): [-5, 7.75].
GRID_VALUES = ((np.arange(256) - 100) * 0.05).astype(np.float32).reshape(1, 256)


def _scalar(name, value):
    return numpy_helper.from_array(np.array(value, np.float32), name)


# name: (nodes from "x" to "y", constants, the op it should become, or None where it stays)
CHAINS = {
    "hardswish paddle2onnx": ([helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                              helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
                             [_scalar("three", 3), _scalar("zero", 0), _scalar("six", 6)], "HardSwish"),
    "hardswish relu6 gate": ([helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                             helper.make_node("Min", ["r", "six"], ["c"]), helper.make_node("Mul", ["c", "sixth"], ["g"]),
                             helper.make_node("Mul", ["g", "x"], ["y"])],
                            [_scalar("three", 3), _scalar("six", 6), _scalar("sixth", 1 / 6)], "HardSwish"),
    "hardswish whole x HardSigmoid": ([helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
                                      helper.make_node("Mul", ["x", "g"], ["y"])], [], "HardSwish"),
    "hardsigmoid relu6": ([helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
                          helper.make_node("Div", ["c", "six"], ["y"])],
                         [_scalar("three", 3), _scalar("zero", 0), _scalar("six", 6)], "HardSigmoid"),
    "leakyrelu as max": ([helper.make_node("Mul", ["x", "slope"], ["s"]), helper.make_node("Max", ["x", "s"], ["y"])],
                        [_scalar("slope", 0.1)], "LeakyRelu"),
    "silu": ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], [], None),
    "gelu erf": ([helper.make_node("Div", ["x", "root2"], ["a"]), helper.make_node("Erf", ["a"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["b"]), helper.make_node("Mul", ["x", "b"], ["m"]),
                 helper.make_node("Mul", ["m", "half"], ["y"])],
                [_scalar("root2", np.sqrt(2)), _scalar("one", 1), _scalar("half", 0.5)], None),
    "gelu tanh": ([helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x2", "x"], ["x3"]),
                  helper.make_node("Mul", ["x3", "c"], ["cx3"]), helper.make_node("Add", ["x", "cx3"], ["inner"]),
                  helper.make_node("Mul", ["inner", "k"], ["scaled"]), helper.make_node("Tanh", ["scaled"], ["t"]),
                  helper.make_node("Add", ["t", "one"], ["b"]), helper.make_node("Mul", ["x", "b"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["y"])],
                 [_scalar("c", 0.044715), _scalar("k", np.sqrt(2 / np.pi)), _scalar("one", 1), _scalar("half", 0.5)], None),
    "mish": ([helper.make_node("Softplus", ["x"], ["p"]), helper.make_node("Tanh", ["p"], ["t"]),
             helper.make_node("Mul", ["x", "t"], ["y"])], [], None),
    "affine only": ([helper.make_node("Mul", ["x", "six"], ["a"]), helper.make_node("Add", ["a", "six"], ["y"])],
                    [_scalar("six", 6)], None),
}


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
@pytest.mark.parametrize("case", ["hardswish paddle2onnx", "leakyrelu as max"])
def test_a_decomposed_activation_between_convs_runs_on_integers(tmp_path, case):
    """paddle2onnx's `x * Clip(x + 3, 0, 6) / 6` between two Convs: after compile nothing of it is
    float in what ORT runs (QLinearAdd for the gate, QLinearMul for the product), as for a HardSwish;
    `Max(x, 0.1 x)` runs as one QLinearLeakyRelu."""
    from tao_qc.driver import compile_model

    rng = np.random.default_rng(0)
    nodes, constants, becomes = CHAINS[case]
    conv1 = helper.make_node("Conv", ["input", "w1", "b1"], ["x"], name="conv1", pads=[1, 1, 1, 1])
    conv2 = helper.make_node("Conv", ["y", "w2", "b2"], ["output"], name="conv2", pads=[1, 1, 1, 1])
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
               numpy_helper.from_array(rng.normal(0, 0.1, (8, 16, 3, 3)).astype(np.float32), "w2"),
               numpy_helper.from_array(np.zeros(8, np.float32), "b2")]
    graph = helper.make_graph([conv1, *nodes, conv2], "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 8, 16, 16])], constants + weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", input=rng.standard_normal((16, 8, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "test.npz", input=rng.standard_normal((8, 8, 16, 16)).astype(np.float32))
    spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": "avx512_vnni", "speed": "off"},
                         "calibration": {"data": str(tmp_path / "cal.npz")}, "compare": {"data": str(tmp_path / "test.npz")}}}
    result = compile_model(tmp_path / "m.onnx", spec, results_dir=tmp_path / "out")
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
