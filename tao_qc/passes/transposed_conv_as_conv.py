"""Write an upsampling ConvTranspose as a 1x1 Conv and a DepthToSpace, which ONNX Runtime runs on uint8.

Segmentation and text-detection heads (DBNet, PP-OCRv5's detector, U-Nets) upsample with a
ConvTranspose whose kernel equals its stride (2x2, stride 2). ONNX Runtime's CPU provider has no
integer ConvTranspose, so in an INT8 model it runs in float, with the per-channel Add, the
BatchNormalization and the ReLU after it: on PP-OCRv5's detector a fifth of the INT8 model's time.

With kernel k = stride and no padding, each input pixel writes its own k x k block of the output
and no two blocks overlap: output channel c at (h*k + i, w*k + j) is the sum over input channels
of x[:, h, w] * W[:, c, i, j], plus c's bias. That is a 1x1 Conv to k*k*C channels, channel
(i*k + j)*C + c holding W[:, c, i, j], followed by DepthToSpace (DCR order), which moves values
only. This pass, for `target: onnxruntime`, in the canonicalizing rounds (before match-layers, so
the Conv is selected and calibrated like any other; it keeps the ConvTranspose's name):

- first folds what follows the ConvTranspose per channel into its weights and bias: Add, Sub, Mul
  and Div by a per-channel constant and an inference BatchNormalization (each the only reader of
  the tensor before it);
- then writes the 1x1 Conv and the DepthToSpace, and puts a ReLU that alone reads the
  DepthToSpace before it (elementwise ops commute with moving values), so the ReLU joins its Conv.

The arithmetic is the same sums in another order (outputs agree to float rounding). ConvTransposes
with groups, dilation, padding, output padding or an output shape are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.fold_conv_affine import AFFINE_OPS, affine_step, per_channel_values
from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created


@dataclass
class TransposedConvAsConv:
    name: str = "transposed-conv-as-conv"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        rewritten, folded, notes = 0, 0, []
        for node in [n for n in graph if n.op_type == "ConvTranspose" and n.domain in ("", "ai.onnx")]:
            parameters = _parameters(node)
            if parameters is None:
                continue
            weights, bias, block = parameters
            weights, bias, tail, absorbed = _absorb_following(node.outputs[0], weights, bias)
            relu = _relu_reading(tail)
            if (relu.outputs[0] if relu is not None else tail).is_graph_output():
                continue  # the model's own output keeps its producer
            _rewrite(graph, node, weights, bias, block, tail, absorbed, relu, self.name)
            rewritten += 1
            folded += len(absorbed)
            notes.append(f"{node.name}: a {block}x{block} stride-{block} ConvTranspose written as a 1x1 Conv to "
                         f"{weights.shape[1] * block * block} channels and a DepthToSpace"
                         + (f", with {', '.join(n.name for n in absorbed)} folded in" if absorbed else ""))
        if rewritten:
            RemoveUnusedNodesPass()(model)
        return PassResult(model, changed=bool(rewritten), stats={"transposed_convs_rewritten": rewritten,
                                                                 "steps_folded": folded}, notes=notes)


def _parameters(node: ir.Node) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(weights [C_in, C_out, k, k] as float64, bias [C_out], k) for a ConvTranspose this pass
    rewrites; None for any other."""
    attributes = node.attributes
    weights = constant_array(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if weights is None or weights.ndim != 4 or not np.issubdtype(weights.dtype, np.floating):
        return None
    kernel = attributes.get_ints("kernel_shape", list(weights.shape[2:]))
    strides = attributes.get_ints("strides", [1, 1])
    if (len(set(kernel)) != 1 or list(kernel) != list(strides) or list(kernel) != list(weights.shape[2:])
            or kernel[0] < 2 or attributes.get_int("group", 1) != 1
            or any(d != 1 for d in attributes.get_ints("dilations", [1, 1]))
            or any(attributes.get_ints("pads", [0, 0, 0, 0])) or any(attributes.get_ints("output_padding", [0, 0]))
            or attributes.get("output_shape") is not None
            or attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = constant_array(node.inputs[2])
        if bias is None:
            return None
    else:
        bias = np.zeros(weights.shape[1], weights.dtype)
    return weights.astype(np.float64), bias.astype(np.float64), int(kernel[0])


def _absorb_following(value: ir.Value, weights: np.ndarray, bias: np.ndarray):
    """Fold the per-channel steps that follow one after another into (weights, bias); returns them,
    the tensor the last folded step wrote (or `value`) and the folded nodes."""
    channels = weights.shape[1]
    absorbed: list[ir.Node] = []
    tail = value
    while not tail.is_graph_output():
        uses = list(tail.uses())
        if len(uses) != 1:
            break
        step = uses[0].node
        factor, shift = _affine(step, tail, channels)
        if factor is None:
            break
        weights, bias = weights * factor.reshape(1, -1, 1, 1), bias * factor + shift
        absorbed.append(step)
        tail = step.outputs[0]
    return weights, bias, tail, absorbed


def _affine(step: ir.Node, value: ir.Value, channels: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(factor, shift) per channel with step(x) = factor * x + shift, or (None, None)."""
    if step.domain not in ("", "ai.onnx"):
        return None, None
    if step.op_type in AFFINE_OPS:
        found = affine_step(step)
        if found is None or found[0] is not value:
            return None, None
        values = per_channel_values(found[1], channels, 4)
        if values is None:
            return None, None
        ones, zeros = np.ones(channels), np.zeros(channels)
        factor, shift = {"Add": (ones, values), "Sub": (ones, -values),
                         "Mul": (values, zeros), "Div": (1.0 / values, zeros)}[step.op_type]
        return (factor, shift) if np.all(np.isfinite(factor)) else (None, None)
    if step.op_type == "BatchNormalization" and len(step.outputs) == 1 and step.inputs[0] is value:
        gamma, beta, mean, variance = (constant_array(v) if v is not None else None for v in step.inputs[1:5])
        if any(a is None or a.size != channels for a in (gamma, beta, mean, variance)):
            return None, None
        scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + step.attributes.get_float("epsilon", 1e-5))
        return scale, beta.astype(np.float64) - scale * mean.astype(np.float64)
    return None, None


def _rewrite(graph: ir.Graph, node: ir.Node, weights: np.ndarray, bias: np.ndarray, block: int,
             tail: ir.Value, absorbed: list[ir.Node], relu: ir.Node | None, pass_name: str) -> None:
    in_channels, out_channels = weights.shape[:2]
    dtype = constant_array(node.inputs[1]).dtype
    # Channel (i*k + j)*C_out + c of the 1x1 Conv holds W[:, c, i, j]: DepthToSpace's DCR order.
    conv_weights = weights.transpose(2, 3, 1, 0).reshape(block * block * out_channels, in_channels, 1, 1)
    conv_bias = np.tile(bias, block * block)
    initializers = []
    for suffix, array in (("as_conv_weight", conv_weights), ("as_conv_bias", conv_bias)):
        name = f"{node.name}_{suffix}"
        while name in graph.initializers:
            name += "_"
        value = ir.Value(name=name, const_value=ir.tensor(array.astype(dtype), name=name))
        graph.register_initializer(value)
        initializers.append(value)
    conv = ir.Node("", "Conv", [node.inputs[0], *initializers], name=node.name,
                   attributes=[ir.AttrInt64s("kernel_shape", [1, 1])])
    for key, item in node.metadata_props.items():  # the layer names the spec and reports use
        conv.metadata_props[key] = item
    end, nodes, before_d2s = tail, [conv], conv.outputs[0]
    if relu is not None:  # Relu(DepthToSpace(y)) = DepthToSpace(Relu(y)): the Relu goes next to its Conv
        moved = ir.Node("", "Relu", [conv.outputs[0]], name=relu.name)
        nodes.append(moved)
        before_d2s, end = moved.outputs[0], relu.outputs[0]
    d2s = mark_created(ir.Node("", "DepthToSpace", [before_d2s], name=f"{node.name}_depth_to_space",
                               attributes=[ir.AttrInt64("blocksize", block), ir.AttrString("mode", "DCR")]), pass_name)
    nodes.append(d2s)
    last = relu if relu is not None else (absorbed[-1] if absorbed else node)
    graph.insert_after(last, nodes)
    output = d2s.outputs[0]
    output.shape, output.type = end.shape, end.type
    end.replace_all_uses_with(output)
    for old in ([relu] if relu is not None else []) + list(reversed(absorbed)) + [node]:
        graph.remove(old, safe=True)


def _relu_reading(value: ir.Value) -> ir.Node | None:
    """The Relu that alone reads `value`, if one does."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    reader = uses[0].node
    return reader if reader.op_type == "Relu" and reader.domain in ("", "ai.onnx") else None
