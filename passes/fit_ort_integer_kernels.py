"""Shape integer Conv/Gemm/MatMul units so ONNX Runtime's CPU kernels compute them right, and fast.

ONNX Runtime 1.24's CPU integer GEMM (MLAS, U8S8) gives wrong int32 sums, up to the whole uint8
range off, when a call covers 32 or more rows and the matrix has 17 to 31 columns (output channels
per group of a Conv, output features of a Gemm/MatMul). Measured on this machine (a Xeon with AMX
and AVX-512 VNNI; the threshold matches the 32x32 tile blocks of MLAS's AMX U8S8 kernel, whose
partial-column path is the one taken): the results are wrong with one thread too, and because
each thread's slice of rows ends elsewhere, they differ from run to run with two or more threads.
A sweep (Conv: 1-258 input channels, 1-96 outputs, kernels 1/3/5, strides 1-2, groups 1-3,
per-channel and per-tensor weights; QLinearMatMul/QGemm: 1-512 rows, K 10-1280) found no other
shape affected: 16 or 32 columns, fewer than 32 rows, and depthwise Convs are exact.

A QLinearConv reaches that GEMM unless MLAS's direct symmetric convolution takes it (group 1,
input channels a multiple of 4, zero-point-0 int8 weights; depthwise Convs have their own kernel).
The direct kernel is also faster: one Conv at 2 threads ran 1.2-1.7x faster with its input
channels padded to a multiple of 4 (3->16 3x3 over 112x112 1.4x, 6->40 1x1 1.7x, 10->20 5x5 at
batch 8 1.6x, 18->64 3x3 1.3x); below 16 outputs padding gained nothing (~5% slower).

For `target: onnxruntime`, after the passes that shape Convs, this pass rewrites `DQ -> op -> Q`
units with int8 zero-point-0 weights, each rewrite exact (the added terms are zeros):
- Conv, group 1, input channels not a multiple of 4, at least 16 outputs: the uint8 input goes
  through a Pad of the channel axis with its zero point (a real 0), the weights get zero columns;
- Conv, group > 1 and not depthwise, 17-31 outputs per group: one Conv per group over a Split of
  the uint8 input, joined by a Concat of their uint8 outputs (same output scale), each padded as
  above where that applies;
- Gemm/MatMul with constant weights and 17-31 output features: zero weight columns up to 32, and
  a Slice of the output (after its QuantizeLinear where it has one) back to the real features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.place_for_onnxruntime import QdqBuilder, qparams
from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created

CHANNEL_ALIGNMENT = 4
# The direct symmetric convolution takes Convs with at least this many output channels.
MIN_DIRECT_OUTPUTS = 16
WRONG_COLUMNS = range(17, 32)
SAFE_COLUMNS = 32


@dataclass
class FitOrtIntegerKernels:
    name: str = "fit-ort-integer-kernels"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        opset = dict(model.opset_imports).get("", 1)
        notes: list[str] = []
        stats = {"convs_padded": 0, "grouped_convs_split": 0, "matmuls_widened": 0}
        for node in [n for n in graph if n.op_type in ("Conv", "Gemm", "MatMul")]:
            unit = _integer_unit(node)
            if unit is None:
                continue
            x_dq, w_dq, weights = unit
            if node.op_type == "Conv" and weights.ndim == 4:
                group = node.attributes.get_int("group", 1)
                cout, group_inputs = weights.shape[:2]
                per_group = cout // group
                if group == 1 and group_inputs % CHANNEL_ALIGNMENT and cout >= MIN_DIRECT_OUTPUTS:
                    extra = -group_inputs % CHANNEL_ALIGNMENT
                    _pad_input_channels(graph, build, node, x_dq, w_dq, weights, extra, opset)
                    stats["convs_padded"] += 1
                    why = "; avoids MLAS's wrong results at 17-31 outputs" if per_group in WRONG_COLUMNS else ""
                    notes.append(f"{node.name}: input channels padded {group_inputs} -> {group_inputs + extra} with zero "
                                 f"weights (ONNX Runtime's direct integer convolution{why})")
                elif group > 1 and group_inputs * per_group > 1 and per_group in WRONG_COLUMNS:
                    if opset < 13 or not _split_by_group(graph, build, node, x_dq, w_dq, weights, group, opset):
                        notes.append(f"warning: {node.name}: a grouped Conv with {per_group} outputs per group, which "
                                     "ONNX Runtime 1.24 may compute wrongly, could not be split (opset below 13 or its "
                                     "output not read by one per-tensor QuantizeLinear)")
                        continue
                    stats["grouped_convs_split"] += 1
                    notes.append(f"{node.name}: split into {group} Convs, one per group ({per_group} outputs each, "
                                 "which ONNX Runtime 1.24's grouped integer GEMM computes wrongly), joined on uint8")
            elif node.op_type in ("Gemm", "MatMul") and weights.ndim == 2:
                features_axis = 0 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 1
                features = weights.shape[features_axis]
                if features not in WRONG_COLUMNS:
                    continue
                if opset < 13:
                    notes.append(f"warning: {node.name}: {features} output features, which ONNX Runtime 1.24 computes "
                                 "wrongly at 32 or more rows, left as is (opset below 13)")
                    continue
                if not _widen_features(graph, build, node, w_dq, weights, features_axis):
                    notes.append(f"warning: {node.name}: {features} output features, which ONNX Runtime 1.24 computes "
                                 "wrongly at 32 or more rows, left as is (its quantized output is a graph output)")
                    continue
                stats["matmuls_widened"] += 1
                notes.append(f"{node.name}: {features} output features computed as {SAFE_COLUMNS} (zero weights) and "
                             f"sliced back: ONNX Runtime 1.24's integer GEMM is wrong at 17-31 columns and 32+ rows")
        if not notes:
            notes.append("every integer Conv/Gemm/MatMul already fits ONNX Runtime's kernels")
        return PassResult(model, changed=any(stats.values()), stats=stats, notes=notes)


def _integer_unit(node: ir.Node) -> tuple[ir.Node, ir.Node, np.ndarray] | None:
    """(activation DQ, weight DQ, int8 weights) of a unit ORT fuses into an integer kernel with
    zero-point-0 constant weights; None for anything else."""
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    x_dq, w_dq = node.inputs[0].producer(), node.inputs[1].producer()
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    x_params, w_params = qparams(x_dq), qparams(w_dq)
    weights = constant_array(w_dq.inputs[0])
    if x_params is None or w_params is None or weights is None or weights.dtype != np.int8:
        return None
    if x_params[0].size != 1 or np.any(w_params[1] != 0) or node.outputs[0].is_graph_output():
        return None
    return x_dq, w_dq, weights


def _int64(build: QdqBuilder, name: str, values: list[int]) -> ir.Value:
    return build.initializer(name, np.array(values, np.int64))


def _weight_dq(build: QdqBuilder, w_dq: ir.Node, weights: np.ndarray, name: str,
               per_channel: dict[int, np.ndarray] | None = None) -> ir.Node:
    """A DequantizeLinear of `weights` with `w_dq`'s parameters (or the replacement per-channel
    scale (1) / zero point (2) arrays in `per_channel`)."""
    inputs = [build.initializer(f"{name}_quantized", weights)]
    for index, value in enumerate(w_dq.inputs[1:], start=1):
        replacement = (per_channel or {}).get(index)
        inputs.append(build.initializer(f"{name}_{'scale' if index == 1 else 'zero_point'}", replacement)
                      if replacement is not None else value)
    node = build.node("DequantizeLinear", inputs, f"{name}_DequantizeLinear")
    if "axis" in w_dq.attributes:
        node.attributes["axis"] = w_dq.attributes["axis"]
    return node


def _pad_channels(build: QdqBuilder, quantized: ir.Value, zero: ir.Value, extra: int, name: str, opset: int) -> ir.Node:
    """Pad a uint8 NCHW tensor with `extra` channels of its zero point (a real 0)."""
    pads = [0, 0, 0, 0, 0, extra, 0, 0]  # begin N, C, H, W; end N, C, H, W
    if opset >= 11:
        return build.node("Pad", [quantized, _int64(build, f"{name}_pads", pads), zero], name)
    pad = build.node("Pad", [quantized], name)  # pads and value were attributes before opset 11
    pad.attributes["pads"] = ir.AttrInt64s("pads", pads)
    pad.attributes["value"] = ir.AttrFloat32("value", float(constant_array(zero).reshape(())))
    return pad


def _pad_input_channels(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, x_dq: ir.Node, w_dq: ir.Node,
                        weights: np.ndarray, extra: int, opset: int) -> None:
    cout, cin, kh, kw = weights.shape
    widened = np.concatenate([weights, np.zeros((cout, extra, kh, kw), np.int8)], axis=1)
    weight_dq = _weight_dq(build, w_dq, widened, f"{conv.name}_padded_weight")
    quantized, scale, zero = x_dq.inputs[0], x_dq.inputs[1], x_dq.inputs[2]
    pad = _pad_channels(build, quantized, zero, extra, f"{conv.name}_pad_channels", opset)
    input_dq = build.node("DequantizeLinear", [pad.outputs[0], scale, zero], f"{conv.name}_padded_input_DequantizeLinear")
    graph.insert_before(conv, [pad, input_dq, weight_dq])
    conv.replace_input_with(0, input_dq.outputs[0])
    conv.replace_input_with(1, weight_dq.outputs[0])
    for old in (x_dq, w_dq):
        _remove_if_unread(graph, old)


def _split_by_group(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, x_dq: ir.Node, w_dq: ir.Node,
                    weights: np.ndarray, group: int, opset: int) -> bool:
    uses = list(conv.outputs[0].uses())
    quantize = uses[0].node if len(uses) == 1 else None
    if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.outputs[0].is_graph_output():
        return False
    out_params = qparams(quantize)
    if out_params is None or out_params[0].size != 1:
        return False
    cout, group_inputs = weights.shape[:2]
    per_group = cout // group
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias_dq = bias.producer() if bias is not None else None
    if bias is not None and (bias_dq is None or bias_dq.op_type != "DequantizeLinear" or constant_array(bias_dq.inputs[0]) is None):
        return False  # place-for-onnxruntime stores every bias of an integer Conv as int32 behind a DQ
    quantized, scale, zero = x_dq.inputs[0], x_dq.inputs[1], x_dq.inputs[2]
    split = mark_created(ir.Node("", "Split", [quantized, _int64(build, f"{conv.name}_group_sizes", [group_inputs] * group)],
                                 attributes=[ir.AttrInt64("axis", 1)], name=f"{conv.name}_split_groups", num_outputs=group),
                         build.pass_name)
    new_nodes: list[ir.Node] = [split]
    outputs = []
    attributes = {k: v for k, v in conv.attributes.items() if k != "group"}
    for g in range(group):
        part = split.outputs[g]
        part.name = f"{conv.name}_group{g}_input"
        rows = slice(g * per_group, (g + 1) * per_group)
        group_weights = weights[rows]
        extra = -group_inputs % CHANNEL_ALIGNMENT if per_group >= MIN_DIRECT_OUTPUTS else 0
        if extra:
            pad = _pad_channels(build, part, zero, extra, f"{conv.name}_group{g}_pad_channels", opset)
            new_nodes.append(pad)
            part = pad.outputs[0]
            group_weights = np.concatenate([group_weights, np.zeros((per_group, extra, *weights.shape[2:]), np.int8)], axis=1)
        x = build.node("DequantizeLinear", [part, scale, zero], f"{conv.name}_group{g}_input_DequantizeLinear")
        w = _weight_dq(build, w_dq, group_weights, f"{conv.name}_group{g}_weight", _per_channel_rows(w_dq, rows, cout))
        inputs = [x.outputs[0], w.outputs[0]]
        new_nodes += [x, w]
        if bias_dq is not None:
            b = _weight_dq(build, bias_dq, constant_array(bias_dq.inputs[0])[rows], f"{conv.name}_group{g}_bias",
                           _per_channel_rows(bias_dq, rows, cout))
            new_nodes.append(b)
            inputs.append(b.outputs[0])
        part_conv = ir.Node("", "Conv", inputs, attributes=list(attributes.values()), name=f"{conv.name}_group{g}", num_outputs=1)
        part_conv.metadata_props.update(conv.metadata_props)
        q = build.node("QuantizeLinear", [part_conv.outputs[0], *quantize.inputs[1:]], f"{conv.name}_group{g}_QuantizeLinear")
        new_nodes += [part_conv, q]
        outputs.append(q.outputs[0])
    concat = build.node("Concat", outputs, f"{conv.name}_concat_groups", {"axis": 1})
    new_nodes.append(concat)
    graph.insert_after(quantize, new_nodes)
    quantize.outputs[0].replace_all_uses_with(concat.outputs[0])
    for node in (quantize, conv):
        graph.remove(node, safe=True)
    for old in (x_dq, w_dq, bias_dq):
        if old is not None:
            _remove_if_unread(graph, old)
    return True


def _per_channel_rows(dq: ir.Node, rows: slice, channels: int) -> dict[int, np.ndarray]:
    """The slice `rows` of a DequantizeLinear's per-channel scale and zero point."""
    picked = {}
    for index in (1, 2):
        array = constant_array(dq.inputs[index]) if len(dq.inputs) > index and dq.inputs[index] is not None else None
        if array is not None and array.ndim == 1 and array.shape[0] == channels:
            picked[index] = array[rows]
    return picked


def _widen_features(graph: ir.Graph, build: QdqBuilder, node: ir.Node, w_dq: ir.Node, weights: np.ndarray, axis: int) -> bool:
    output = node.outputs[0]
    if any(use.node.op_type == "QuantizeLinear" and use.node.outputs[0].is_graph_output() for use in output.uses()):
        return False
    features = weights.shape[axis]
    extra = SAFE_COLUMNS - features
    widths = [(0, 0), (0, 0)]
    widths[axis] = (0, extra)
    per_channel = {}
    for index, fill in ((1, 1.0), (2, 0)):
        array = constant_array(w_dq.inputs[index]) if len(w_dq.inputs) > index and w_dq.inputs[index] is not None else None
        if array is not None and array.ndim == 1 and array.shape[0] == features:
            per_channel[index] = np.concatenate([array, np.full(extra, fill, array.dtype)])
    weight_dq = _weight_dq(build, w_dq, np.pad(weights, widths), f"{node.name}_widened_weight", per_channel)
    new_nodes = [weight_dq]
    node.replace_input_with(1, weight_dq.outputs[0])
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    bias_dq = bias.producer() if bias is not None else None
    if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" and constant_array(bias_dq.inputs[0]) is not None:
        bias = constant_array(bias_dq.inputs[0])
        padded = {index: np.concatenate([array, np.full(extra, fill, array.dtype)])
                  for index, fill in ((1, 1.0), (2, 0))
                  for array in [constant_array(bias_dq.inputs[index]) if len(bias_dq.inputs) > index else None]
                  if array is not None and array.ndim == 1 and array.shape[0] == features}
        widened_bias = _weight_dq(build, bias_dq, np.concatenate([bias, np.zeros(extra, bias.dtype)]),
                                  f"{node.name}_widened_bias", padded)
        new_nodes.append(widened_bias)
        node.replace_input_with(2, widened_bias.outputs[0])
        _remove_if_unread(graph, bias_dq)
    elif bias is not None and constant_array(bias) is not None and constant_array(bias).shape[-1:] == (features,):
        float_bias = constant_array(bias)
        node.replace_input_with(2, build.initializer(f"{node.name}_widened_bias",
                                                     np.concatenate([float_bias, np.zeros((*float_bias.shape[:-1], extra),
                                                                                          float_bias.dtype)], axis=-1)))
    graph.insert_before(node, new_nodes)
    _remove_if_unread(graph, w_dq)

    starts, ends = _int64(build, f"{node.name}_slice_starts", [0]), _int64(build, f"{node.name}_slice_ends", [features])
    axes = _int64(build, f"{node.name}_slice_axes", [-1])
    float_slice = None
    for use in list(output.uses()):
        reader = use.node
        if reader.op_type == "QuantizeLinear":
            sliced = build.node("Slice", [reader.outputs[0], starts, ends, axes], f"{reader.name}_slice_features")
            graph.insert_after(reader, sliced)
            for later in list(reader.outputs[0].uses()):
                if later.node is not sliced:
                    later.node.replace_input_with(later.idx, sliced.outputs[0])
            reader.outputs[0].shape = None
        else:
            if float_slice is None:
                float_slice = build.node("Slice", [output, starts, ends, axes], f"{node.name}_slice_features")
                graph.insert_after(node, float_slice)
            reader.replace_input_with(use.idx, float_slice.outputs[0])
    output.shape = None
    return True


def _remove_if_unread(graph: ir.Graph, dq: ir.Node) -> None:
    """Remove a DequantizeLinear nothing reads any more, and its constant data input if it was the only reader."""
    if list(dq.outputs[0].uses()) or dq.outputs[0].is_graph_output():
        return
    data = dq.inputs[0]
    graph.remove(dq, safe=True)
    if data is not None and data.name in graph.initializers and not list(data.uses()):
        del graph.initializers[data.name]
