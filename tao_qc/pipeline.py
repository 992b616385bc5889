"""The pass protocol: what every pass in `tao_qc.passes` implements.

The working IR of the whole pipeline is `onnx_ir.Model` (use-def chains, safe node removal, ready
common passes). Convert to `onnx.ModelProto` only at the edges: load, save, dump, runtimes and the
modelopt call.

A pass has a kebab-case `name` (CLI, spec and dump file names use it) and
`run(model, ctx) -> PassResult`. `stats` are counts (`{"qdq_inserted": 42}`); `notes` explain
decisions ("/head/Gemm kept in float: skip_names[0] '*head*'"). Nodes a pass creates carry its name
in `metadata_props["tao_qc.pass"]` (see `mark_created`), so provenance survives to the final model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import onnx_ir as ir

from tao_qc.spec import QuantizeSpec

PROVENANCE_KEY = "tao_qc.pass"


@dataclass
class PassContext:
    """What passes may read (and, for `artifacts`/`facts`, hand to later passes)."""

    spec: QuantizeSpec
    # The folder the run writes into (a staging folder until the run succeeds).
    work_dir: Path
    # The model file the user gave (never modified).
    source_path: Path | None = None
    # Calibration input batches (each a dict input name -> array), set up before the quantize pass.
    calibration: Any = None
    # Facts passes record for later passes and the report, e.g. "decisions" from match-layers.
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    model: ir.Model
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Pass(Protocol):
    name: str

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult: ...


def mark_created(node: ir.Node, pass_name: str) -> ir.Node:
    """Record that `pass_name` created `node` (kept in the saved ONNX as node metadata)."""
    node.metadata_props[PROVENANCE_KEY] = pass_name
    return node
