"""Shapes for models with open dimensions: `--input-shapes` parsing and explaining a rejected size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from _compile_helpers import session
from tao_qc.errors import InputError
from tao_qc.ir.shapes import explain_rejected_shape, parse_input_shapes, runtime_reason


def test_input_shapes_follow_the_trtexec_convention():
    assert parse_input_shapes("x:1x3x640x640") == {"x": (1, 3, 640, 640)}
    assert parse_input_shapes("images:8x3x32x32, ids:8x4") == {"images": (8, 3, 32, 32), "ids": (8, 4)}
    assert parse_input_shapes("encoder:hidden:1x4") == {"encoder:hidden": (1, 4)}  # the last ':' splits
    assert parse_input_shapes(None) == {} and parse_input_shapes("") == {}


@pytest.mark.parametrize("text, message", [
    ("x=1x3", r"'x=1x3' is not NAME:DIMS"),
    ("x:1x3,x:1x4", r"input 'x' is given twice"),
    ("x:1x0", r"'x:1x0' has a dimension below 1"),
    ("x:1x3x", r"'x:1x3x' is not NAME:DIMS"),
])
def test_bad_input_shapes_are_one_line(text, message):
    with pytest.raises(InputError, match=rf"^--input-shapes: {message}"):
        parse_input_shapes(text)


def _halving_model() -> onnx.ModelProto:
    """x[N,1,H,W] -> MaxPool 2x2 four times -> Resize x16 -> Add x: runs only where H and W are
    multiples of 16 (the way an FPN's upsampled branch meets its skip connection)."""
    nodes = [helper.make_node("MaxPool", [f"p{i}" if i else "x"], [f"p{i + 1}"], kernel_shape=[2, 2], strides=[2, 2])
             for i in range(4)]
    nodes += [helper.make_node("Resize", ["p4", "", "scales"], ["up"], mode="nearest"),
              helper.make_node("Add", ["up", "x"], ["y"])]
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 16, 16])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_size_the_model_rejects_names_the_multiple_it_needs():
    runner = session(_halving_model())
    run = lambda feeds: runner.run(None, feeds)  # noqa: E731
    feeds = {"x": np.zeros((1, 1, 30, 32), np.float32)}
    with pytest.raises(Exception) as raised:  # ONNX Runtime's own error type
        run(feeds)
    error = explain_rejected_shape(run, feeds, {"x": [0, 2, 3]}, raised.value, "quantize.compare.data")
    message = str(error)
    assert message.startswith("quantize.compare.data: the model fails on x float32[1, 1, 30, 32] (ONNX Runtime")
    # 30 rounded up to a multiple of 8 is 32, which runs; one step further, 40 does not: 8 is not it
    assert message.endswith("it runs when the open sizes (x axis 2, 3) are multiples of 16")
    assert "\n" not in message and "onnxruntime_src" not in message


def test_runtime_reason_keeps_what_a_user_needs():
    text = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Resize node. "
            "Name:'Resize.1' Status Message: /onnxruntime_src/onnxruntime/core/framework/op_kernel.cc:83 virtual "
            "OrtValue* f() status.IsOK() was false. Shape mismatch attempting to re-use buffer. {1,96,79,80} != "
            "{1,96,80,80}. Validate usage of dim_value")
    assert runtime_reason(RuntimeError(text)) == ("ONNX Runtime, Resize node 'Resize.1': Shape mismatch attempting to "
                                                  "re-use buffer. {1,96,79,80} != {1,96,80,80}.")
    assert runtime_reason(ValueError("plain\nsecond line")) == "plain"
