"""Fold BatchNormalization into the Conv before it (onnxscript's fuse_batchnorm_into_conv rule).

After folding, the Conv's weights carry the BatchNorm scale, so quantization sees the weights the
graph really multiplies by, and one Q/DQ pair fewer sits between layers. Old-IR models list their
initializers as graph inputs too; the rule refuses such "overridable" values, so BatchNorm and Conv
parameters listed that way are first taken off the input list (every runtime treats them as
constants when not fed). Parameters stored as Constant nodes (older paddle2onnx) are made
initializers first, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult, lift_constant_node, mark_created


@dataclass
class FoldBatchNorm:
    name: str = "fold-batchnorm"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        from onnxscript.rewriter import RewriteRuleSet
        from onnxscript.rewriter.rules.common import fuse_batchnorm_into_conv_rule

        graph = model.graph
        batchnorms = [n for n in graph if n.op_type == "BatchNormalization"]
        if not batchnorms:
            return PassResult(model, changed=False, stats={"batchnorm_folded": 0}, notes=["no BatchNormalization"])
        unshadowed = self._constants_from_inputs(graph, batchnorms)
        lifted = sum(lift_constant_node(graph, value) for value in _pair_parameters(batchnorms))
        before = {n.name for n in batchnorms}
        convs_before = {id(n) for n in graph}
        sites = self._fusion_sites(graph, batchnorms)
        count = RewriteRuleSet([fuse_batchnorm_into_conv_rule]).apply_to_model(model)
        RemoveUnusedNodesPass()(model)
        self._restore_names(graph, sites)
        after = {n.name for n in graph if n.op_type == "BatchNormalization"}
        folded = sorted(before - after)
        for node in graph:
            if id(node) not in convs_before and node.op_type != "Conv":
                mark_created(node, self.name)
        notes = [f"folded {len(folded)} of {len(before)} BatchNormalization nodes into the preceding Conv"]
        if lifted:
            notes.append(f"{lifted} Conv/BatchNorm parameters were Constant nodes: made initializers")
        if unshadowed:
            notes.append(f"{unshadowed} Conv/BatchNorm parameters were also graph inputs (old IR): treated as constants")
        for name in sorted(after):
            notes.append(f"{name}: BatchNormalization kept (not right after a Conv with constant weights used only there)")
        return PassResult(model, changed=bool(count or unshadowed or lifted),
                          stats={"batchnorm_folded": len(folded), "batchnorm_kept": len(after)}, notes=notes)

    @staticmethod
    def _fusion_sites(graph: ir.Graph, batchnorms: list[ir.Node]) -> list[tuple[ir.Node, list, list[int]]]:
        """Per Conv -> BatchNorm pair: the Conv, and where the BatchNorm's output is read (node uses,
        graph output indices). The rewriter emits the fused Conv under a generic name; the uses
        find it again afterwards so it gets the original Conv's name and metadata back (layer
        patterns and reports address nodes by name)."""
        sites = []
        for bn in batchnorms:
            source = bn.inputs[0]
            conv = source.producer() if source is not None else None
            if conv is None or conv.op_type != "Conv":
                continue
            out = bn.outputs[0]
            outputs = [i for i, v in enumerate(graph.outputs) if v is out]
            sites.append((conv, list(out.uses()), outputs))
        return sites

    @staticmethod
    def _restore_names(graph: ir.Graph, sites: list) -> None:
        for conv, uses, outputs in sites:
            value = None
            if uses:
                user, index = uses[0]
                value = user.inputs[index]
            elif outputs:
                value = graph.outputs[outputs[0]]
            fused = value.producer() if value is not None else None
            if fused is None or fused is conv or fused.op_type != "Conv":
                continue
            fused.name = conv.name
            for key, item in conv.metadata_props.items():
                fused.metadata_props.setdefault(key, item)

    @staticmethod
    def _constants_from_inputs(graph: ir.Graph, batchnorms: list[ir.Node]) -> int:
        """Remove initializer-backed graph inputs feeding a Conv -> BatchNorm pair; return how many."""
        params = _pair_parameters(batchnorms)
        shadowed = {v.name for v in params if v.is_graph_input() and v.name in graph.initializers}
        if not shadowed:
            return 0
        keep = [v for v in graph.inputs if v.name not in shadowed]
        graph.inputs.clear()
        graph.inputs.extend(keep)
        return len(shadowed)


def _pair_parameters(batchnorms: list[ir.Node]) -> list[ir.Value]:
    """The Conv weights/bias and BatchNorm parameters of every Conv -> BatchNorm pair."""
    params: list[ir.Value] = []
    for bn in batchnorms:
        producer = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if producer is None or producer.op_type != "Conv":
            continue
        params.extend(v for v in (*bn.inputs[1:], *producer.inputs[1:]) if v is not None)
    return params
