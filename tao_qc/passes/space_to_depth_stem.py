"""Run a few-channel strided stem Conv (ResNet's 7x7/2 over RGB) over pixels folded into channels.

ONNX Runtime's integer convolution works through the input channels a few at a time at every
kernel position; with 3 input channels most of that work is overhead, so the stem of an INT8
ResNet-18 runs only about 1.8x faster than in FP32 while every other Conv runs about 3.8x faster
(unfolded, it is ~14% of the INT8 model's time at batch 8 on 2 threads).

The rewrite folds each run of 2*stride pixels along the width into channels (4 pixels x 3 channels
= 12) and lets the Conv compute both output columns of such a run at once, as twice the output
channels. More multiply-adds (zero taps where the runs overhang the kernel), at a rate so much
higher that ResNet-18's 7x7 stem runs ~20% faster and MobileNet's 3x3 stem ~40% (batch 8, 2
threads). The folds cost nothing extra in ORT's channels-last layout: the input fold is one
Transpose that moves the channel axis inside each 4-byte run (ORT's fast 32-bit path; it replaces
the byte-wise NCHW -> NHWC Transpose ORT would insert anyway), and the output unfold is a Reshape of
contiguous memory. The graph writes the channels-last steps between Transposes that ORT's layout
optimizer cancels against the ones it puts around its channels-last QLinearConv.

Measured and not kept: a full 2x2 space-to-depth (rows as well) needs a real data shuffle, and
every ORT op that can do it (a one-hot 2x2/2 QLinearConv, 6-D uint8 Transposes, Gather, strided
Slices, float SpaceToDepth) costs more than the smaller Conv saves; one Conv per output column
(no zero run) saves less than the QLinearConcat that joins them costs, and also when the column
Convs feed two poolings and a uint8 Max instead of a Concat (ResNet's stem + MaxPool: the Convs
save 0.7 ms at batch 8, the second fold, its Pad and the extra pooling cost 0.9 ms).

The weights are the stem's own int8 values rearranged, with per-channel scales and bias repeated
for the second output column, so accumulations, requantization and output are exactly those of
the original Conv.

Runs after place-for-onnxruntime, for `target: onnxruntime`. A Conv qualifies when it is a fused
integer unit (uint8 input through DequantizeLinear, int8 weights, output read only by a per-tensor
QuantizeLinear), group 1, stride 2, dilation 1, kernel width at least MIN_KERNEL, at most
MAX_CHANNELS input channels, a static input width divisible by 4 and an even output width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.qdq import QdqBuilder, dims_through_qdq, qparams
from tao_qc.pipeline import PassContext, PassResult, constant_array

# Above this the integer kernel's per-position overhead is already small against the channel work.
MAX_CHANNELS = 4
# A 3x3/2 kernel does 2.7x the multiply-adds folded and still runs ~40% faster (MobileNet's stem);
# 1x1 and 2x2 stride-2 kernels over RGB were not measured.
MIN_KERNEL = 3
# Output columns computed together; the input width is folded by STRIDE * PHASES.
PHASES = 2
STRIDE = 2
FOLD = STRIDE * PHASES
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


@dataclass
class SpaceToDepthStem:
    name: str = "space-to-depth-stem"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        notes = []
        for conv in [n for n in graph if n.op_type == "Conv"]:
            plan = _plan(conv)
            if plan is None:
                continue
            _rewrite(graph, build, conv, plan)
            cout, channels, kh, kw = plan.weights.shape
            notes.append(f"{conv.name}: {kh}x{kw}/2 Conv over {channels} channels runs as a {kh}x{plan.runs} Conv "
                         f"over {FOLD * channels} channels (runs of {FOLD} pixels along the width) with {PHASES * cout} "
                         f"outputs ({PHASES} output columns each), bit for bit the same")
        return PassResult(model, changed=bool(notes), stats={"stems_rewritten": len(notes)}, notes=notes)


@dataclass
class _Plan:
    weights: np.ndarray  # the stem's int8 weights, [out, in, kh, kw]
    quantize: ir.Node  # the per-tensor QuantizeLinear that alone reads the Conv's output
    width: int  # input width
    out_width: int
    first_run: int  # the kernel's first run of FOLD pixels, relative to its output column pair (<= 0)
    runs: int  # kernel width in runs
    pads: list[int]  # top, left, bottom, right; left and right in runs


def _bias(conv: ir.Node) -> ir.Value | None:
    """The Conv's optional third input."""
    return conv.inputs[2] if len(conv.inputs) > 2 else None


def _plan(conv: ir.Node) -> _Plan | None:
    if len(conv.inputs) < 2 or conv.inputs[0] is None or conv.inputs[1] is None:
        return None
    x_dq, w_dq = conv.inputs[0].producer(), conv.inputs[1].producer()
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return None
    x_params, weights = qparams(x_dq), constant_array(w_dq.inputs[0])
    if x_params is None or x_params[1].dtype != np.uint8 or x_params[0].size != 1:
        return None
    if weights is None or weights.dtype != np.int8 or weights.ndim != 4:
        return None
    if len(list(w_dq.outputs[0].uses())) != 1:
        return None  # rearranging weights another node reads too would change that node
    bias = _bias(conv)
    bias_dq = bias.producer() if bias is not None else None
    if bias_dq is not None and (bias_dq.op_type != "DequantizeLinear" or len(list(bias_dq.outputs[0].uses())) != 1):
        return None
    uses = list(conv.outputs[0].uses())
    if len(uses) != 1 or conv.outputs[0].is_graph_output():
        return None
    quantize = uses[0].node
    q_params = qparams(quantize) if quantize.op_type == "QuantizeLinear" else None
    if q_params is None or q_params[0].size != 1 or quantize.outputs[0].is_graph_output():
        return None
    attributes = conv.attributes
    if attributes.get_int("group", 1) != 1 or attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return None
    if list(attributes.get_ints("strides", [1, 1])) != [STRIDE, STRIDE] or list(attributes.get_ints("dilations", [1, 1])) != [1, 1]:
        return None
    _, channels, _, kw = weights.shape
    if channels > MAX_CHANNELS or kw < MIN_KERNEL:
        return None
    dims = dims_through_qdq(conv.inputs[0])
    if dims is None or len(dims) != 4 or not isinstance(dims[3], int) or dims[3] % FOLD:
        return None
    top, left, bottom, right = attributes.get_ints("pads", [0, 0, 0, 0])
    width = dims[3]
    out_width = (width + left + right - kw) // STRIDE + 1
    if out_width % PHASES:
        return None
    # Output column PHASES*p + phase reads input columns FOLD*p + STRIDE*phase - left + kx.
    first_run = (-left) // FOLD
    runs = (STRIDE * (PHASES - 1) - left + kw - 1) // FOLD - first_run + 1
    right_runs = out_width // PHASES - 1 + runs - width // FOLD + first_run
    if right_runs < 0:
        return None  # would need negative padding on the right
    return _Plan(weights, quantize, width, out_width, first_run, runs, [top, -first_run, bottom, right_runs])


def _folded_weights(plan: _Plan, left: int) -> np.ndarray:
    """[PHASES*out, in*FOLD, kh, runs]: output channel (phase, o), input channel (c, pixel in run)."""
    cout, c, kh, kw = plan.weights.shape
    folded = np.zeros((PHASES, cout, c, FOLD, kh, plan.runs), np.int8)
    for phase in range(PHASES):
        for run in range(plan.runs):
            for pixel in range(FOLD):
                kx = FOLD * (plan.first_run + run) + pixel - STRIDE * phase + left
                if 0 <= kx < kw:
                    folded[phase, :, :, pixel, :, run] = plan.weights[:, :, :, kx]
    return folded.reshape(PHASES * cout, c * FOLD, kh, plan.runs)


def _replace_constant(graph: ir.Graph, build: QdqBuilder, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
    old = node.inputs[index]
    node.replace_input_with(index, build.initializer(f"{old.name}_{suffix}", array))
    if old.name in graph.initializers and not list(old.uses()):
        del graph.initializers[old.name]


def _repeat_per_channel(graph: ir.Graph, build: QdqBuilder, dq: ir.Node, cout: int) -> None:
    """Repeat a DequantizeLinear's per-output-channel constants for every output column phase."""
    for index, value in enumerate(list(dq.inputs)):
        array = constant_array(value)
        if array is not None and array.ndim == 1 and array.shape[0] == cout:
            _replace_constant(graph, build, dq, index, np.tile(array, PHASES), "phases")


def _node(build: QdqBuilder, op: str, inputs: list[ir.Value], name: str, perm: list[int] | None = None) -> ir.Node:
    node = build.node(op, inputs, name)
    if perm is not None:
        node.attributes["perm"] = ir.AttrInt64s("perm", perm)
    return node


def _fold_width(build: QdqBuilder, value: ir.Value, channels: int, width: int, name: str) -> list[ir.Node]:
    """[N, C, H, W] -> [N, C*FOLD, H, W/FOLD], channel (c, pixel in run), in channels-last memory.

    One Transpose moves the channel axis inside each run of FOLD pixels, copying FOLD-byte blocks
    (cheaper than the byte-wise NCHW -> NHWC Transpose ORT would otherwise insert); the last one
    cancels against the NHWC Transpose ORT puts in front of its QLinearConv."""
    runs_shape = build.initializer(f"{name}_runs_shape", np.array([0, channels, -1, width // FOLD, FOLD], np.int64))
    runs = _node(build, "Reshape", [value, runs_shape], f"{name}_runs")
    inside = _node(build, "Transpose", [runs.outputs[0]], f"{name}_channels_inside_runs", [0, 2, 3, 1, 4])
    merged_shape = build.initializer(f"{name}_channels_shape", np.array([0, 0, 0, channels * FOLD], np.int64))
    merged = _node(build, "Reshape", [inside.outputs[0], merged_shape], f"{name}_channels")
    first = _node(build, "Transpose", [merged.outputs[0]], f"{name}_channels_first", TO_CHANNELS_FIRST)
    return [runs, inside, merged, first]


def _unfold_width(build: QdqBuilder, value: ir.Value, channels: int, width: int, name: str) -> list[ir.Node]:
    """[N, PHASES*O, H, W/PHASES] -> [N, O, H, W]: in channels-last memory a Reshape; the first
    Transpose cancels against the NCHW Transpose ORT puts after its QLinearConv."""
    last = _node(build, "Transpose", [value], f"{name}_channels_last", TO_CHANNELS_LAST)
    shape = build.initializer(f"{name}_shape", np.array([0, 0, width, channels], np.int64))
    reshape = _node(build, "Reshape", [last.outputs[0], shape], f"{name}_reshape")
    first = _node(build, "Transpose", [reshape.outputs[0]], f"{name}_channels_first", TO_CHANNELS_FIRST)
    return [last, reshape, first]


def _rewrite(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, plan: _Plan) -> None:
    x_dq, w_dq = conv.inputs[0].producer(), conv.inputs[1].producer()
    cout, c, _, _ = plan.weights.shape
    left = conv.attributes.get_ints("pads", [0, 0, 0, 0])[1]

    fold = _fold_width(build, x_dq.inputs[0], c, plan.width, f"{conv.name}_fold_width")
    dq = build.node("DequantizeLinear", [fold[-1].outputs[0], *x_dq.inputs[1:]], f"{conv.name}_fold_width_DequantizeLinear")
    graph.insert_before(conv, [*fold, dq])
    conv.replace_input_with(0, dq.outputs[0])
    if not list(x_dq.outputs[0].uses()):
        graph.remove(x_dq, safe=True)

    _replace_constant(graph, build, w_dq, 0, _folded_weights(plan, left), "fold_width")
    _repeat_per_channel(graph, build, w_dq, cout)
    bias = _bias(conv)
    if bias is not None:
        _repeat_per_channel(graph, build, bias.producer(), cout)
    conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [plan.weights.shape[2], plan.runs])
    conv.attributes["strides"] = ir.AttrInt64s("strides", [STRIDE, 1])
    conv.attributes["pads"] = ir.AttrInt64s("pads", plan.pads)

    # After the requantization: uint8.
    q_out = plan.quantize.outputs[0]
    unfold = _unfold_width(build, q_out, cout, plan.out_width, f"{conv.name}_unfold_width")
    graph.insert_after(plan.quantize, unfold)
    for use in list(q_out.uses()):
        if use.node is not unfold[0]:
            use.node.replace_input_with(use.idx, unfold[-1].outputs[0])
    stale = [conv.outputs[0], q_out, w_dq.outputs[0]] + ([bias] if bias is not None else [])
    for value in stale:
        value.shape = None  # the old shapes no longer hold
