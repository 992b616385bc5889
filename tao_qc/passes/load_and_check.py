"""Load an ONNX file into the working IR and check it: the first pass of every pipeline.

External data (and so models over protobuf's 2 GB limit) load through onnx_ir, which reads tensor
files lazily. Old-IR models that list their initializers as graph inputs get them removed from the
inputs (modelopt's checker rejects that form, and constant folding cannot see such values as
constants); unnamed nodes get names, because layer patterns and modelopt's node lists need them.
Tensors stored as Constant nodes (older paddle2onnx writes every weight that way) become
initializers, so a graph canonicalizes the same whichever form its exporter chose: BatchNorm folding
and the weight checks after it read initializers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    NameFixPass,
    RemoveInitializersFromInputsPass,
)

from tao_qc.errors import InputError
from tao_qc.ir.model_fields import ModelFields
from tao_qc.pipeline import PassContext, PassResult, light_proto


@dataclass
class LoadAndCheck:
    """Load `path` (default: the context's `source_path`), check it, infer shapes."""

    path: Path | None = None
    name: str = "load-and-check"

    def run(self, model: ir.Model | None, ctx: PassContext) -> PassResult:
        path = Path(self.path or ctx.source_path or "")
        if not str(path) or not path.exists():
            raise InputError(f"model {path} does not exist")
        if path.is_dir():
            raise InputError(f"model {path} is a folder, not an .onnx file")
        try:
            loaded = ir.load(path)
        except Exception as exc:  # noqa: BLE001 - truncated/garbage files surface as protobuf DecodeError etc.
            raise InputError(f"model {path} is not a valid ONNX model (truncated, not ONNX, or broken): {_first_line(exc)}") from None
        if not loaded.ir_version or len(loaded.graph) == 0:
            raise InputError(f"model {path} is not a valid ONNX model (truncated, not ONNX, or broken): "
                             f"{'no IR version' if not loaded.ir_version else 'no nodes'}")
        try:
            # The checker reads a weightless copy: a full check would serialize every weight (0.5 s
            # for ResNet-18), and weights cannot break the graph's structure.
            onnx.checker.check_model(light_proto(loaded))
        except onnx.checker.ValidationError as exc:
            raise InputError(f"model {path} is not a valid ONNX model (truncated, not ONNX, or broken): {_first_line(exc)}") from None
        if len(loaded.graph) == 0 or not loaded.graph.outputs:
            raise InputError(f"model {path} has no nodes or no outputs: not an ONNX model to quantize")

        notes, stats = [], {}
        opsets = dict(loaded.opset_imports)
        ctx.facts["opset"] = opsets.get("", opsets.get("ai.onnx"))
        ctx.facts["opsets"] = opsets
        ctx.facts["ir_version"] = loaded.ir_version
        notes.append(f"loaded {path.name}: IR version {loaded.ir_version}, opset {ctx.facts['opset']}, "
                     f"{len(loaded.graph)} nodes, {len(loaded.graph.initializers)} initializers")

        shadowed = [v.name for v in loaded.graph.inputs if v.name in loaded.graph.initializers]
        if shadowed:
            RemoveInitializersFromInputsPass()(loaded)
            if loaded.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
                loaded.ir_version = 4
                notes.append("IR version raised to 4 (the first that allows initializers that are not inputs)")
            stats["initializer_inputs_removed"] = len(shadowed)
            notes.append(f"{len(shadowed)} initializers were also listed as graph inputs (old IR): "
                         "they are constants now")
        constants = sum(1 for node in loaded.graph if node.op_type == "Constant")
        if constants:
            # Every size: a 10-class bias or a 16-channel BatchNorm is as much a weight as a kernel.
            LiftConstantsToInitializersPass(size_limit=0)(loaded)
            lifted = constants - sum(1 for node in loaded.graph if node.op_type == "Constant")
            if lifted:
                stats["constants_lifted"] = lifted
                notes.append(f"{lifted} Constant-node tensors are initializers now (the same graph whichever form "
                             "the exporter chose)")
        unnamed = sum(1 for node in loaded.graph if not node.name)
        if unnamed:
            NameFixPass()(loaded)
            stats["nodes_named"] = unnamed
            notes.append(f"{unnamed} unnamed nodes got names (layer patterns and modelopt address nodes by name)")
        names = [node.name for node in loaded.graph]
        if len(set(names)) != len(names):
            NameFixPass()(loaded)
            notes.append("duplicate node names were made unique")

        try:
            inferred = onnx.shape_inference.infer_shapes(light_proto(loaded), check_type=True, strict_mode=True)
        except Exception as exc:  # noqa: BLE001 - onnx raises several types
            raise InputError(f"model {path}: ONNX shape inference fails: {_first_line(exc)}") from None
        _take_types(loaded, ir.from_proto(inferred))
        stats["nodes"] = len(loaded.graph)
        # What the model carries besides its computation; every later pass must keep it.
        ctx.facts["model_fields"] = ModelFields.of(loaded)
        return PassResult(loaded, changed=True, stats=stats, notes=notes)


def _take_types(model: ir.Model, inferred: ir.Model) -> None:
    """Copy inferred dtypes and shapes onto `model`'s values (inference ran on a weightless copy)."""
    known = {v.name: v for node in inferred.graph for v in node.outputs if v.name}
    known.update({v.name: v for v in inferred.graph.outputs})
    for node in model.graph:
        for value in node.outputs:
            source = known.get(value.name)
            if source is None:
                continue
            if source.dtype is not None and value.dtype is None:
                value.dtype = source.dtype
            if source.shape is not None and (value.shape is None or not all(isinstance(d, int) for d in value.shape)):
                value.shape = source.shape


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
