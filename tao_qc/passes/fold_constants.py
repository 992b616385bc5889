"""Constant folding with onnxscript's optimizer (the folder behind onnxscript/onnx_ir).

Exported graphs compute shapes and weight transforms (Shape -> Gather -> Concat, Transpose of a
weight) from constants; folding them gives later passes (BatchNorm folding, layer matching, the
weight-Q/DQ check) plain initializers to look at.

Importing onnxscript costs about 0.2 s, more than folding itself; a graph with nothing the folder
could touch (no node computing only from constants, none of the ops it simplifies symbolically)
is reported unchanged without that import.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult

# The ops for which onnxscript's folder has partial evaluators (it rewrites them even when some
# inputs are not constant, e.g. Shape of a static shape, Reshape to the same shape). Add and Abs
# have evaluators too, but they act only on symbolic shape values, which come from these ops.
# tests/test_passes.py checks this list against the installed onnxscript's registry.
SYMBOLIC_FOLD_OPS = frozenset({
    "Cast", "CastLike", "Concat", "ConcatFromSequence", "Dropout", "Expand", "Gather", "Identity", "If",
    "Reshape", "SequenceAt", "SequenceConstruct", "Shape", "Size", "SplitToSequence", "Squeeze",
})
SHAPE_VALUE_OPS = frozenset({"Add", "Abs"})


@dataclass
class FoldConstants:
    # Tensors above these element counts are left alone (onnxscript's own defaults are similar);
    # folding a huge weight transform would duplicate megabytes for nothing.
    input_size_limit: int = 8 * 1024 * 1024
    output_size_limit: int = 8 * 1024 * 1024
    name: str = "fold-constants"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        before = len(model.graph)
        before_ops = _op_list(model)
        modified = False
        if could_fold(model):
            from onnxscript.optimizer import fold_constants

            result = fold_constants(model, input_size_limit=self.input_size_limit,
                                    output_size_limit=self.output_size_limit)
            modified = bool(result.modified)
        RemoveUnusedNodesPass()(model)
        removed = before - len(model.graph)
        notes = []
        if removed:
            gone = before_ops - _op_list(model)
            detail = ", ".join(f"{op} {n}" for op, n in sorted(gone.items()))
            notes.append(f"folded {removed} nodes into constants ({detail})")
        else:
            notes.append("nothing to fold")
        return PassResult(model, changed=modified or removed != 0, stats={"nodes_folded": removed}, notes=notes)


def could_fold(model: ir.Model) -> bool:
    """Whether onnxscript's folder could change anything: a node whose inputs are all constants, an
    op it simplifies symbolically, or anything it handles in ways not worth predicting here (model
    functions, subgraphs) counts."""
    if model.functions:
        return True
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in SYMBOLIC_FOLD_OPS or any(
            attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
        ):
            return True
        inputs = [value for value in node.inputs if value is not None]
        if inputs and node.op_type != "Constant" and all(_is_constant(value) for value in inputs):
            return True
    return False


def _is_constant(value: ir.Value) -> bool:
    if value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _op_list(model: ir.Model):
    from collections import Counter

    return Counter(node.op_type for node in model.graph)
