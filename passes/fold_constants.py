"""Constant folding with onnxscript's optimizer (the folder behind onnxscript/onnx_ir).

Exported graphs compute shapes and weight transforms (Shape -> Gather -> Concat, Transpose of a
weight) from constants; folding them gives later passes (BatchNorm folding, layer matching, the
weight-Q/DQ check) plain initializers to look at.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult


@dataclass
class FoldConstants:
    # Tensors above these element counts are left alone (onnxscript's own defaults are similar);
    # folding a huge weight transform would duplicate megabytes for nothing.
    input_size_limit: int = 8 * 1024 * 1024
    output_size_limit: int = 8 * 1024 * 1024
    name: str = "fold-constants"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnxscript.optimizer import fold_constants

        before = len(model.graph)
        before_ops = _op_list(model)
        result = fold_constants(model, input_size_limit=self.input_size_limit, output_size_limit=self.output_size_limit)
        RemoveUnusedNodesPass()(model)
        after = len(model.graph)
        removed = before - after
        notes = []
        if removed:
            gone = before_ops - _op_list(model)
            detail = ", ".join(f"{op} {n}" for op, n in sorted(gone.items()))
            notes.append(f"folded {removed} nodes into constants ({detail})")
        else:
            notes.append("nothing to fold")
        return PassResult(model, changed=bool(result.modified) or removed != 0, stats={"nodes_folded": removed}, notes=notes)


def _op_list(model: ir.Model):
    from collections import Counter

    return Counter(node.op_type for node in model.graph)
