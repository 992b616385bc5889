"""Activation chains as exporters write them, shared by the tests of the passes that rewrite them
(name-activation-chains, tabulate-activation-chains): each from "x" to "y", its scalar constants,
the op name-activation-chains should make of it (None: it stays), and its float64 reference."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper


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

CHAINS["sigmoid as 1 / (1 + Exp(-x))"] = (
    [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Exp", ["n"], ["e"]), helper.make_node("Add", ["e", "one"], ["d"]),
     helper.make_node("Reciprocal", ["d"], ["y"])], [_scalar("one", 1)], "Sigmoid")

CHAINS["mish as x * Tanh(Log(1 + Exp(x)))"] = (
    [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Add", ["e", "one"], ["d"]), helper.make_node("Log", ["d"], ["p"]),
     helper.make_node("Tanh", ["p"], ["t"]), helper.make_node("Mul", ["x", "t"], ["y"])], [_scalar("one", 1)], None)
CHAINS["gelu tanh with Pow"] = (
    [helper.make_node("Pow", ["x", "three"], ["x3"]), helper.make_node("Mul", ["x3", "c"], ["cx3"]),
     helper.make_node("Add", ["x", "cx3"], ["inner"]), helper.make_node("Mul", ["inner", "k"], ["scaled"]),
     helper.make_node("Tanh", ["scaled"], ["t"]), helper.make_node("Add", ["t", "one"], ["b"]),
     helper.make_node("Mul", ["x", "b"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])],
    [_scalar("three", 3), _scalar("c", 0.044715), _scalar("k", np.sqrt(2 / np.pi)), _scalar("one", 1), _scalar("half", 0.5)], None)


def _erf(x):
    return np.vectorize(math.erf)(x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


# Each chain's function in float64, written from its definition (not from the chain's nodes).
REFERENCE = {
    "hardswish paddle2onnx": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hardswish relu6 gate": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) * float(np.float32(1 / 6)),
    "hardswish whole x HardSigmoid": lambda x: x * np.clip(float(np.float32(1 / 6)) * x + 0.5, 0, 1),
    "hardsigmoid relu6": lambda x: np.clip(x + 3, 0, 6) / 6,
    "leakyrelu as max": lambda x: np.maximum(x, float(np.float32(0.1)) * x),
    "silu": lambda x: x * _sigmoid(x),
    "gelu erf": lambda x: 0.5 * x * (1 + _erf(x / float(np.float32(np.sqrt(2))))),
    "gelu tanh": lambda x: 0.5 * x * (1 + np.tanh(float(np.float32(np.sqrt(2 / np.pi))) * (x + float(np.float32(0.044715)) * x ** 3))),
    "mish": lambda x: x * np.tanh(np.logaddexp(0, x)),
    "mish as x * Tanh(Log(1 + Exp(x)))": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "affine only": lambda x: 6 * x + 6,
    "gelu tanh with Pow": lambda x: 0.5 * x * (1 + np.tanh(float(np.float32(np.sqrt(2 / np.pi))) * (x + float(np.float32(0.044715)) * x ** 3))),
    "sigmoid as 1 / (1 + Exp(-x))": _sigmoid,
}


def compile_between_convs(nodes, constants, folder, opset: int, next_kernel: int = 3):
    """Conv -> the chain (from "x" to "y") -> Conv (`next_kernel` square, padded to keep the size),
    compiled for ONNX Runtime (avx512_vnni, no speed check) on seeded random data, and compared on
    more: the compile's result."""
    import onnx

    from tao_qc.driver import compile_model

    rng = np.random.default_rng(0)
    conv1 = helper.make_node("Conv", ["input", "w1", "b1"], ["x"], name="conv1", pads=[1, 1, 1, 1])
    pad = next_kernel // 2
    conv2 = helper.make_node("Conv", ["y", "w2", "b2"], ["output"], name="conv2", pads=[pad] * 4)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
               numpy_helper.from_array(rng.normal(0, 0.1, (8, 16, next_kernel, next_kernel)).astype(np.float32), "w2"),
               numpy_helper.from_array(np.zeros(8, np.float32), "b2")]
    graph = helper.make_graph([conv1, *nodes, conv2], "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 8, 16, 16])], constants + weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), folder / "m.onnx")
    np.savez(folder / "cal.npz", input=rng.standard_normal((16, 8, 16, 16)).astype(np.float32))
    np.savez(folder / "test.npz", input=rng.standard_normal((8, 8, 16, 16)).astype(np.float32))
    spec = {"quantize": {"target": "onnxruntime", "onnxruntime": {"cpu": "avx512_vnni", "speed": "off"},
                         "calibration": {"data": str(folder / "cal.npz")}, "compare": {"data": str(folder / "test.npz")}}}
    return compile_model(folder / "m.onnx", spec, results_dir=folder / "out")
