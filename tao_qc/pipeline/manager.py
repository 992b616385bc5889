"""The pass manager: runs passes in the order written (fixed-point groups until nothing changes);
instruments do timing, checks and dumps. A failing pass is reported with the passes before it and the
graph it received."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from tao_qc.errors import InputError
from tao_qc.ir.protos import _Received
from tao_qc.ir.textform import op_counts, op_delta
from tao_qc.pipeline.base import (
    PROVENANCE_KEY,
    FixedPoint,
    Instrument,
    Pass,
    PassContext,
    PassFailure,
    PassRecord,
    _log,
    mark_created,
)
from tao_qc.pipeline.instruments import InvariantInstrument, TimingInstrument


@dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord]

    def seconds(self, name: str) -> float:
        return sum(r.seconds for r in self.records if r.name == name)


class Pipeline:
    """Runs `passes` in the order written (no constraint solving); a `FixedPoint` group's passes
    are repeated until a round changes nothing.

    Every pass is timed and its result checked (`InvariantInstrument`) before the next one runs;
    extra instruments (dumps) see every pass. A pass that raises or breaks an invariant stops the
    run with a `PassFailure` naming it and the passes before it; the instruments' `after_failure`
    hooks get the graph it received so it can be saved as a reproducer. `InputError`s (bad user
    input found by a pass) pass through unchanged.
    """

    def __init__(self, passes: Sequence[Pass | FixedPoint], instruments: Sequence[Instrument] = (), *,
                 check_invariants: bool = True):
        self.passes = list(passes)
        for name in [*self.names, *(p.name for p in self.passes if isinstance(p, FixedPoint))]:
            if not isinstance(name, str) or not name or name != name.lower() or " " in name or "_" in name:
                raise ValueError(f"pass name {name!r} is not kebab-case")
        self.instruments: list[Instrument] = [TimingInstrument()]
        if check_invariants:
            self.instruments.append(InvariantInstrument())
        self.instruments.extend(instruments)

    @property
    def names(self) -> list[str]:
        """The pass names, groups' passes in place (each once)."""
        return [q.name for p in self.passes for q in (p.passes if isinstance(p, FixedPoint) else [p])]

    def run(self, model: ir.Model | None, ctx: PassContext, *, after: Sequence[PassRecord] = ()) -> PipelineResult:
        """`after`: the records of the passes that ran before, where this pipeline continues another
        (compile runs the calibrating and the finishing passes as two): numbering and failure
        reports go on from them."""
        state = _RunState(model, op_counts(model) if model is not None else {}, before=[r.name for r in after])
        try:
            for entry in self.passes:
                if not isinstance(entry, FixedPoint):
                    self._run_pass(entry, state, ctx)
                    continue
                for _ in range(entry.max_rounds):
                    changed = [self._run_pass(pass_, state, ctx).changed for pass_ in entry.passes]
                    if not any(changed):
                        break
                else:
                    _log.warning("%s: still changing the graph after %d rounds; going on with it as it is",
                                 entry.name, entry.max_rounds)
                    state.records[-1].notes.append(f"warning: {entry.name} stopped at its cap of {entry.max_rounds} "
                                                   "rounds with the graph still changing")
        finally:
            for instrument in self.instruments:
                try:
                    instrument.finish(state.records, ctx)
                except Exception:  # noqa: BLE001
                    _log.exception("instrument %s failed to finish", type(instrument).__name__)
        return PipelineResult(state.model, state.records)

    def _run_pass(self, pass_: Pass, state: _RunState, ctx: PassContext) -> PassRecord:
        model, records = state.model, state.records
        index = len(state.before) + len(records)
        record = PassRecord(index, pass_.name)
        records.append(record)
        received = _Received(model) if model is not None else None
        before_nodes = {id(n) for n in model.graph} if model is not None else set()
        try:
            for instrument in self.instruments:
                instrument.before_pass(record, pass_, model, ctx)
            result = pass_.run(model, ctx)
            record.changed, record.stats, record.notes = result.changed, dict(result.stats), list(result.notes)
            if result.model is not None and result.model is model:
                for node in result.model.graph:
                    if id(node) not in before_nodes and PROVENANCE_KEY not in node.metadata_props:
                        mark_created(node, pass_.name)
            if result.model is not None:
                new_counts = op_counts(result.model)
                record.nodes = sum(new_counts.values())
                record.op_counts = new_counts
                record.op_delta = op_delta(state.counts, new_counts) if model is not None else ""
            for instrument in self.instruments:
                instrument.after_pass(record, pass_, result, ctx)
        except BaseException as exc:
            record.failed = True
            error: BaseException = exc
            if not isinstance(exc, (InputError, KeyboardInterrupt, SystemExit)):
                before = [*state.before, *(r.name for r in records[:-1])]
                error = PassFailure(pass_.name, index, before, exc)
            for instrument in self.instruments:
                try:
                    instrument.after_failure(record, pass_, received.proto() if received else None, error, ctx)
                except Exception:  # noqa: BLE001 - a failing dump must not hide the real failure
                    _log.exception("instrument %s failed while reporting a failure", type(instrument).__name__)
            if error is exc:
                raise
            _log.debug("pass %s failed", pass_.name, exc_info=exc)
            raise error from exc
        for note in record.notes:
            _log.debug("%s: %s", pass_.name, note)
        state.model, state.counts = result.model, record.op_counts
        return record


@dataclass
class _RunState:
    model: ir.Model | None
    counts: dict[str, int]
    records: list[PassRecord] = field(default_factory=list)
    before: list[str] = field(default_factory=list)  # names of the passes an earlier pipeline ran
