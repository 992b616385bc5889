"""The IR's edges: `onnx_ir` values and graphs to numpy and protobuf and back (constants, light
protos without weights for checks and dumps, saving with external data past protobuf's limit)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir


def constant_array(value: ir.Value | None):
    """The numpy value of an initializer or a Constant node's output (any of its attribute forms:
    `value`, `value_float(s)`, `value_int(s)`); None for anything computed."""
    if value is None:
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:  # a malformed Constant (several attributes or outputs): not a constant to rely on
        return None
    return tensor.numpy() if tensor is not None else None


def lift_constant_node(graph: ir.Graph, value: ir.Value) -> bool:
    """Make a Constant node's output `value` an initializer of `graph` (same name, same readers);
    True when it did. Rewrites written against initializers (onnxscript's BatchNorm fusion) then see
    weights that exporters such as older paddle2onnx store as Constant nodes."""
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
        return False
    if value.is_graph_output() or producer.graph is not graph:
        return False
    array = constant_array(value)
    if array is None:
        return False
    name = value.name
    while name in graph.initializers:
        name = f"{name}_lifted"
    initializer = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                           shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
    graph.register_initializer(initializer)
    value.replace_all_uses_with(initializer)
    graph.remove(producer, safe=True)
    return True


# Models above this size are not serialized for onnx.checker between passes (protobuf's 2 GB limit).
PROTOBUF_LIMIT_BYTES = 1_800_000_000


class InvariantError(Exception):
    """The graph a pass returned is not a valid model, or changed the graph's interface."""


def weightless_proto(model: ir.Model, limit_bytes: int,
                     dtypes: frozenset[ir.DataType] | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`model` as a proto without its large initializers (of `dtypes`, default any), and those
    tensors by name.

    Serializing megabytes of weights costs more than most passes; the tensors themselves are kept
    by reference (passes replace a value's tensor, they do not write into it).
    """
    detached = {
        name: (value, value.const_value)
        for name, value in model.graph.initializers.items()
        if value.const_value is not None
        and (dtypes is None or value.const_value.dtype in dtypes)
        and (isinstance(value.const_value, ir.ExternalTensor) or value.const_value.nbytes > limit_bytes)
    }
    serde_log = logging.getLogger("onnx_ir.serde")
    level = serde_log.level
    serde_log.setLevel(logging.ERROR)  # it warns once per initializer without data
    try:
        for value, _tensor in detached.values():
            value.const_value = None
        proto = ir.to_proto(model)
    finally:
        serde_log.setLevel(level)
        for value, tensor in detached.values():
            value.const_value = tensor
    graph = proto.graph
    keep = [info for info in graph.value_info if info.name not in detached]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return proto, {name: tensor for name, (_value, tensor) in detached.items()}


def light_proto(model: ir.Model, limit_bytes: int = 1024) -> onnx.ModelProto:
    """A proto of `model` whose large initializers are typed graph inputs without data.

    Structure checks and shape inference need the values of small tensors only (Reshape targets,
    Slice bounds), so the weights are never serialized for them.
    """
    return light_proto_and_weights(model, limit_bytes)[0]


def light_proto_and_weights(model: ir.Model, limit_bytes: int = 1024,
                            dtypes: frozenset[ir.DataType] | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """`light_proto` over the large initializers of `dtypes` (default any), and those tensors by
    name (to feed the inputs they became)."""
    from onnx import helper

    proto, detached = weightless_proto(model, limit_bytes, dtypes)
    inputs = {v.name for v in proto.graph.input}
    for name, tensor in detached.items():
        if name not in inputs:
            proto.graph.input.append(helper.make_tensor_value_info(name, int(tensor.dtype), [int(d) for d in tensor.shape]))
    if detached and proto.ir_version < 4:
        proto.ir_version = 4  # IR 3 wants every initializer listed as an input; the rest still are
    return proto, detached


class _Received:
    """The graph a pass received, cheap to take before every pass and whole only when needed.

    Taken as a weightless proto plus the weight tensors by reference; `proto()` (called only when
    the pass failed) puts the weights back in for the reproducer.
    """

    def __init__(self, model: ir.Model):
        self._proto, self._weights = weightless_proto(model, 1024)

    def proto(self) -> onnx.ModelProto:
        for name, tensor in self._weights.items():
            serialized = ir.serde.serialize_tensor(tensor)
            serialized.name = name
            self._proto.graph.initializer.append(serialized)
        self._weights = {}
        return self._proto


def weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(model: ir.Model, path: Path, *, external_data: bool = False) -> None:
    """Save `model`; with `external_data`, or above protobuf's 2 GB limit, the weights go to
    `<name>.data` beside it (written as they are, not serialized into the protobuf)."""
    if external_data or weight_bytes(model) >= PROTOBUF_LIMIT_BYTES:
        ir.save(model, path, external_data=f"{Path(path).name}.data")
        return
    # Weights still in the user's external data file would be saved as references to a path
    # relative to the new file: read them in first (in place; they were going to be read anyway).
    if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        ir.external_data.load_to_model(model)
    ir.save(model, path)


def check_model_proto(proto: onnx.ModelProto) -> None:
    """onnx.checker and strict shape inference; raises InvariantError with the library's first line."""
    if proto.ByteSize() < PROTOBUF_LIMIT_BYTES:
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as exc:
            raise InvariantError(f"onnx.checker: {str(exc).strip().splitlines()[0]}") from exc
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types (InferenceError, ValueError)
        raise InvariantError(f"shape inference: {str(exc).strip().splitlines()[0]}") from exc
