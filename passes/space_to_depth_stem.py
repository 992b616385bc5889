"""Run a few-channel strided stem Conv (ResNet's 7x7/2 over RGB) as a stride-1 Conv over 2x2 blocks.

ONNX Runtime's integer convolution works through the input channels a few at a time at every
kernel position; with 3 input channels most of that work is overhead, so the stem of an INT8
ResNet-18 runs only about 1.7x faster than in FP32 while every other Conv runs about 3.7x faster
(it is ~14% of the INT8 model's time at batch 8 on 2 threads). Folding each 2x2 block of pixels
into channels (space-to-depth) turns a stride-2 KxK Conv over C channels into a stride-1
ceil(K/2)-square Conv over 4C channels: a quarter of the kernel positions, four times the channels
at each.

The graph does the folding with ONNX Runtime's integer kernels as well: a 2x2/2 QLinearConv whose
int8 weights pick one pixel each (weight 1, scale 1, output scale = input scale), so its uint8
output is its input rearranged, bit for bit (ORT has no uint8 SpaceToDepth; its 6-D uint8
Transpose is slower than the Conv saved). The stem's int8 weights are rearranged to match, with
zero taps where the 2x2 grid overhangs the kernel; accumulations, requantization and output are
exactly those of the original Conv.

Runs after place-for-onnxruntime, for `target: onnxruntime`. A Conv qualifies when it is a fused
integer unit (uint8 input through DequantizeLinear, int8 weights), group 1, stride 2,
dilation 1, kernel at least MIN_KERNEL, at most MAX_CHANNELS input channels, and a static even input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from tao_qc.passes.place_for_onnxruntime import QdqBuilder, dims_through_qdq, qparams
from tao_qc.pipeline import PassContext, PassResult, constant_array

# Above this the integer kernel's per-position overhead is already small against the channel work.
MAX_CHANNELS = 4
# A 3x3/2 kernel folds into 2x2 blocks with 7 zero taps of 16: measured no faster (MobileNet's stem).
MIN_KERNEL = 5


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
            _, channels, kh, kw = plan.weights.shape
            notes.append(f"{conv.name}: {kh}x{kw}/2 Conv over {channels} channels runs as "
                         f"a {plan.blocks[0]}x{plan.blocks[1]}/1 Conv over {4 * channels} (2x2 pixel blocks folded "
                         "into channels by an exact 2x2/2 integer Conv)")
        return PassResult(model, changed=bool(notes), stats={"stems_rewritten": len(notes)}, notes=notes)


@dataclass
class _Plan:
    weights: np.ndarray  # the stem's int8 weights, [out, in, kh, kw]
    shift: tuple[int, int]  # zero taps before the kernel, so its window starts on a block boundary
    blocks: tuple[int, int]  # kernel size in 2x2 blocks
    pads: list[int]  # in blocks: top, left, bottom, right


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
    if len(list(w_dq.outputs[0].uses())) != 1 or len(list(w_dq.inputs[0].uses())) != 1:
        return None  # rearranging weights another node reads too would change that node
    attributes = conv.attributes
    if attributes.get_int("group", 1) != 1 or attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return None
    if list(attributes.get_ints("strides", [1, 1])) != [2, 2] or list(attributes.get_ints("dilations", [1, 1])) != [1, 1]:
        return None
    _, channels, kh, kw = weights.shape
    if channels > MAX_CHANNELS or min(kh, kw) < MIN_KERNEL:
        return None
    dims = dims_through_qdq(conv.inputs[0])
    if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:]) or dims[2] % 2 or dims[3] % 2:
        return None
    top, left, bottom, right = attributes.get_ints("pads", [0, 0, 0, 0])
    shift = (top % 2, left % 2)
    blocks = (-(-(kh + shift[0]) // 2), -(-(kw + shift[1]) // 2))
    pads = [(top + shift[0]) // 2, (left + shift[1]) // 2]
    for axis, (size, begin, end, k) in enumerate(((dims[2], top, bottom, kh), (dims[3], left, right, kw))):
        out = (size + begin + end - k) // 2 + 1
        pads.append(out - 1 + blocks[axis] - size // 2 - pads[axis])
    if min(pads) < 0:
        return None
    return _Plan(weights, shift, blocks, pads)


def _rewrite(graph: ir.Graph, build: QdqBuilder, conv: ir.Node, plan: _Plan) -> None:
    x_dq, w_dq = conv.inputs[0].producer(), conv.inputs[1].producer()
    cout, c, kh, kw = plan.weights.shape
    # The folding Conv: output channel (ci, dy, dx) = input channel ci at pixel (dy, dx) of each block.
    pick = np.zeros((4 * c, c, 2, 2), np.int8)
    for ci in range(c):
        for dy in range(2):
            for dx in range(2):
                pick[ci * 4 + dy * 2 + dx, ci, dy, dx] = 1
    pick_dq = build.node("DequantizeLinear", [build.initializer(f"{conv.name}_space_to_depth_weight", pick),
                                              build.initializer(f"{conv.name}_space_to_depth_scale", np.ones((), np.float32)),
                                              build.initializer(f"{conv.name}_space_to_depth_zero", np.zeros((), np.int8))],
                         f"{conv.name}_space_to_depth_weight_DequantizeLinear")
    fold = build.node("Conv", [x_dq.outputs[0], pick_dq.outputs[0]], f"{conv.name}_space_to_depth")
    fold.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [2, 2])
    fold.attributes["strides"] = ir.AttrInt64s("strides", [2, 2])
    # Same scale and zero point as the input: the requantization multiplier is exactly 1.
    q = build.node("QuantizeLinear", [fold.outputs[0], *x_dq.inputs[1:]], f"{conv.name}_space_to_depth_QuantizeLinear")
    dq = build.node("DequantizeLinear", [q.outputs[0], *x_dq.inputs[1:]], f"{conv.name}_space_to_depth_DequantizeLinear")

    bh, bw = plan.blocks
    padded = np.zeros((cout, c, 2 * bh, 2 * bw), np.int8)
    padded[:, :, plan.shift[0]:plan.shift[0] + kh, plan.shift[1]:plan.shift[1] + kw] = plan.weights
    blocked = padded.reshape(cout, c, bh, 2, bw, 2).transpose(0, 1, 3, 5, 2, 4).reshape(cout, 4 * c, bh, bw)
    old = w_dq.inputs[0]
    w_dq.replace_input_with(0, build.initializer(f"{old.name}_space_to_depth", np.ascontiguousarray(blocked)))
    if old.name in graph.initializers and not list(old.uses()):
        del graph.initializers[old.name]

    graph.insert_before(conv, [pick_dq, fold, q, dq])
    conv.replace_input_with(0, dq.outputs[0])
    conv.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [bh, bw])
    conv.attributes["strides"] = ir.AttrInt64s("strides", [1, 1])
    conv.attributes["pads"] = ir.AttrInt64s("pads", plan.pads)
