"""The canonical text form of an ONNX graph (MLIR printer / FileCheck style) and diffs between two.

The pipeline prints the graph after every pass and diffs consecutive prints; golden tests compare
them. So the text is a function of the graph alone, never of how it happens to be stored:

- Nodes are printed in a topological order found depth-first from the graph outputs, operands left
  to right. Two node lists that differ only in order (a pass that re-sorts, a re-export) print the
  same text; a node list's own order breaks ties only among nodes no graph output depends on.
- Values a node defines are renamed `%0`, `%1`, ... in the order they are printed; graph inputs and
  outputs keep their names (`%input`, `%"0"` when a name is not a plain identifier).
- Initializers are printed inline where they are used, as `dtype[shape]`; those of at most
  `SMALL_TENSOR` elements (scalars, Q/DQ scales and zero points) with their values. Large values are
  never printed; `digests=True` adds a short content checksum so weight rewrites show in a diff.
- Attributes are sorted by name; floats use `%.6g` (small initializers' values too, unless asked
  for fewer digits). Each node line ends with its result type and, after `#`, the node name and
  the pass that created it (`tao_qc.pass` metadata).

    %7 = QuantizeLinear(%6, 0.0235 f32[], 0 i8[]) {axis=1} : i8[1,64,56,56]  # /layer1/Relu_q

Result types come from the model's value_info, completed by ONNX shape inference on a copy without
the large initializer data (so it stays cheap on a ResNet-size graph).
"""

from __future__ import annotations

import difflib
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import onnx
from onnx import AttributeProto, TensorProto

if TYPE_CHECKING:
    import onnx_ir

PROVENANCE_KEY = "tao_qc.pass"
# Initializers with at most this many elements are printed with their values, to this many
# significant digits by default.
SMALL_TENSOR = 4
VALUE_DIGITS = 6
FORMAT_VERSION = 1

_DTYPE_SHORT = {
    TensorProto.FLOAT: "f32",
    TensorProto.FLOAT16: "f16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "f64",
    TensorProto.INT8: "i8",
    TensorProto.UINT8: "u8",
    TensorProto.INT16: "i16",
    TensorProto.UINT16: "u16",
    TensorProto.INT32: "i32",
    TensorProto.UINT32: "u32",
    TensorProto.INT64: "i64",
    TensorProto.UINT64: "u64",
    TensorProto.BOOL: "bool",
    TensorProto.STRING: "str",
    TensorProto.COMPLEX64: "c64",
    TensorProto.COMPLEX128: "c128",
}
for _name, _short in (
    ("FLOAT8E4M3FN", "f8e4m3fn"),
    ("FLOAT8E4M3FNUZ", "f8e4m3fnuz"),
    ("FLOAT8E5M2", "f8e5m2"),
    ("FLOAT8E5M2FNUZ", "f8e5m2fnuz"),
    ("FLOAT8E8M0", "f8e8m0"),
    ("INT4", "i4"),
    ("UINT4", "u4"),
    ("INT2", "i2"),
    ("UINT2", "u2"),
    ("FLOAT4E2M1", "f4e2m1"),
):
    if hasattr(TensorProto, _name):
        _DTYPE_SHORT[getattr(TensorProto, _name)] = _short

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_OPS_FOOTER = re.compile(r"^# ops \((\d+) nodes\):(.*)$", re.MULTILINE)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def dtype_name(data_type: int) -> str:
    """Short name of an ONNX element type (`f32`, `i8`, `f8e4m3fn`)."""
    if data_type in _DTYPE_SHORT:
        return _DTYPE_SHORT[data_type]
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"dtype{data_type}"


def op_key(node: onnx.NodeProto) -> str:
    """The name an op is counted under: `Conv`, or `com.microsoft::QLinearConv` outside ai.onnx."""
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _as_proto(model: onnx.ModelProto | onnx_ir.Model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    raise TypeError(f"expected onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")


def op_counts(model: onnx.ModelProto | onnx_ir.Model) -> dict[str, int]:
    """Nodes of the main graph per op type, sorted by op name (subgraph nodes are not counted)."""
    if isinstance(model, onnx.ModelProto):
        counts = Counter(op_key(node) for node in model.graph.node)
    else:
        counts = Counter(
            node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            for node in model.graph
        )
    return dict(sorted(counts.items()))


def op_delta(before_counts: Mapping[str, int], after_counts: Mapping[str, int]) -> str:
    """One line: `# ops: +QuantizeLinear 21, -BatchNormalization 20 (nodes 120 -> 141)`."""
    changes = []
    for op in sorted(set(before_counts) | set(after_counts)):
        change = after_counts.get(op, 0) - before_counts.get(op, 0)
        if change:
            changes.append((0 if change > 0 else 1, op, change))
    before_total, after_total = sum(before_counts.values()), sum(after_counts.values())
    if not changes:
        return f"# ops: no change (nodes {before_total})"
    parts = [f"{'+' if change > 0 else '-'}{op} {abs(change)}" for _, op, change in sorted(changes)]
    return f"# ops: {', '.join(parts)} (nodes {before_total} -> {after_total})"


def counts_from_text(text: str) -> dict[str, int]:
    """The op counts recorded in the footer of a `format_model` text."""
    match = _OPS_FOOTER.search(text)
    if not match:
        raise ValueError("not a tao-qc canonical text: no '# ops (N nodes):' footer")
    counts = {}
    for item in match.group(2).split(","):
        item = item.strip()
        if item:
            op, _, number = item.rpartition(" ")
            counts[op] = int(number)
    return counts


def diff_text(before: str, after: str, *, before_name: str, after_name: str) -> str:
    """Unified diff of two canonical texts, headed by the op-count delta line."""
    header = op_delta(counts_from_text(before), counts_from_text(after))
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), fromfile=before_name, tofile=after_name, lineterm=""
    )
    return "\n".join([header, *lines]) + "\n"


def format_model(model: onnx.ModelProto | onnx_ir.Model, *, digests: bool = False, infer_types: bool = True,
                 value_digits: int = VALUE_DIGITS) -> str:
    """The canonical text of `model` (see the module docstring).

    value_digits: significant digits of the values printed for small initializers (Q/DQ scales).
    Golden files use 3: a scale's fourth digit moves with calibration library releases, and the
    numbers behind scales are checked as invariants instead.
    """
    proto = _as_proto(model)
    graph = proto.graph
    types = value_types(proto, infer_types)
    printer = _Printer(types, digests, value_digits)
    lines = [f"# tao-qc text v{FORMAT_VERSION}", f"graph {_quote(graph.name or 'main')}"]
    init_names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    shadowed = 0
    for value in graph.input:
        if value.name in init_names:
            shadowed += 1  # old IR lists every initializer as an input too; they print inline
            continue
        lines.append(f"  in  {_named(value.name)}: {_type_text(value.type)}")
    for value in graph.output:
        lines.append(f"  out {_named(value.name)}: {_type_text(value.type)}")
    count, elements = len(graph.initializer), sum(_numel(t.dims) for t in graph.initializer)
    lines.append(f"  initializers: {count} ({elements} elements)")
    if shadowed:
        lines.append(f"  initializers also listed as graph inputs: {shadowed}")
    printer.graph_body(graph, {}, "", lines)
    lines.append("# opsets: " + ", ".join(f"{d or 'ai.onnx'} {o.version}" for d, o in _sorted_opsets(proto)))
    counts = op_counts(proto)
    lines.append(f"# ops ({sum(counts.values())} nodes): " + ", ".join(f"{op} {n}" for op, n in counts.items()))
    return "\n".join(lines) + "\n"


def _sorted_opsets(proto: onnx.ModelProto) -> list[tuple[str, Any]]:
    return sorted(((o.domain if o.domain != "ai.onnx" else "", o) for o in proto.opset_import), key=lambda x: x[0])


# ---------------------------------------------------------------------------------------------------


def _numel(dims: Iterable[int]) -> int:
    total = 1
    for dim in dims:
        total *= dim
    return total


def _quote(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else json.dumps(name)


def _named(name: str) -> str:
    return "%" + _quote(name)


def _float(value: float, digits: int = VALUE_DIGITS) -> str:
    return "%.*g" % (digits, value)


def _shape_text(type_proto: onnx.TypeProto) -> str:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return "[*]"
    dims = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(str(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append("?")
    return "[" + ",".join(dims) + "]"


def _type_text(type_proto: onnx.TypeProto | None) -> str:
    if type_proto is None:
        return "?"
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        elem = type_proto.tensor_type.elem_type
        return (dtype_name(elem) if elem else "?") + _shape_text(type_proto)
    if kind == "sequence_type":
        return f"seq<{_type_text(type_proto.sequence_type.elem_type)}>"
    if kind == "optional_type":
        return f"opt<{_type_text(type_proto.optional_type.elem_type)}>"
    if kind == "sparse_tensor_type":
        sparse = type_proto.sparse_tensor_type
        return f"sparse<{dtype_name(sparse.elem_type)}>"
    if kind == "map_type":
        return f"map<{dtype_name(type_proto.map_type.key_type)},{_type_text(type_proto.map_type.value_type)}>"
    return "?"


def _tensor_text(tensor: TensorProto, digests: bool, digits: int = VALUE_DIGITS) -> str:
    kind = dtype_name(tensor.data_type) + "[" + ",".join(str(d) for d in tensor.dims) + "]"
    external = tensor.data_location == TensorProto.EXTERNAL
    numel = _numel(tensor.dims)
    if numel <= SMALL_TENSOR and not external:
        values = _small_values(tensor, digits)
        if values is not None:
            return f"{values} {kind}"
    if external:
        return f"{kind} external"
    if digests:
        return f"{kind} crc:{_digest(tensor)}"
    return kind


def _small_values(tensor: TensorProto, digits: int = VALUE_DIGITS) -> str | None:
    from onnx import numpy_helper

    try:
        array = numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - a type numpy cannot hold: print the type only
        return None
    items = []
    for item in array.reshape(-1).tolist():
        if isinstance(item, bool):
            items.append("true" if item else "false")
        elif isinstance(item, int):
            items.append(str(item))
        elif isinstance(item, float):
            items.append(_float(item, digits))
        elif isinstance(item, bytes):
            items.append(json.dumps(item.decode("utf-8", "replace")))
        else:
            try:
                items.append(_float(float(item), digits))
            except (TypeError, ValueError):
                items.append(json.dumps(str(item)))
    if array.ndim == 0:
        return items[0]
    return "[" + ", ".join(items) + "]"


def _digest(tensor: TensorProto) -> str:
    # crc32 is enough to tell "these weights changed" in a diff, and fast on 45 MB of ResNet weights.
    if tensor.HasField("raw_data"):
        data = tensor.raw_data
    else:
        from onnx import numpy_helper

        data = numpy_helper.to_array(tensor).tobytes()
    return "%08x" % zlib.crc32(data)


def value_types(proto: onnx.ModelProto, infer: bool = True) -> dict[str, onnx.TypeProto]:
    """Type of every value name in the main graph and subgraphs (recorded, then inferred)."""
    types: dict[str, onnx.TypeProto] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.WhichOneof("value"):
                types.setdefault(value.name, value.type)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        collect(sub)

    collect(proto.graph)
    if infer:
        incomplete = any(
            name and not _is_complete(types.get(name)) for node in proto.graph.node for name in node.output
        )
        if incomplete:
            inferred = _infer_without_weights(proto)
            if inferred is not None:
                for value in (*inferred.graph.value_info, *inferred.graph.output):
                    if _is_complete(value.type) or value.name not in types:
                        if value.type.WhichOneof("value"):
                            types[value.name] = value.type
    return types


def _is_complete(type_proto: onnx.TypeProto | None) -> bool:
    if type_proto is None:
        return False
    if type_proto.WhichOneof("value") != "tensor_type":
        return True
    return bool(type_proto.tensor_type.elem_type) and type_proto.tensor_type.HasField("shape")


def _infer_without_weights(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """Shape inference on a copy whose large initializers are typed inputs without data.

    Inference only needs the values of small tensors (Reshape targets, Slice bounds); copying and
    serializing megabytes of weights after every pass would dominate the dump time.
    """
    from onnx import helper, shape_inference

    graph = proto.graph
    small, stand_ins = [], []
    for tensor in graph.initializer:
        if _numel(tensor.dims) <= 64 and tensor.data_location != TensorProto.EXTERNAL:
            small.append(tensor)
        else:
            stand_ins.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    init_names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in init_names] + stand_ins
    # ONNX inference walks nodes in list order, so give it a topological one.
    nodes = [graph.node[i] for i in _canonical_order(graph)]
    light = helper.make_graph(nodes, graph.name or "main", inputs, graph.output, small, value_info=graph.value_info)
    model = helper.make_model(light, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001 - types are a courtesy; an uninferable graph prints '?'
        return None


class _Printer:
    def __init__(self, types: dict[str, onnx.TypeProto], digests: bool, digits: int = VALUE_DIGITS):
        self.types = types
        self.digests = digests
        self.digits = digits
        self.counter = 0

    def graph_body(self, graph: onnx.GraphProto, outer: Mapping[str, str], indent: str, lines: list[str]) -> None:
        names: dict[str, str] = dict(outer)
        for value in graph.input:
            names[value.name] = _named(value.name)
        for tensor in graph.initializer:
            names[tensor.name] = _tensor_text(tensor, self.digests, self.digits)
        for sparse in graph.sparse_initializer:
            dims = ",".join(str(d) for d in sparse.dims)
            names[sparse.values.name] = f"sparse {dtype_name(sparse.values.data_type)}[{dims}]"
        output_names = {value.name for value in graph.output}
        for index in _canonical_order(graph):
            self.node(graph.node[index], names, output_names, indent, lines)
        returned = ", ".join(names.get(v.name, _named(v.name)) for v in graph.output)
        lines.append(f"{indent}return {returned}")

    def node(
        self,
        node: onnx.NodeProto,
        names: dict[str, str],
        output_names: set[str],
        indent: str,
        lines: list[str],
    ) -> None:
        operands = ", ".join(
            (names.get(name) or f"%?{_quote(name)}") if name else "none" for name in node.input
        )
        results = []
        for name in node.output:
            if not name:
                results.append("_")
                continue
            if name in output_names:
                token = _named(name)
            else:
                token = f"%{self.counter}"
                self.counter += 1
            names[name] = token
            results.append(token)
        attrs, subgraphs = [], []
        for attr in sorted(node.attribute, key=lambda a: a.name):
            if attr.type == AttributeProto.GRAPH:
                subgraphs.append((attr.name, attr.g))
                attrs.append(f"{attr.name}=@{attr.name}")
            elif attr.type == AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    subgraphs.append((f"{attr.name}[{i}]", sub))
                attrs.append(f"{attr.name}=@{attr.name}[{len(attr.graphs)}]")
            else:
                attrs.append(f"{attr.name}={self.attribute(attr)}")
        op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        text = f"{indent}{', '.join(results)} = " if results else indent
        text += f"{op}({operands})"
        if attrs:
            text += " {" + ", ".join(attrs) + "}"
        if node.output:
            text += " : " + ", ".join(_type_text(self.types.get(name)) if name else "none" for name in node.output)
        trailer = []
        if node.name:
            # A name with a newline or tab must not break the one-line-per-node layout.
            trailer.append(node.name if node.name.isprintable() else json.dumps(node.name))
        provenance = next((p.value for p in node.metadata_props if p.key == PROVENANCE_KEY), None)
        if provenance:
            trailer.append(f"[{PROVENANCE_KEY}={provenance}]")
        if trailer:
            text += "  # " + " ".join(trailer)
        lines.append(text)
        for label, sub in subgraphs:
            inputs = ", ".join(f"{_named(v.name)}: {_type_text(v.type)}" for v in sub.input)
            lines.append(f"{indent}  {label}({inputs}) {{")
            self.graph_body(sub, names, indent + "    ", lines)
            lines.append(f"{indent}  }}")

    def attribute(self, attr: AttributeProto) -> str:
        kind = attr.type
        if kind == AttributeProto.INT:
            return str(attr.i)
        if kind == AttributeProto.FLOAT:
            return _float(attr.f)
        if kind == AttributeProto.STRING:
            return json.dumps(attr.s.decode("utf-8", "replace"))
        if kind == AttributeProto.INTS:
            return "[" + ",".join(str(v) for v in attr.ints) + "]"
        if kind == AttributeProto.FLOATS:
            return "[" + ",".join(_float(v) for v in attr.floats) + "]"
        if kind == AttributeProto.STRINGS:
            return "[" + ",".join(json.dumps(s.decode("utf-8", "replace")) for s in attr.strings) + "]"
        if kind == AttributeProto.TENSOR:
            return _tensor_text(attr.t, self.digests, self.digits)
        if kind == AttributeProto.TENSORS:
            return "[" + ", ".join(_tensor_text(t, self.digests, self.digits) for t in attr.tensors) + "]"
        if kind == AttributeProto.TYPE_PROTO:
            return _type_text(attr.tp)
        if kind == AttributeProto.SPARSE_TENSOR:
            return "sparse " + _tensor_text(attr.sparse_tensor.values, self.digests, self.digits)
        if attr.ref_attr_name:
            return f"@{attr.ref_attr_name}"
        return "?"


def _used_names(node: onnx.NodeProto) -> list[str]:
    """The node's inputs, then the names its subgraphs read (which may come from this graph)."""
    used = [name for name in node.input if name]
    for attr in node.attribute:
        subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs) if attr.type == AttributeProto.GRAPHS else []
        for sub in subs:
            for inner in sub.node:
                used.extend(_used_names(inner))
            used.extend(value.name for value in sub.output)
    return used


def _canonical_order(graph: onnx.GraphProto) -> list[int]:
    """Node indices in depth-first post-order from the graph outputs, operands left to right.

    Independent of the node list's order except for nodes no graph output depends on, which follow
    in their original order. Iterative, because Q/DQ chains run deeper than Python's recursion limit.
    A cycle (an invalid graph) does not hang: the back edge is ignored.
    """
    nodes = graph.node
    producer: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if name:
                producer[name] = index
    deps: list[list[int] | None] = [None] * len(nodes)

    def dependencies(index: int) -> list[int]:
        found = deps[index]
        if found is None:
            seen, found = set(), []
            for name in _used_names(nodes[index]):
                dep = producer.get(name)
                if dep is not None and dep != index and dep not in seen:
                    seen.add(dep)
                    found.append(dep)
            deps[index] = found
        return found

    state = [0] * len(nodes)  # 0 unvisited, 1 on the stack, 2 printed
    order: list[int] = []

    def visit(root: int) -> None:
        if state[root]:
            return
        state[root] = 1
        stack = [(root, iter(dependencies(root)))]
        while stack:
            index, pending = stack[-1]
            for dep in pending:
                if state[dep] == 0:
                    state[dep] = 1
                    stack.append((dep, iter(dependencies(dep))))
                    break
            else:
                stack.pop()
                state[index] = 2
                order.append(index)

    for value in graph.output:
        root = producer.get(value.name)
        if root is not None:
            visit(root)
    for index in range(len(nodes)):
        visit(index)
    return order
