"""Fold constant per-channel scales and shifts into the Conv next to them.

Exporters of reparameterized mobile networks write the affine steps beside a Conv as their own
nodes: PP-OCRv5's recognizer (PP-LCNetV3) has `Conv -> Add(bias [1,C,1,1]) -> Mul(scale) ->
Add(shift)` in front of every activation, and `Mul(scale) -> Add(shift)` after it. Left alone,
each becomes an elementwise pass over the activation in float, and in an INT8 graph it also
splits the Conv from its activation with a requantization. Folded:

- after a Conv (its output read only by the step): `Add(d)`/`Sub(d)` go into the bias,
  `Mul(c)`/`Div(c)` scale the weights and bias of each output channel;
- before a Conv without padding (the step's output read only by the Conv): a shift `d` adds
  `sum(W * d)` to the bias and a scale `c` multiplies the weights of each input channel (with zero
  padding the border would see 0, not `d`, so padded Convs are left alone).

Constants must broadcast per channel: a scalar, or shape `[1, C, 1, ...]` (leading 1s allowed).
onnxscript's `conv_affine_fusion_rule` / `affine_conv_fusion_rule` cover only scalar Mul-then-Add
pairs on Convs that already have a bias, which these exports are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult, constant_array

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


@dataclass
class FoldConvAffine:
    name: str = "fold-conv-affine"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        after = before = 0
        changed = True
        while changed:
            changed = False
            for node in list(graph):
                if node.graph is None or node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx"):
                    continue
                if _fold_after_conv(graph, node):
                    after += 1
                    changed = True
                elif _fold_before_conv(graph, node):
                    before += 1
                    changed = True
        if after or before:
            RemoveUnusedNodesPass()(model)
        notes = [f"folded {after} constant steps after a Conv and {before} before an unpadded Conv into its weights and bias"
                 if after or before else "no constant scale or shift beside a Conv"]
        return PassResult(model, changed=bool(after or before),
                          stats={"folded_after_conv": after, "folded_before_conv": before}, notes=notes)


def affine_step(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(the activation input, the constant) of an elementwise step with one constant operand; for
    Sub and Div the constant must be the second operand."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    first, second = (constant_array(v) for v in node.inputs)
    if second is not None and first is None:
        return node.inputs[0], second
    if first is not None and second is None and node.op_type in ("Add", "Mul"):
        return node.inputs[1], first
    return None


def per_channel_values(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The constant as one float per channel of an NC... tensor of `rank`, or None if it varies
    along another axis or would broadcast the tensor to another shape."""
    if not np.issubdtype(constant.dtype, np.floating) or constant.ndim > rank:
        return None
    if constant.size == 1:
        return np.full(channels, constant.reshape(()), np.float64)
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return constant.reshape(channels).astype(np.float64)


def _conv_parameters(conv: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.inputs) < 2:
        return None
    weights = constant_array(conv.inputs[1])
    if weights is None or not np.issubdtype(weights.dtype, np.floating) or weights.ndim < 3:
        return None
    bias = constant_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and bias is None:
        return None
    return weights, (bias if bias is not None else np.zeros(weights.shape[0], weights.dtype))


def _set_parameters(graph: ir.Graph, conv: ir.Node, weights: np.ndarray, bias: np.ndarray, dtype: np.dtype) -> None:
    for index, array, suffix in ((1, weights, "folded"), (2, bias, "folded_bias")):
        name = f"{conv.name}_{suffix}"
        while name in graph.initializers:
            name += "_"
        value = ir.Value(name=name, const_value=ir.tensor(array.astype(dtype), name=name))
        graph.register_initializer(value)
        if index < len(conv.inputs):
            conv.replace_input_with(index, value)
        else:
            conv.resize_inputs(3)
            conv.replace_input_with(2, value)


def _fold_after_conv(graph: ir.Graph, node: ir.Node) -> bool:
    step = affine_step(node)
    if step is None:
        return False
    source, constant = step
    conv = source.producer()
    parameters = _conv_parameters(conv) if conv is not None else None
    if parameters is None or source.is_graph_output() or len(list(source.uses())) != 1 or node.outputs[0].is_graph_output():
        return False
    weights, bias = parameters
    rank = weights.ndim  # the Conv's output has the weights' rank: N, C, spatial...
    per_channel = per_channel_values(constant, weights.shape[0], rank)
    if per_channel is None:
        return False
    if node.op_type in ("Mul", "Div"):
        factor = per_channel if node.op_type == "Mul" else 1.0 / per_channel
        if not np.all(np.isfinite(factor)):
            return False
        shape = (-1,) + (1,) * (weights.ndim - 1)
        new_weights, new_bias = weights.astype(np.float64) * factor.reshape(shape), bias * factor
    else:
        new_weights, new_bias = weights.astype(np.float64), bias + (per_channel if node.op_type == "Add" else -per_channel)
    _set_parameters(graph, conv, new_weights, new_bias, weights.dtype)
    output = node.outputs[0]
    output.replace_all_uses_with(source)
    source.shape, source.type = output.shape or source.shape, output.type or source.type
    graph.remove(node, safe=True)
    return True


def _fold_before_conv(graph: ir.Graph, node: ir.Node) -> bool:
    step = affine_step(node)
    if step is None or node.op_type not in ("Add", "Mul", "Sub", "Div"):
        return False
    source, constant = step
    output = node.outputs[0]
    uses = list(output.uses())
    if len(uses) != 1 or output.is_graph_output() or uses[0].idx != 0:
        return False
    conv = uses[0].node
    parameters = _conv_parameters(conv)
    if parameters is None or any(conv.attributes.get_ints("pads", [0])) or conv.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return False
    weights, bias = parameters
    group = conv.attributes.get_int("group", 1)
    channels = weights.shape[1] * group
    per_channel = per_channel_values(constant, channels, weights.ndim)
    if per_channel is None or (group > 1 and not np.all(per_channel == per_channel[0])):
        return False
    values = per_channel[: weights.shape[1]]  # group 1, or one value for all channels
    expand = (1, -1) + (1,) * (weights.ndim - 2)
    w64 = weights.astype(np.float64)
    if node.op_type in ("Mul", "Div"):
        factor = values if node.op_type == "Mul" else 1.0 / values
        if not np.all(np.isfinite(factor)):
            return False
        new_weights, new_bias = w64 * factor.reshape(expand), bias
    else:
        shift = values if node.op_type == "Add" else -values
        new_weights = w64
        new_bias = bias + (w64 * shift.reshape(expand)).sum(axis=tuple(range(1, weights.ndim)))
    _set_parameters(graph, conv, new_weights, new_bias, weights.dtype)
    conv.replace_input_with(0, source)
    graph.remove(node, safe=True)
    return True
