"""Remove Identity nodes and inference-time Dropout (a Dropout is an Identity outside training).

Dropout is first turned into Identity when it cannot drop anything (no training_mode input, or a
constant false one, and its mask output unused), then onnx_ir's IdentityEliminationPass removes the
Identities, keeping graph output names.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass, RemoveUnusedNodesPass

from tao_qc.pipeline import PassContext, PassResult, constant_array, mark_created


@dataclass
class RemoveIdentity:
    name: str = "remove-identity"

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        graph = model.graph
        dropouts = 0
        notes = []
        for node in list(graph):
            if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                continue
            if not _inference_dropout(node):
                notes.append(f"{node.name}: Dropout kept (training mode or its mask is used)")
                continue
            identity = mark_created(ir.node("Identity", inputs=[node.inputs[0]], name=f"{node.name}_identity"), self.name)
            old_output = node.outputs[0]
            graph.insert_before(node, identity)
            old_output.replace_all_uses_with(identity.outputs[0], replace_graph_outputs=True)
            identity.outputs[0].name = old_output.name if old_output.is_graph_output() else None
            _copy_type(old_output, identity.outputs[0])
            graph.remove(node, safe=True)
            dropouts += 1
        identities_before = sum(1 for n in graph if n.op_type == "Identity")
        IdentityEliminationPass()(model)
        RemoveUnusedNodesPass()(model)
        identities_after = sum(1 for n in graph if n.op_type == "Identity")
        removed = identities_before - identities_after
        if dropouts:
            notes.append(f"{dropouts} inference-time Dropout nodes are Identity")
        if removed:
            notes.append(f"removed {removed} Identity nodes ({identities_after} left, e.g. input passed straight to an output)"
                         if identities_after else f"removed {removed} Identity nodes")
        if not dropouts and not removed:
            notes.append("no Identity or Dropout to remove")
        return PassResult(model, changed=bool(dropouts or removed),
                          stats={"dropout_removed": dropouts, "identity_removed": removed - dropouts if removed >= dropouts else 0},
                          notes=notes)


def _inference_dropout(node: ir.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return False
    if len(node.outputs) > 1 and node.outputs[1].is_graph_output():
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = constant_array(node.inputs[2])
        if mode is None or bool(mode.reshape(-1)[0]):
            return False
    is_test = node.attributes.get("is_test")  # opset < 7: Dropout drops unless is_test=1
    if is_test is not None and not is_test.as_int():
        return False
    return True


def _copy_type(source: ir.Value, target: ir.Value) -> None:
    target.type = source.type
    target.shape = source.shape
