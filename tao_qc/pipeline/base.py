"""The pass protocol: what every pass in `tao_qc.passes` implements.

The working IR of the whole pipeline is `onnx_ir.Model` (use-def chains, safe node removal, ready
common passes). Convert to `onnx.ModelProto` only at the edges: load, save, dump, runtimes and the
modelopt call (`tao_qc.ir.protos`).

A pass has a kebab-case `name` (CLI, spec and dump file names use it) and
`run(model, ctx) -> PassResult`. `stats` are counts (`{"qdq_inserted": 42}`); `notes` explain
decisions ("/head/Gemm kept in float: skip_names[0] '*head*'"). Nodes a pass creates carry its name
in `metadata_props["tao_qc.pass"]` (see `mark_created`), so provenance survives to the final model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import onnx
import onnx_ir as ir

from tao_qc.errors import TaoQcError
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
    # Calibration samples kept out of calibration to judge accuracy on (where no other data is given).
    held_back: Any = None
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


@dataclass
class FixedPoint:
    """Passes the pipeline repeats, in order, until one round changes nothing (or `max_rounds`,
    with a warning): for rewrites that can expose work for each other (a Conv -> Identity ->
    BatchNorm folds only once the Identity is gone)."""

    name: str
    passes: list
    max_rounds: int = 4


def mark_created(node: ir.Node, pass_name: str) -> ir.Node:
    """Record that `pass_name` created `node` (kept in the saved ONNX as node metadata)."""
    node.metadata_props[PROVENANCE_KEY] = pass_name
    return node


_log = logging.getLogger("tao_qc.pipeline")


class PassFailure(TaoQcError):
    """A pass raised, or left a graph that breaks an invariant. One line: the pass, the passes
    before it, what went wrong, and where the reproducer (the graph the pass received) was saved."""

    def __init__(self, pass_name: str, index: int, before: list[str], cause: BaseException,
                 reproducer: Path | None = None):
        self.pass_name, self.index, self.before, self.cause, self.reproducer = pass_name, index, before, cause, reproducer
        super().__init__(self._message())

    def _message(self) -> str:
        ran = ", ".join(self.before) if self.before else "none"
        cause = str(self.cause).strip().splitlines()[0] if str(self.cause).strip() else type(self.cause).__name__
        where = f"; its input graph is saved at {self.reproducer}" if self.reproducer else ""
        return f"pass '{self.pass_name}' failed (passes run before it: {ran}): {type(self.cause).__name__}: {cause}{where}"

    def set_reproducer(self, path: Path) -> None:
        self.reproducer = path
        self.args = (self._message(),)


@dataclass
class PassRecord:
    """One row of the pipeline summary."""

    index: int
    name: str
    changed: bool = False
    seconds: float = 0.0
    nodes: int = 0
    op_counts: dict[str, int] = field(default_factory=dict)
    op_delta: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    @property
    def stem(self) -> str:
        return f"{self.index:02d}-{self.name}"

    def as_dict(self, timings: bool = True) -> dict[str, Any]:
        row = {"index": self.index, "pass": self.name, "changed": self.changed, "nodes": self.nodes,
               "op_delta": self.op_delta, "stats": dict(self.stats), "notes": list(self.notes), "failed": self.failed}
        if timings:
            row["seconds"] = round(self.seconds, 4)
        return row


class Instrument:
    """Hooks around every pass (TVM's PassInstrument / torch.fx's pass infra); override any."""

    def before_pass(self, record: PassRecord, pass_: Pass, model: ir.Model | None, ctx: PassContext) -> None: ...

    def after_pass(self, record: PassRecord, pass_: Pass, result: PassResult, ctx: PassContext) -> None: ...

    def after_failure(self, record: PassRecord, pass_: Pass, received: onnx.ModelProto | None,
                      error: BaseException, ctx: PassContext) -> None: ...

    def finish(self, records: list[PassRecord], ctx: PassContext) -> None: ...
