"""Instruments: hooks around every pass (timing, invariant checks between passes, dumps like LLVM's
print-after-all), and the pipeline summary they write."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from tao_qc.errors import InputError
from tao_qc.ir.protos import (
    PROTOBUF_LIMIT_BYTES,
    InvariantError,
    check_model_proto,
    light_proto,
    save_model,
)
from tao_qc.ir.textform import diff_text, format_model
from tao_qc.pipeline.base import Instrument, PassFailure, PassRecord

DUMP_MODES = ("after-all", "after-change", "after-failure")


def interface_of(model: ir.Model) -> dict[str, list[tuple[str, str, int | None]]]:
    """Names, element types and ranks of the graph's real inputs (not initializers) and outputs."""
    graph = model.graph

    def describe(value: ir.Value) -> tuple[str, str, int | None]:
        dtype = value.dtype.name if value.dtype is not None else "?"
        return (value.name or "", dtype, len(value.shape) if value.shape is not None else None)

    inputs = [describe(v) for v in graph.inputs if v.name not in graph.initializers]
    return {"inputs": inputs, "outputs": [describe(v) for v in graph.outputs]}


def _same_interface(before: dict, after: dict) -> str | None:
    for side in ("inputs", "outputs"):
        old, new = before[side], after[side]
        if [v[0] for v in old] != [v[0] for v in new]:
            return f"graph {side} changed from {[v[0] for v in old]} to {[v[0] for v in new]}"
        for (name, dtype, rank), (_, dtype2, rank2) in zip(old, new):
            if dtype != "?" and dtype2 != "?" and dtype != dtype2:
                return f"graph {side[:-1]} '{name}' changed type from {dtype} to {dtype2}"
            if rank is not None and rank2 is not None and rank != rank2:
                return f"graph {side[:-1]} '{name}' changed rank from {rank} to {rank2}"
    return None


class TimingInstrument(Instrument):
    def before_pass(self, record, pass_, model, ctx):
        record.seconds = -time.perf_counter()

    def after_pass(self, record, pass_, result, ctx):
        record.seconds += time.perf_counter()

    def after_failure(self, record, pass_, received, error, ctx):
        if record.seconds < 0:
            record.seconds += time.perf_counter()


class InvariantInstrument(Instrument):
    """Between passes: the model passes onnx.checker and strict shape inference, its inputs and
    outputs keep their names and types (compared with the first pass's result), and it keeps what the
    user's model carries besides its computation (`ctx.facts["model_fields"]`: metadata, doc strings,
    opsets, local functions)."""

    def __init__(self) -> None:
        self.interface: dict | None = None

    def after_pass(self, record, pass_, result, ctx):
        if result.model is None:
            raise InvariantError("the pass returned no model")
        if result.changed or self.interface is None:
            # A pass that reports no change gets the cheap interface check only: re-running the
            # checker and shape inference on the graph just checked would find what it found.
            check_model_proto(light_proto(result.model))
        interface = interface_of(result.model)
        if self.interface is None:
            self.interface = interface
            return
        problem = _same_interface(self.interface, interface)
        if problem:
            raise InvariantError(problem)
        fields = ctx.facts.get("model_fields")
        lost = fields.lost_in(result.model) if fields is not None else []
        if lost:
            raise InvariantError(f"the model lost what the source carried: {'; '.join(lost)}")


class DumpInstrument(Instrument):
    """LLVM's print-after-all for the ONNX graph.

    Modes: `after-all` (every pass), `after-change` (passes that changed the graph), `after-failure`
    (only the failing pass's input). Files in `directory`: `NN-<pass>.onnx`, `NN-<pass>.txt` (the
    canonical text), `NN-<pass>.diff` (against the previous text, headed by the op-count delta),
    `NN-<pass>.failed-input.onnx` for a failure, and `summary.txt`/`summary.json` at the end.
    `print_after` names passes whose text is printed to stdout whatever the mode.
    """

    def __init__(self, directory: Path | None, mode: str = "after-failure", print_after: Sequence[str] = (),
                 echo: Any = None, failure_directory: Path | None = None):
        if mode not in DUMP_MODES:
            raise InputError(f"--dump-passes: '{mode}' is not a dump mode (valid: {', '.join(DUMP_MODES)})")
        self.directory = Path(directory) if directory else None
        self.failure_directory = Path(failure_directory) if failure_directory else self.directory
        self.mode = mode
        self.print_after = set(print_after)
        self.echo = echo or print
        self.previous_text: str | None = None
        self.previous_name: str | None = None

    def _wants(self, record: PassRecord) -> bool:
        if self.directory is None:
            return False
        return self.mode == "after-all" or (self.mode == "after-change" and record.changed)

    def after_pass(self, record, pass_, result, ctx):
        wanted = self._wants(record)
        printing = record.name in self.print_after
        # The diff needs the text before each dumped pass; unchanged passes leave it valid.
        needs_text = wanted or printing or (self.mode == "after-change" and self.directory and self.previous_text is None)
        if not needs_text:
            return
        text = format_model(result.model)
        if printing:
            self.echo(text.rstrip("\n"))
        if wanted:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_model(result.model, self.directory / f"{record.stem}.onnx")
            (self.directory / f"{record.stem}.txt").write_text(text, encoding="utf-8")
            if self.previous_text is not None:
                diff = diff_text(self.previous_text, text, before_name=f"{self.previous_name}.txt",
                                 after_name=f"{record.stem}.txt")
                (self.directory / f"{record.stem}.diff").write_text(diff, encoding="utf-8")
        self.previous_text, self.previous_name = text, record.stem

    def after_failure(self, record, pass_, received, error, ctx):
        # Bad user input (a truncated file, no layer to quantize) is not a pass bug, and an
        # interrupted run is not a failure: no reproducer for either.
        if received is None or self.failure_directory is None or not isinstance(error, PassFailure):
            return
        self.failure_directory.mkdir(parents=True, exist_ok=True)
        path = self.failure_directory / f"{record.stem}.failed-input.onnx"
        onnx.save(received, str(path), save_as_external_data=received.ByteSize() >= PROTOBUF_LIMIT_BYTES)
        if isinstance(error, PassFailure):
            error.set_reproducer(path)
        record.notes.append(f"input graph saved as {path.name}")

    def finish(self, records, ctx):
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "summary.txt").write_text(format_summary(records, timings=True), encoding="utf-8")
        (self.directory / "summary.json").write_text(
            json.dumps([r.as_dict() for r in records], indent=2) + "\n", encoding="utf-8")


def format_summary(records: Sequence[PassRecord], *, timings: bool = True) -> str:
    """A row per pass: changed, time, node count, op delta, stats (timings off for golden files)."""
    lines = []
    width = max([24, *(len(r.name) for r in records)])
    header = f"{'#':>2}  {'pass':<{width}} {'changed':<7} " + (f"{'time_s':>8} " if timings else "") + f"{'nodes':>6}  op delta / stats"
    lines.append(header)
    for r in records:
        status = "FAILED" if r.failed else ("yes" if r.changed else "no")
        row = f"{r.index:>2}  {r.name:<{width}} {status:<7} " + (f"{r.seconds:>8.3f} " if timings else "") + f"{r.nodes:>6}  "
        delta = r.op_delta.removeprefix("# ops: ")
        stats = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items()))
        lines.append(row + "; ".join(part for part in (delta, stats) if part))
    return "\n".join(lines) + "\n"
