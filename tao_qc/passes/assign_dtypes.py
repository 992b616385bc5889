"""Give every quantized node Q/DQ of its own dtype, from the one calibration: int8, FP8 and float in one graph.

quantize-modelopt calibrates once, in int8, every tensor a quantized node reads, whatever dtype the
node asked for (modelopt's own FP8 mode is that same int8 max calibration, rescaled afterwards). The
range of each tensor is amax = int8 scale x 127; from it this pass gives each node its own dtype:

- `int8`: modelopt's Q/DQ as they are (scale amax/127, symmetric, per-channel weights);
- `fp8_e4m3fn` / `fp8_e5m2`: standard ONNX QuantizeLinear/DequantizeLinear (opset 19+) with a
  float8e4m3fn / float8e5m2 zero point of 0 and scale amax/448 / amax/57344, weights per channel on
  the axis modelopt chose. TensorRT builds these strongly typed; ONNX Runtime's CPU provider
  simulates them, so the comparison runs on CPU;
- `native` from a `layers` entry: the node reads float inputs, the Q/DQ only it needed go: the same
  surgery as a node accuracy fallback keeps in float (keep-float's `run_in_float`).

A Q/DQ pair takes the dtype of the quantized compute nodes that read it (directly, or through ops
that are neither compute nor a new Q, such as a residual Add). Where one tensor feeds nodes of
different dtypes, the pair keeps the dtype it has for the nodes that want it, and every other dtype
gets a pair of its own on the same float tensor, with the same range. A pair on an FP8 node's output
(modelopt measures quantized ops' outputs for `target: onnxruntime`) that no quantized compute node
reads goes: no integer unit forms around an FP8 node, and the rounding would only add error; where
it is a graph output, and so stays, it takes the dtype of the node producing it.

One of the finishing passes (accuracy fallback repeats them): a pure function of the graph and
`ctx.facts` (decisions, declined, ranges). Sets `ctx.facts["quantize_mode"]` to what the graph now
holds (`int8`, `fp8` or `mixed`) and records every converted or added range in `ctx.facts["ranges"]`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.errors import TaoQcError
from tao_qc.passes.keep_float import COMPUTE_OPS, drop_unneeded_pairs, run_in_float
from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created

# spec dtype -> (ONNX element type of the quantized tensor, its largest finite magnitude)
QDQ_TYPES = {
    "int8": (ir.DataType.INT8, 127.0),
    "fp8_e4m3fn": (ir.DataType.FLOAT8E4M3FN, 448.0),
    "fp8_e5m2": (ir.DataType.FLOAT8E5M2, 57344.0),
}
_SPEC_DTYPE = {onnx_type: name for name, (onnx_type, _) in QDQ_TYPES.items()}
# ONNX's QuantizeLinear takes float8 types from opset 19.
FP8_MIN_OPSET = 19


def quantize_mode_of(dtypes: set[str]) -> str:
    """`int8`, `fp8` or `mixed`: what a graph whose quantized nodes have `dtypes` holds."""
    if not dtypes or dtypes == {"int8"}:
        return "int8"
    return "fp8" if all(d.startswith("fp8") for d in dtypes) else "mixed"


def native_by_entry(decision) -> bool:
    """Kept float because a `layers` entry says `native` (not skip_names, not unselected, not fallback)."""
    return not decision.quantized and decision.skipped_by is None and decision.weights_rule.startswith("layers[")


@dataclass
class AssignDtypes:
    name: str = "assign-dtypes"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        decisions = ctx.facts.get("decisions") or []
        declined = ctx.facts.get("declined") or {}
        graph = model.graph
        nodes = {node.name: node for node in graph}
        wanted = {d.unit.name: d for d in decisions if d.quantized and d.unit.name not in declined and d.unit.name in nodes}
        native = [nodes[d.unit.name] for d in decisions if native_by_entry(d) and d.unit.name in nodes]
        stats: dict[str, int] = {}
        notes: list[str] = []

        if native:
            counts = run_in_float(model, native, set(wanted))
            stats["native_inputs_rewired"] = counts["inputs_rewired"]
            stats["native_pairs_bypassed"] = counts["pairs_bypassed"]
        fp8 = {name for name, d in wanted.items() if d.activations.startswith("fp8")}
        if fp8:
            stats["fp8_output_pairs_bypassed"] = drop_unneeded_pairs(graph, fp8, set(wanted))
            RemoveUnusedNodesPass()(model)

        builder = _Builder(graph, self.name)
        ranges = ctx.facts.setdefault("ranges", {})
        converted = added = 0
        conflicts: dict[str, str] = {}
        for dq in [node for node in graph if node.op_type == "DequantizeLinear"]:
            pair = _pair_of(dq)
            if pair is None:
                continue
            q = pair[0]
            current = _SPEC_DTYPE.get(_zero_type(q))
            if current is None:
                continue
            groups: dict[str, list[tuple[ir.Node, int]]] = {}
            unplaced: list[tuple[ir.Node, int, dict[str, str]]] = []
            for use in _uses_in_graph_order(dq.outputs[0], graph):
                reached = _dtypes_reached(use.node, use.idx, wanted)
                dtypes = list(dict.fromkeys(reached.values()))
                if len(dtypes) == 1:
                    groups.setdefault(dtypes[0], []).append((use.node, use.idx))
                else:
                    unplaced.append((use.node, use.idx, reached))
            if not groups and not any(reached for *_, reached in unplaced):
                # Read by no quantized node (a graph output): the output grid of the node producing it.
                producer = wanted.get(q.inputs[0].producer().name) if q.inputs[0].producer() is not None else None
                if producer is None or producer.activations == current:
                    continue
                groups[producer.activations] = []
            keep = current if current in groups else next(iter(groups), None)
            for reader, _, reached in unplaced:
                # A reader that leads on to several dtypes (a Concat feeding an int8 and an FP8 node)
                # can sit on one pair only: it stays on the kept one, and the nodes it cannot serve
                # are reported, never silently given another dtype.
                keep = keep or next(iter(reached.values()), current)
                for name, dtype in reached.items():
                    if dtype != keep:
                        conflicts[name] = (f"asked for {dtype}, but reads {q.inputs[0].name} through {reader.name}, "
                                           f"which also leads to nodes of other dtypes: it gets {keep}")
            source = q.inputs[0]
            for dtype, readers in groups.items():
                if dtype == keep:
                    continue
                copy_q, copy_dq = builder.pair(q, dq, current, dtype)
                for reader, index in readers:
                    reader.replace_input_with(index, copy_dq.outputs[0])
                added += 1
                ranges[f"{source.name} ({QDQ_TYPES[dtype][0].name.lower()}, {self.name})"] = _range_entry(
                    copy_q, dtype, f"{current} range of {source.name}, requantized as {dtype} for {_names(readers)}")
                notes.append(f"{source.name}: own {dtype} Q/DQ for {_names(readers)} (also read as {keep})")
            if keep != current:
                builder.convert(q, dq, current, keep)
                converted += 1
                if source.name in ranges:
                    ranges[source.name] = {**ranges[source.name], **_range_entry(q, keep, None)}
                notes.append(f"{source.name}: {current} -> {keep} Q/DQ for {_names(groups.get(keep, [])) or 'the graph output'}")

        for name, why in conflicts.items():
            notes.append(f"warning: {name}: {why}")
        ctx.facts["dtype_conflicts"] = conflicts
        if builder.fp8_made:
            opset = model.opset_imports.get("", 0)
            if opset < FP8_MIN_OPSET:
                raise TaoQcError(f"assign-dtypes: FP8 Q/DQ need opset {FP8_MIN_OPSET}+, the calibrated graph has opset {opset}")
        node_dtypes = Counter(d.activations for d in wanted.values())
        ctx.facts["quantize_mode"] = quantize_mode_of(set(node_dtypes))
        stats.update(pairs_converted=converted, pairs_added=added)
        stats.update({f"nodes_{dtype}": count for dtype, count in sorted(node_dtypes.items())})
        if native:
            stats["nodes_native_by_entry"] = len(native)
        changed = bool(converted or added or stats.get("native_inputs_rewired") or stats.get("native_pairs_bypassed")
                       or stats.get("fp8_output_pairs_bypassed"))
        return PassResult(model, changed=changed, stats=stats, notes=notes)


def _pair_of(dq: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    if q is None or q.op_type != "QuantizeLinear" or len(q.inputs) < 3 or q.inputs[2] is None:
        return None
    return q, dq


def _zero_type(q: ir.Node) -> ir.DataType | None:
    zero = q.inputs[2]
    if zero.const_value is not None:
        return zero.const_value.dtype
    return zero.dtype


def _uses_in_graph_order(value: ir.Value, graph: ir.Graph) -> list:
    order = {id(node): index for index, node in enumerate(graph)}
    return sorted(value.uses(), key=lambda use: (order.get(id(use.node), -1), use.idx))


def _dtypes_reached(node: ir.Node, index: int, wanted: dict) -> dict[str, str]:
    """{compute node: the dtype it wants on the input this value reaches it by}, for the quantized
    compute nodes a value read by `node` (as input `index`) reaches before another Q."""
    found: dict[str, str] = {}
    seen: set[int] = set()
    stack = [(node, index)]
    while stack:
        current, slot = stack.pop()
        if current.op_type in COMPUTE_OPS:
            decision = wanted.get(current.name)
            if decision is not None and slot in (0, 1):
                found[current.name] = decision.activations if slot == 0 else decision.weights
            continue
        if current.op_type == "QuantizeLinear" or id(current) in seen:
            continue
        seen.add(id(current))
        for output in current.outputs:
            stack.extend((use.node, use.idx) for use in output.uses())
    return found


def _names(readers: list[tuple[ir.Node, int]], limit: int = 3) -> str:
    names = list(dict.fromkeys(reader.name for reader, _ in readers))
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _range_entry(q: ir.Node, dtype: str, source: str | None) -> dict:
    scale = np.asarray(constant_array(q.inputs[1]), dtype=np.float64).reshape(-1)
    axis = q.attributes.get("axis")
    entry = {"scale": scale.tolist(), "zero_point": [0.0] * len(scale), "dtype": QDQ_TYPES[dtype][0].name.lower(),
             "amax": (scale * QDQ_TYPES[dtype][1]).tolist(), "axis": axis.as_int() if axis is not None else None,
             "quantize_node": q.name}
    if source is not None:
        entry["source"] = source
    return entry


class _Builder:
    """Scales, zero points and Q/DQ nodes of another dtype for a calibrated pair, marked as this pass's."""

    def __init__(self, graph: ir.Graph, pass_name: str):
        self.graph, self.pass_name = graph, pass_name
        self.fp8_made = False

    def convert(self, q: ir.Node, dq: ir.Node, old: str, new: str) -> None:
        """The pair itself becomes `new` (nothing reads it as `old` any more)."""
        scale, zero = self._parameters(q, old, new)
        for node in (q, dq):
            node.replace_input_with(1, scale)
            node.replace_input_with(2, zero)
        self._retype(q, new)

    def pair(self, q: ir.Node, dq: ir.Node, old: str, new: str) -> tuple[ir.Node, ir.Node]:
        """A copy of the pair in `new`, on the same float tensor, placed right after it."""
        scale, zero = self._parameters(q, old, new)
        base = f"{q.inputs[0].name}_{new}"
        copy_q = self._node("QuantizeLinear", [q.inputs[0], scale, zero], f"{base}_QuantizeLinear", q)
        copy_dq = self._node("DequantizeLinear", [copy_q.outputs[0], scale, zero], f"{base}_DequantizeLinear", dq)
        copy_dq.outputs[0].type, copy_dq.outputs[0].shape = dq.outputs[0].type, dq.outputs[0].shape
        copy_q.outputs[0].shape = q.outputs[0].shape
        self._retype(copy_q, new)
        self.graph.insert_after(dq, [copy_q, copy_dq])
        return copy_q, copy_dq

    def _parameters(self, q: ir.Node, old: str, new: str) -> tuple[ir.Value, ir.Value]:
        old_scale = constant_array(q.inputs[1])
        old_zero = constant_array(q.inputs[2])
        if old_scale is None or old_zero is None:
            raise TaoQcError(f"assign-dtypes: {q.name} has a computed scale or zero point; only constant ones can be rescaled")
        if np.any(np.asarray(old_zero, dtype=np.float64) != 0):
            raise TaoQcError(f"assign-dtypes: {q.name} has a non-zero zero point; its range is not symmetric")
        # The same range, on the new type's grid: amax = scale x largest value.
        amax = np.asarray(old_scale, dtype=np.float64) * QDQ_TYPES[old][1]
        scale = (amax / QDQ_TYPES[new][1]).astype(old_scale.dtype)
        onnx_type = QDQ_TYPES[new][0]
        zero = np.zeros(np.shape(old_zero), dtype=onnx_type.numpy())
        base = f"{q.inputs[0].name}_{new}"
        self.fp8_made |= new.startswith("fp8")
        return self._initializer(f"{base}_scale", scale), self._initializer(f"{base}_zero_point", zero)

    def _retype(self, q: ir.Node, dtype: str) -> None:
        onnx_type = QDQ_TYPES[dtype][0]
        q.outputs[0].dtype = onnx_type
        if "output_dtype" in q.attributes:  # opset 21's explicit form must agree with the zero point
            q.attributes["output_dtype"] = ir.AttrInt64("output_dtype", int(onnx_type))

    def _initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name, count = base, 0
        while name in self.graph.initializers:
            count += 1
            name = f"{base}_{count}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def _node(self, op: str, inputs: list[ir.Value], name: str, like: ir.Node) -> ir.Node:
        taken = {node.name for node in self.graph}
        unique, count = name, 0
        while unique in taken:
            count += 1
            unique = f"{name}_{count}"
        attributes = [ir.Attr(attr.name, attr.type, attr.value) for attr in like.attributes.values()]
        node = ir.Node("", op, inputs, attributes=attributes, name=unique, num_outputs=1)
        node.outputs[0].name = f"{unique}_output"
        return mark_created(node, self.pass_name)
