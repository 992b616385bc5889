"""Keep a feature pyramid's nearest upsampling on uint8, in a form ONNX Runtime runs fast.

Detectors with a feature pyramid (YuNet, FastestDet, most SSD/YOLO necks) upsample a coarse map
with a nearest `Resize` by 2 and add it to, or concatenate it with, a finer one. Left as modelopt
writes it, the upsampled addend is float (`DQ -> Resize -> Add`), so ORT runs the Resize, the Add
and a QuantizeLinear in float, each with a layout Transpose around it, between two integer Convs.
This pass:

1. puts a Q/DQ pair with the Resize input's own parameters after a nearest Resize of a quantized
   tensor that is read by anything but QuantizeLinear nodes (an Add, a Concat). Nearest resizing
   repeats values, so its output lies on its input's grid and the pair is exact; ORT then runs the
   Resize on uint8 and, once their other inputs are quantized too (place-for-onnxruntime quantizes
   a Relu'd tensor an Add reads, move-on-uint8 a Concat's output), the Add as QLinearAdd and the
   Concat as QLinearConcat.
2. writes a uint8 nearest Resize by whole factors (`DQ -> Resize -> Q` with one set of parameters)
   as a repeat in channels-last memory: `Transpose -> Unsqueeze -> Expand -> Reshape -> Transpose`
   (the Reshape's shape computed from the input's: heights and widths may be dynamic, as in
   PP-OCRv5's detector).
   ORT runs a uint8 Resize channels-last (between its channels-last QLinearConvs) through a generic
   per-element loop: on 2 threads of an AMX Xeon, [1, 64, 20, 20] -> [1, 64, 40, 40] takes 104 us,
   against 11 us channels-first and 14 us for the repeat written here. The outer
   Transposes cancel against the ones ORT's layout optimizer puts around its channels-last kernels
   (as in space-to-depth-stem), so the repeat costs one Expand. The values are the Resize's own
   (tests/test_upsample_on_uint8.py compares with ORT's Resize for every mode accepted).

3. writes a uint8 DepthToSpace (transposed-conv-as-conv's upsampling, a pixel shuffle) in
   channels-last memory too: `Transpose -> Reshape -> Transpose -> Reshape -> Transpose`. ORT's
   DepthToSpace moves single bytes through a 6-D transpose whose last axis is the block's width;
   channels-last, each move is a run of C bytes, and the outer Transposes cancel as above. On
   PP-OCRv5's detector head ([1, 96, 160, 160] -> [1, 24, 320, 320]) ORT's took 2.1 ms of a 24 ms run.

Runs after place-for-onnxruntime (it needs the uint8 parameters) and move-on-uint8 (which moves a
DepthToSpace's DequantizeLinear behind it), for `target: onnxruntime`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.passes.qdq import QdqBuilder, dims_through_qdq, integer_qparams, readers, same_grid
from tao_qc.pipeline import PassContext, PassResult, constant_array

TO_CHANNELS_LAST, TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]
# (coordinate_transformation_mode, nearest_mode) pairs under which a nearest Resize by a whole factor
# s reads input pixel x // s for output pixel x. Half-pixel coordinates, (x + 0.5) / s - 0.5, lie
# strictly within half a pixel of x // s, so any rounding (not floor or ceil) lands there.
REPEATING_MODES = {
    ("asymmetric", "floor"),
    ("half_pixel", "round_prefer_floor"), ("half_pixel", "round_prefer_ceil"),
    ("pytorch_half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil"),
}


@dataclass
class UpsampleOnUint8:
    name: str = "upsample-on-uint8"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        build = QdqBuilder(graph, self.name)
        notes: list[str] = []
        quantized = _quantize_resized_outputs(graph, build, notes)
        repeats = 0
        for resize in [n for n in graph if n.op_type == "Resize"]:
            plan = _repeat_plan(resize)
            if plan is not None:
                _write_as_repeat(graph, build, resize, *plan)
                notes.append(f"{resize.name}: nearest upsampling by {plan[1]}x{plan[2]} runs on uint8 as a repeat "
                             "in channels-last memory (Unsqueeze, Expand, Reshape), the same values")
                repeats += 1
        shuffles = 0
        for shuffle in [n for n in graph if n.op_type == "DepthToSpace"]:
            order = _uint8_depth_to_space(shuffle)
            if order is not None:
                _write_channels_last(graph, build, shuffle, order)
                notes.append(f"{shuffle.name}: DepthToSpace runs on uint8 in channels-last memory (Reshape, Transpose, "
                             "Reshape), the same values")
                shuffles += 1
        if repeats or shuffles:
            RemoveUnusedNodesPass()(model)
        return PassResult(model, changed=bool(quantized or repeats or shuffles),
                          stats={"resized_outputs_quantized": quantized, "resizes_as_repeat": repeats,
                                 "depth_to_space_channels_last": shuffles}, notes=notes)


def nearest_resize(resize: ir.Node) -> bool:
    """A nearest Resize with opset-11+ inputs (X, roi, scales[, sizes]) and no `axes` subset."""
    mode = resize.attributes.get("mode")
    return (mode is not None and mode.as_string() == "nearest" and len(resize.inputs) >= 3
            and resize.attributes.get("axes") is None)


def _quantize_resized_outputs(graph: ir.Graph, build: QdqBuilder, notes: list[str]) -> int:
    """1. of the module docstring; returns how many Resize outputs got a Q/DQ pair."""
    count = 0
    for resize in [n for n in graph if n.op_type == "Resize" and nearest_resize(n)]:
        out = resize.outputs[0]
        users = readers(out)
        if out.is_graph_output() or not users or all(r.op_type == "QuantizeLinear" for r in users):
            continue
        dq = resize.inputs[0].producer() if resize.inputs[0] is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        params = integer_qparams(dq)
        if params is None or params[0].size != 1:
            continue
        build.quantize_output(resize, *dq.inputs[1:3], resize.name)
        notes.append(f"{resize.name}: quantized with its input's parameters (nearest resizing keeps the grid); "
                     f"{', '.join(r.name for r in users)} read(s) it quantized")
        count += 1
    return count


def _factors(resize: ir.Node, dims: tuple) -> tuple[int, int] | None:
    """The whole factors (height, width) a Resize of [N, C, H, W] upsamples by, from its constant
    scales or sizes; None for anything else (channel or batch scaling, fractions, no upsampling)."""
    scales = constant_array(resize.inputs[2]) if resize.inputs[2] is not None else None
    if scales is not None and scales.size == 4:
        if list(scales[:2]) != [1.0, 1.0] or any(s != int(s) or s < 1 for s in scales[2:]):
            return None
        factors = int(scales[2]), int(scales[3])
    else:
        sizes = constant_array(resize.inputs[3]) if len(resize.inputs) > 3 and resize.inputs[3] is not None else None
        policy = resize.attributes.get("keep_aspect_ratio_policy")
        if sizes is None or sizes.size != 4 or (policy is not None and policy.as_string() != "stretch"):
            return None
        if not all(isinstance(d, int) for d in dims[1:]):
            return None  # sizes against a dynamic height or width: a factor per input size
        if (dims[0] is not None and sizes[0] != dims[0]) or sizes[1] != dims[1] or sizes[2] % dims[2] or sizes[3] % dims[3]:
            return None
        factors = int(sizes[2] // dims[2]), int(sizes[3] // dims[3])
    return factors if factors != (1, 1) else None


def _repeat_plan(resize: ir.Node) -> tuple[ir.Node, int, int, list[ir.Node]] | None:
    """(the DequantizeLinear it reads, height factor, width factor, the QuantizeLinear
    nodes that alone read its output) for a uint8 nearest Resize 2. of the module docstring covers."""
    if not nearest_resize(resize) or resize.inputs[0] is None:
        return None
    coordinates = resize.attributes.get("coordinate_transformation_mode")
    rounding = resize.attributes.get("nearest_mode")
    modes = (coordinates.as_string() if coordinates is not None else "half_pixel",
             rounding.as_string() if rounding is not None else "round_prefer_floor")
    if modes not in REPEATING_MODES:
        return None
    dq = resize.inputs[0].producer()
    params = integer_qparams(dq) if dq is not None and dq.op_type == "DequantizeLinear" else None
    if params is None or params[1].dtype != np.uint8:
        return None
    dims = dims_through_qdq(resize.inputs[0])
    if dims is None or len(dims) != 4:
        return None
    factors = _factors(resize, dims)
    if factors is None:
        return None
    out = resize.outputs[0]
    quantizers = readers(out)
    if out.is_graph_output() or not quantizers or any(q.op_type != "QuantizeLinear" for q in quantizers):
        return None
    if any(q.outputs[0].is_graph_output() for q in quantizers):
        return None
    if not all(same_grid(integer_qparams(q), params) for q in quantizers):
        return None
    return dq, factors[0], factors[1], quantizers


def _write_as_repeat(graph: ir.Graph, build: QdqBuilder, resize: ir.Node, dq: ir.Node, fh: int, fw: int,
                     quantizers: list[ir.Node]) -> None:
    """[N, C, H, W] uint8 -> [N, C, fh*H, fw*W], each pixel repeated, written channels-last:
    [N, H, W, C] -> Unsqueeze -> [N, H, 1, W, 1, C] -> Expand -> [N, H, fh, W, fw, C] -> Reshape to
    the input's shape times (1, fh, fw, 1), computed from it, so any of N, H, W may be dynamic."""
    node, constant = _named_builders(build, resize.name)
    last = node("Transpose", [dq.inputs[0]], "channels_last", TO_CHANNELS_LAST)
    spread = node("Unsqueeze", [last.outputs[0], constant("spread_axes", [2, 4])], "spread")
    repeat = node("Expand", [spread.outputs[0], constant("repeats", [1, 1, fh, 1, fw, 1])], "repeat")
    size = node("Shape", [last.outputs[0]], "size")
    scaled = node("Mul", [size.outputs[0], constant("factors", [1, fh, fw, 1])], "scaled_size")
    merged = node("Reshape", [repeat.outputs[0], scaled.outputs[0]], "merged")
    first = node("Transpose", [merged.outputs[0]], "channels_first", TO_CHANNELS_FIRST)
    graph.insert_after(resize, [last, spread, repeat, size, scaled, merged, first])
    for quantizer in quantizers:
        quantizer.outputs[0].replace_all_uses_with(first.outputs[0])


def _uint8_depth_to_space(shuffle: ir.Node) -> str | None:
    """The mode (DCR or CRD) of a DepthToSpace of a uint8 [N, C, H, W] tensor (move-on-uint8 moved
    its DequantizeLinear behind it), or None."""
    source = shuffle.inputs[0] if shuffle.inputs else None
    if shuffle.domain not in ("", "ai.onnx") or source is None:
        return None
    producer = source.producer()
    params = integer_qparams(producer) if producer is not None and producer.op_type == "QuantizeLinear" else None
    if source.dtype != ir.DataType.UINT8 and (params is None or params[1].dtype != np.uint8):
        return None
    if source.shape is not None and len(source.shape) != 4:
        return None
    mode = shuffle.attributes.get_string("mode", "DCR")
    return mode if mode in ("DCR", "CRD") else None


def _write_channels_last(graph: ir.Graph, build: QdqBuilder, shuffle: ir.Node, mode: str) -> None:
    """3. of the module docstring: [N, k*k*C, H, W] -> [N, C, k*H, k*W] as [N, H, W, k*k*C] ->
    Reshape [N, H, W, k, k, C] (DCR; CRD: [N, H, W, C, k, k]) -> Transpose [N, H, k, W, k, C] ->
    Reshape to the channels-last input's shape times (1, k, k, 1/k^2), so heights and widths may
    be dynamic. ORT's own DepthToSpace moves single bytes where this moves C-byte runs."""
    block = shuffle.attributes.get_int("blocksize")
    node, constant = _named_builders(build, shuffle.name)
    last = node("Transpose", [shuffle.inputs[0]], "channels_last", TO_CHANNELS_LAST)
    if mode == "DCR":  # channel (i*k + j)*C + c
        split = node("Reshape", [last.outputs[0], constant("blocks", [0, 0, 0, block, block, -1])], "blocks")
        interleave = [0, 1, 3, 2, 4, 5]
    else:  # CRD: channel c*k*k + i*k + j
        split = node("Reshape", [last.outputs[0], constant("blocks", [0, 0, 0, -1, block, block])], "blocks")
        interleave = [0, 1, 4, 2, 5, 3]
    moved = node("Transpose", [split.outputs[0]], "interleave", interleave)
    size = node("Shape", [last.outputs[0]], "size")
    grown = node("Mul", [size.outputs[0], constant("growth", [1, block, block, 1])], "grown_size")
    target = node("Div", [grown.outputs[0], constant("depth", [1, 1, 1, block * block])], "target_size")
    merged = node("Reshape", [moved.outputs[0], target.outputs[0]], "merged")
    first = node("Transpose", [merged.outputs[0]], "channels_first", TO_CHANNELS_FIRST)
    graph.insert_after(shuffle, [last, split, moved, size, grown, target, merged, first])
    if shuffle.outputs[0].dtype is not None:
        first.outputs[0].dtype = shuffle.outputs[0].dtype
    shuffle.outputs[0].replace_all_uses_with(first.outputs[0])


def _named_builders(build: QdqBuilder, base: str):
    """node(op, inputs, suffix[, perm]) and constant(suffix, int64 values), named after `base`."""
    def node(op: str, inputs: list[ir.Value], suffix: str, perm: list[int] | None = None) -> ir.Node:
        made = build.node(op, inputs, f"{base}_{suffix}")
        if perm is not None:
            made.attributes["perm"] = ir.AttrInt64s("perm", perm)
        return made

    def constant(suffix: str, values: list[int]) -> ir.Value:
        return build.initializer(f"{base}_{suffix}", np.array(values, np.int64))

    return node, constant
