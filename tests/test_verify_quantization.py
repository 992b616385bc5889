"""verify-quantization rejects every graph that breaks one of its rules, in one line naming the node.

Each case starts from the real INT8 mnist_cntk that `compile` produced (modelopt's TensorRT-style
placement: Q/DQ on both inputs of the two Convs; the GEMV MatMul Times212 declined by modelopt) and
breaks one rule the way a faulty pass or a faulty backend would.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits
from tao_qc.data import model_inputs, open_inputs
from tao_qc.spec.selection import decide, onnx_units
from tao_qc.pipeline import PassContext
from tao_qc.passes.verify_quantization import VerificationError, VerifyQuantization
from tao_qc.spec import load_spec


@pytest.fixture
def model(mnist_cntk_compiled) -> ir.Model:
    return ir.load(str(mnist_cntk_compiled.model_path))  # a fresh copy to break


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("verify") / "digits.npz"
    np.savez(path, **{MNIST_INPUT: digits()[0][:4]})
    return open_inputs(str(path), model_inputs(onnx.load(str(MNIST_CNTK))))


def context(compiled, *, skip: tuple[str, ...] = (), declined: dict[str, str] | None = None,
            calibration=None) -> PassContext:
    spec = load_spec({"quantize": {"backend": "modelopt.onnx", "device": "cpu", "skip_names": list(skip)}})
    decisions = decide(onnx_units(onnx.load(str(MNIST_CNTK))), spec.layers, spec.skip_names, static=True, warn=False).decisions
    ctx = PassContext(spec=spec, work_dir=compiled.results_dir, calibration=calibration)
    ctx.facts["decisions"] = decisions
    ctx.facts["declined"] = dict(compiled.facts["declined"]) if declined is None else declined
    return ctx


def rejection(model: ir.Model, ctx: PassContext) -> str:
    with pytest.raises(VerificationError) as caught:
        VerifyQuantization(run_onnxruntime=ctx.calibration is not None).run(model, ctx)
    message = str(caught.value)
    assert "\n" not in message
    return message


def node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def add_before(model: ir.Model, target: ir.Node, op: str, inputs, name: str, **attributes) -> ir.Node:
    created = ir.node(op, inputs=inputs, attributes=attributes, name=name)
    model.graph.insert_before(target, created)
    return created


def test_the_graph_compile_produced_passes(model, mnist_cntk_compiled, calibration):
    # The control: the unbroken graph, its decisions and modelopt's declined node are accepted.
    result = VerifyQuantization().run(model, context(mnist_cntk_compiled, calibration=calibration))
    assert result.stats == {"nodes_checked": 2, "float_nodes_on_shared_qdq": 0, "onnxruntime_runs": 1}
    assert any("left in float by modelopt: Times212" in note for note in result.notes)


def test_a_selected_node_whose_weight_bypasses_its_qdq(model, mnist_cntk_compiled):
    conv = node(model, "Convolution110")
    weight_q = conv.inputs[1].producer().inputs[0].producer()  # weight -> Q -> DQ -> Conv
    conv.replace_input_with(1, weight_q.inputs[0])  # the float weight
    message = rejection(model, context(mnist_cntk_compiled))
    assert message.startswith("quantized graph check failed: Convolution110: selected (weights int8, activations int8: "
                              "default: layers is empty")
    assert "Convolution110: selected (" in message and ") but its weight input has no Q/DQ" in message


def test_a_selected_node_left_float_without_a_reason(model, mnist_cntk_compiled):
    # The same graph, but nothing says why Times212 runs in float: no declined record for it.
    message = rejection(model, context(mnist_cntk_compiled, declined={}))
    assert "Times212: selected (weights int8, activations int8: default: layers is empty" in message
    assert message.endswith("but its activation and weight input has no Q/DQ")


def test_a_node_kept_in_float_that_reads_a_quantized_weight(model, mnist_cntk_compiled):
    message = rejection(model, context(mnist_cntk_compiled, skip=("Convolution110",)))
    assert ("Convolution110: kept in float (kept in float: skip_names[0] 'Convolution110' (by name)) "
            "but its weight input has Q/DQ") in message


def test_a_node_kept_in_float_behind_a_qdq_no_quantized_node_needs(model, mnist_cntk_compiled):
    matmul = node(model, "Times212")
    pooled_q = node(model, "Pooling66_Output_0_QuantizeLinear")
    q = add_before(model, matmul, "QuantizeLinear", [matmul.inputs[0], *pooled_q.inputs[1:]], "Times212_input_q")
    dq = add_before(model, matmul, "DequantizeLinear", [q.outputs[0], *pooled_q.inputs[1:]], "Times212_input_dq")
    matmul.replace_input_with(0, dq.outputs[0])
    message = rejection(model, context(mnist_cntk_compiled, skip=("Times212",), declined={}))
    assert message.endswith("Times212: kept in float (kept in float: skip_names[0] 'Times212' (by name)) but its "
                            "activation input has a Q/DQ no quantized node needs")


def test_a_quantize_feeding_something_else_than_a_dequantize(model, mnist_cntk_compiled):
    q = node(model, "Pooling66_Output_0_QuantizeLinear")
    add_before(model, node(model, "Convolution110"), "Cast", [q.outputs[0]], "stray_cast", to=ir.DataType.FLOAT)
    message = rejection(model, context(mnist_cntk_compiled))
    assert message.endswith("Pooling66_Output_0_QuantizeLinear: QuantizeLinear feeds ['Cast', 'DequantizeLinear'], "
                            "not only DequantizeLinear")


def test_a_quantize_nobody_reads(model, mnist_cntk_compiled):
    source = node(model, "Pooling66_Output_0_QuantizeLinear")
    add_before(model, node(model, "Convolution110"), "QuantizeLinear", list(source.inputs), "unread_q")
    assert rejection(model, context(mnist_cntk_compiled)).endswith("unread_q: QuantizeLinear whose output nobody reads")


def test_a_dequantize_nobody_reads(model, mnist_cntk_compiled):
    q = node(model, "Pooling66_Output_0_QuantizeLinear")
    add_before(model, node(model, "Convolution110"), "DequantizeLinear", [q.outputs[0], *q.inputs[1:]], "unread_dq")
    assert rejection(model, context(mnist_cntk_compiled)).endswith("unread_dq: DequantizeLinear whose output nobody reads")


def test_a_dequantize_of_a_value_no_quantize_made(model, mnist_cntk_compiled):
    # Integers cast from floats are not quantized values: the DQ's scale means nothing for them.
    conv = node(model, "Convolution110")
    dq = node(model, "Pooling66_Output_0_DequantizeLinear")
    pooled = node(model, "Pooling66").outputs[0]
    cast = add_before(model, dq, "Cast", [pooled], "pooled_as_int8", to=ir.DataType.INT8)
    dq.replace_input_with(0, cast.outputs[0])
    message = rejection(model, context(mnist_cntk_compiled))
    assert "Pooling66_Output_0_DequantizeLinear: DequantizeLinear reads Cast, not a QuantizeLinear or a constant" in message
    assert "Convolution110" not in message  # its inputs still come through DequantizeLinear


def test_a_selected_node_that_is_gone(model, mnist_cntk_compiled):
    matmul = node(model, "Times212")
    matmul.name = "renamed_by_a_pass"
    message = rejection(model, context(mnist_cntk_compiled))
    assert message == "quantized graph check failed: Times212: node is gone from the quantized graph"


def test_a_graph_that_computes_nan(model, mnist_cntk_compiled, calibration):
    weight_dq = node(model, "Convolution110").inputs[1].producer()
    scale = weight_dq.inputs[1]
    original = scale.const_value.numpy()
    broken = np.full(original.shape, np.nan, original.dtype)
    weight_dq.replace_input_with(1, _initializer(model, "nan_scale", broken))
    message = rejection(model, context(mnist_cntk_compiled, calibration=calibration))
    assert message == "the quantized graph gives NaN/Inf in Plus214_Output_0 on the first calibration batch"


def _initializer(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    model.graph.register_initializer(value)
    return value
