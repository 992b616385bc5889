"""Shape integer Conv/Gemm/MatMul units so ONNX Runtime's CPU kernels compute them right, and fast.

ONNX Runtime 1.24's CPU integer GEMM (MLAS, U8S8) returns wrong int32 sums, up to the whole uint8
range off, when one call covers 32 or more rows and its column count modulo 32 is 17 to 31
(output channels per group of a Conv; output features of a Gemm/MatMul, which MLAS may split
between threads at multiples of 16). Measured on this machine, a Xeon with AMX and AVX-512 VNNI;
32 rows and 32 columns are the block of MLAS's AMX U8S8 kernel, whose partial-column path is the
one that fails. The results are wrong with one thread too, and because each thread's slice of
rows ends elsewhere they differ from run to run with two or more threads. Sweeps here (Conv: 1-258
input channels, 1-131 outputs, kernels 1/3/5, strides 1-2, groups 1-3, per-channel and per-tensor
weights; QGemm/QLinearMatMul: 1-512 rows, depth 10-1280, 16-1008 features, 1-4 threads) found
exactly those shapes wrong, and every feature count that is a multiple of 16 right.

A QLinearConv takes that GEMM unless MLAS's direct symmetric convolution takes it: group 1, input
and output channels multiples of 4, at least 16 outputs, zero-point-0 int8 weights (depthwise
Convs have a kernel of their own). The direct kernel is also faster: one Conv at 2 threads ran
1.2-1.7x faster with its input channels padded to a multiple of 4 (3->16 3x3 over 112x112 1.4x,
6->40 1x1 1.7x, 10->20 5x5 at batch 8 1.6x, 18->64 3x3 1.3x).

For `target: onnxruntime`, after the passes that shape Convs, this pass rewrites `DQ -> op -> Q`
units with int8 zero-point-0 weights; every rewrite adds only zeros, so the integers are exact:
- Conv, group 1, at least 16 outputs, not direct: the uint8 input goes through a Pad of the
  channel axis with its zero point (a real 0) to a multiple of 4, the weights get zero columns;
  where the output count is not a multiple of 4 and falls in the wrong range, zero filters pad it
  too and a Slice of the quantized output takes the real channels back;
- Conv, group > 1 and not depthwise, wrong outputs per group: one Conv per group over a Split of
  the uint8 input, joined by a Concat of their uint8 outputs (one output scale), each fitted as
  above;
- Gemm/MatMul with constant weights and more than 16 output features not a multiple of 16 (unless
  its row count is static and below 32): zero weight columns up to the next multiple of 16, and a
  Slice of the output (after its QuantizeLinear where it has one) back to the real features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.qdq import QdqBuilder, dims_through_qdq, qparams
from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created

CHANNEL_ALIGNMENT = 4
# The direct symmetric convolution takes Convs with at least this many output channels.
MIN_DIRECT_OUTPUTS = 16
# MLAS's integer GEMM block; a call's columns modulo it in this range come out wrong.
GEMM_BLOCK = 32
WRONG_REMAINDERS = range(17, 32)
# MLAS splits a GEMM's columns between threads at multiples of this.
THREAD_COLUMNS = 16


def wrong_in_gemm(columns: int) -> bool:
    return columns % GEMM_BLOCK in WRONG_REMAINDERS


def takes_direct_conv(input_channels: int, output_channels: int) -> bool:
    """Whether a group-1 QLinearConv runs MLAS's direct symmetric convolution (no GEMM)."""
    return (input_channels % CHANNEL_ALIGNMENT == 0 and output_channels % CHANNEL_ALIGNMENT == 0
            and output_channels >= MIN_DIRECT_OUTPUTS)


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
                if group == 1:
                    note = _fit_conv(graph, build, node, x_dq, w_dq, weights, opset)
                    if note:
                        stats["convs_padded"] += 1
                        notes.append(note)
                elif group_inputs * per_group > 1 and wrong_in_gemm(per_group):
                    parts = _split_by_group(graph, build, node, x_dq, w_dq, weights, group) if opset >= 13 else None
                    if parts is None:
                        notes.append(f"warning: {node.name}: a grouped Conv with {per_group} outputs per group, which "
                                     "ONNX Runtime 1.24 computes wrongly, could not be split (opset below 13 or its "
                                     "output not read by one per-tensor QuantizeLinear)")
                        continue
                    stats["grouped_convs_split"] += 1
                    notes.append(f"{node.name}: split into {group} Convs, one per group ({per_group} outputs each, which "
                                 "ONNX Runtime 1.24's integer GEMM computes wrongly), joined on uint8")
                    for part in parts:
                        note = _fit_conv(graph, build, part, *_integer_unit(part), opset)
                        if note:
                            stats["convs_padded"] += 1
                            notes.append(note)
            elif node.op_type in ("Gemm", "MatMul") and weights.ndim == 2:
                features_axis = 0 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else 1
                features = weights.shape[features_axis]
                if features <= THREAD_COLUMNS or features % THREAD_COLUMNS == 0 or _fewer_rows_than_a_block(node):
                    continue
                if opset < 13 or not _widen_features(graph, build, node, w_dq, weights, features_axis):
                    notes.append(f"warning: {node.name}: {features} output features, which ONNX Runtime 1.24 may compute "
                                 "wrongly at 32 or more rows, left as is (opset below 13, or its quantized output is a "
                                 "graph output)")
                    continue
                stats["matmuls_widened"] += 1
                notes.append(f"{node.name}: {features} output features computed as {_round_up(features, THREAD_COLUMNS)} "
                             "(zero weights) and sliced back: ONNX Runtime 1.24's integer GEMM can be wrong otherwise")
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _fit_conv(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, x_dq: ir.Node, w_dq: ir.Node,
              weights: np.ndarray, opset: int) -> str | None:
    """Give a group-1 integer Conv the shapes of MLAS's direct convolution where that is exact and
    worth it; the note saying what changed, or None."""
    cout, cin, kh, kw = weights.shape
    if cout < MIN_DIRECT_OUTPUTS or takes_direct_conv(cin, cout):
        return None  # too few outputs for the direct kernel (and the GEMM is right below 17)
    wrong = wrong_in_gemm(cout)
    extra_out = 0
    if cout % CHANNEL_ALIGNMENT:
        if not wrong or opset < 10 or not _sliceable(conv):
            return None  # the GEMM computes it right (or the output cannot be sliced); padding outputs costs a Slice
        extra_out = -cout % CHANNEL_ALIGNMENT
    extra_in = -cin % CHANNEL_ALIGNMENT
    widened = np.pad(weights, [(0, extra_out), (0, extra_in), (0, 0), (0, 0)])
    per_channel = _padded_per_channel(w_dq, cout, extra_out)
    weight_dq = _weight_dq(build, w_dq, widened, f"{conv.name}_padded_weight", per_channel)
    new_nodes = [weight_dq]
    if extra_in:
        quantized, scale, zero = x_dq.inputs[0], x_dq.inputs[1], x_dq.inputs[2]
        pad = _pad_channels(build, quantized, zero, extra_in, f"{conv.name}_pad_channels", opset)
        input_dq = build.node("DequantizeLinear", [pad.outputs[0], scale, zero], f"{conv.name}_padded_input_DequantizeLinear")
        new_nodes += [pad, input_dq]
        conv.replace_input_with(0, input_dq.outputs[0])
    conv.replace_input_with(1, weight_dq.outputs[0])
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    old_bias_dq = None
    if extra_out and bias is not None:
        old_bias_dq = bias.producer()
        if old_bias_dq is not None and old_bias_dq.op_type == "DequantizeLinear":
            values = constant_array(old_bias_dq.inputs[0])
            bias_dq = _weight_dq(build, old_bias_dq, np.pad(values, (0, extra_out)), f"{conv.name}_padded_bias",
                                 _padded_per_channel(old_bias_dq, cout, extra_out))
            new_nodes.append(bias_dq)
            conv.replace_input_with(2, bias_dq.outputs[0])
        else:
            conv.replace_input_with(2, build.initializer(f"{conv.name}_padded_bias", np.pad(constant_array(bias), (0, extra_out))))
            old_bias_dq = None
    graph.insert_before(conv, new_nodes)
    if extra_out:
        _slice_outputs(graph, build, conv, axis=1, count=cout)
    for old in (x_dq, w_dq, old_bias_dq):
        if old is not None:
            _remove_if_unread(graph, old)
    changes = []
    if extra_in:
        changes.append(f"input channels padded {cin} -> {cin + extra_in}")
    if extra_out:
        changes.append(f"output channels computed as {cout + extra_out} and sliced back to {cout}")
    why = "; without it ONNX Runtime 1.24's integer GEMM computes this Conv wrongly" if wrong else ""
    return f"{conv.name}: {' and '.join(changes)} with zero weights (ONNX Runtime's direct integer convolution{why})"


def _padded_per_channel(dq: ir.Node, channels: int, extra: int) -> dict[int, np.ndarray]:
    """A DequantizeLinear's per-channel scale (padded with 1) and zero point (padded with 0) for
    `extra` more channels; empty when nothing is added or they are per-tensor."""
    padded = {}
    for index, fill in ((1, 1.0), (2, 0)):
        array = constant_array(dq.inputs[index]) if extra and len(dq.inputs) > index and dq.inputs[index] is not None else None
        if array is not None and array.ndim == 1 and array.shape[0] == channels:
            padded[index] = np.concatenate([array, np.full(extra, fill, array.dtype)])
    return padded


def _slice_outputs(graph: ir.Graph, build: QdqBuilder, node: ir.Node, axis: int, count: int) -> None:
    """Readers of `node`'s output see its first `count` entries along `axis`: after each
    QuantizeLinear reading it (on uint8, so ORT still fuses the unit), before any float reader."""
    starts, ends = _int64(build, f"{node.name}_slice_starts", [0]), _int64(build, f"{node.name}_slice_ends", [count])
    axes = _int64(build, f"{node.name}_slice_axes", [axis])
    output = node.outputs[0]
    float_slice = None
    for use in list(output.uses()):
        reader = use.node
        if reader.op_type == "QuantizeLinear":
            sliced = build.node("Slice", [reader.outputs[0], starts, ends, axes], f"{reader.name}_slice")
            graph.insert_after(reader, sliced)
            for later in list(reader.outputs[0].uses()):
                if later.node is not sliced:
                    later.node.replace_input_with(later.idx, sliced.outputs[0])
            reader.outputs[0].shape = None
        else:
            if float_slice is None:
                float_slice = build.node("Slice", [output, starts, ends, axes], f"{node.name}_slice")
                graph.insert_after(node, float_slice)
            reader.replace_input_with(use.idx, float_slice.outputs[0])
    output.shape = None


def _split_by_group(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, x_dq: ir.Node, w_dq: ir.Node,
                    weights: np.ndarray, group: int) -> list[ir.Node] | None:
    """One group-1 Conv per group over a Split of the uint8 input, their uint8 outputs joined by a
    Concat; the new Convs, or None where the unit's form does not allow it."""
    uses = list(conv.outputs[0].uses())
    quantize = uses[0].node if len(uses) == 1 else None
    if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.outputs[0].is_graph_output():
        return None
    out_params = qparams(quantize)
    if out_params is None or out_params[0].size != 1:
        return None
    cout, group_inputs = weights.shape[:2]
    per_group = cout // group
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias_dq = bias.producer() if bias is not None else None
    if bias is not None and (bias_dq is None or bias_dq.op_type != "DequantizeLinear" or constant_array(bias_dq.inputs[0]) is None):
        return None  # place-for-onnxruntime stores every bias of an integer Conv as int32 behind a DQ
    quantized, scale, zero = x_dq.inputs[0], x_dq.inputs[1], x_dq.inputs[2]
    split = mark_created(ir.Node("", "Split", [quantized, _int64(build, f"{conv.name}_group_sizes", [group_inputs] * group)],
                                 attributes=[ir.AttrInt64("axis", 1)], name=f"{conv.name}_split_groups", num_outputs=group),
                         build.pass_name)
    new_nodes: list[ir.Node] = [split]
    parts, outputs = [], []
    attributes = [value for key, value in conv.attributes.items() if key != "group"]
    for g in range(group):
        split.outputs[g].name = f"{conv.name}_group{g}_input"
        rows = slice(g * per_group, (g + 1) * per_group)
        x = build.node("DequantizeLinear", [split.outputs[g], scale, zero], f"{conv.name}_group{g}_input_DequantizeLinear")
        w = _weight_dq(build, w_dq, weights[rows], f"{conv.name}_group{g}_weight", _per_channel_rows(w_dq, rows, cout))
        inputs = [x.outputs[0], w.outputs[0]]
        new_nodes += [x, w]
        if bias_dq is not None:
            b = _weight_dq(build, bias_dq, constant_array(bias_dq.inputs[0])[rows], f"{conv.name}_group{g}_bias",
                           _per_channel_rows(bias_dq, rows, cout))
            new_nodes.append(b)
            inputs.append(b.outputs[0])
        part = mark_created(ir.Node("", "Conv", inputs, attributes=attributes, name=f"{conv.name}_group{g}", num_outputs=1),
                            build.pass_name)
        q = build.node("QuantizeLinear", [part.outputs[0], *quantize.inputs[1:]], f"{conv.name}_group{g}_QuantizeLinear")
        new_nodes += [part, q]
        parts.append(part)
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
    return parts


def _per_channel_rows(dq: ir.Node, rows: slice, channels: int) -> dict[int, np.ndarray]:
    """The slice `rows` of a DequantizeLinear's per-channel scale and zero point."""
    picked = {}
    for index in (1, 2):
        array = constant_array(dq.inputs[index]) if len(dq.inputs) > index and dq.inputs[index] is not None else None
        if array is not None and array.ndim == 1 and array.shape[0] == channels:
            picked[index] = array[rows]
    return picked


def _widen_features(graph: ir.Graph, build: QdqBuilder, node: ir.Node, w_dq: ir.Node, weights: np.ndarray, axis: int) -> bool:
    if not _sliceable(node):
        return False
    features = weights.shape[axis]
    extra = _round_up(features, THREAD_COLUMNS) - features
    widths = [(0, 0), (0, 0)]
    widths[axis] = (0, extra)
    weight_dq = _weight_dq(build, w_dq, np.pad(weights, widths), f"{node.name}_widened_weight",
                           _padded_per_channel(w_dq, features, extra))
    new_nodes = [weight_dq]
    node.replace_input_with(1, weight_dq.outputs[0])
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    bias_dq = bias.producer() if bias is not None else None
    if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" and constant_array(bias_dq.inputs[0]) is not None:
        values = constant_array(bias_dq.inputs[0])
        widened_bias = _weight_dq(build, bias_dq, np.pad(values, (0, extra)), f"{node.name}_widened_bias",
                                  _padded_per_channel(bias_dq, features, extra))
        new_nodes.append(widened_bias)
        node.replace_input_with(2, widened_bias.outputs[0])
    elif bias is not None and constant_array(bias) is not None and constant_array(bias).shape[-1:] == (features,):
        float_bias = constant_array(bias)
        node.replace_input_with(2, build.initializer(f"{node.name}_widened_bias",
                                                     np.pad(float_bias, [(0, 0)] * (float_bias.ndim - 1) + [(0, extra)])))
    graph.insert_before(node, new_nodes)
    for old in (w_dq, bias_dq):
        if old is not None and old.op_type == "DequantizeLinear":
            _remove_if_unread(graph, old)
    _slice_outputs(graph, build, node, axis=-1, count=features)
    return True


def _fewer_rows_than_a_block(node: ir.Node) -> bool:
    """Whether the GEMM's row count (every input dim but the last) is static and below 32, where
    MLAS's kernel is right whatever the columns (a batch-1 classifier)."""
    dims = dims_through_qdq(node.inputs[0])
    if dims is None or not dims or not all(isinstance(d, int) for d in dims):
        return False
    return int(np.prod(dims[:-1])) < GEMM_BLOCK


def _sliceable(node: ir.Node) -> bool:
    """Whether slicing `node`'s output (after its QuantizeLinear readers) leaves the graph outputs alone."""
    output = node.outputs[0]
    return not output.is_graph_output() and not any(
        use.node.op_type == "QuantizeLinear" and use.node.outputs[0].is_graph_output() for use in output.uses())


def _remove_if_unread(graph: ir.Graph, dq: ir.Node) -> None:
    """Remove a DequantizeLinear nothing reads any more, and the initializers only it read."""
    if list(dq.outputs[0].uses()) or dq.outputs[0].is_graph_output():
        return
    inputs = list(dq.inputs)
    graph.remove(dq, safe=True)
    for value in inputs:
        if value is not None and value.name in graph.initializers and not list(value.uses()) and not value.is_graph_output():
            del graph.initializers[value.name]
