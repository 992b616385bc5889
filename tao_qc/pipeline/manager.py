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

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import onnx
import onnx_ir as ir

from tao_qc.errors import InputError, TaoQcError
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


def mark_created(node: ir.Node, pass_name: str) -> ir.Node:
    """Record that `pass_name` created `node` (kept in the saved ONNX as node metadata)."""
    node.metadata_props[PROVENANCE_KEY] = pass_name
    return node


# ---------------------------------------------------------------------------------------------
# The pass manager: runs passes in the order written; instruments do timing, checks and dumps.

_log = logging.getLogger("tao_qc.pipeline")

DUMP_MODES = ("after-all", "after-change", "after-failure")
# Models above this size are not serialized for onnx.checker between passes (protobuf's 2 GB limit).
PROTOBUF_LIMIT_BYTES = 1_800_000_000


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


class InvariantError(Exception):
    """The graph a pass returned is not a valid model, or changed the graph's interface."""


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
        from tao_qc.ir.textform import diff_text, format_model

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
    header = f"{'#':>2}  {'pass':<24} {'changed':<7} " + (f"{'time_s':>8} " if timings else "") + f"{'nodes':>6}  op delta / stats"
    lines.append(header)
    for r in records:
        status = "FAILED" if r.failed else ("yes" if r.changed else "no")
        row = f"{r.index:>2}  {r.name:<24} {status:<7} " + (f"{r.seconds:>8.3f} " if timings else "") + f"{r.nodes:>6}  "
        delta = r.op_delta.removeprefix("# ops: ")
        stats = ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items()))
        lines.append(row + "; ".join(part for part in (delta, stats) if part))
    return "\n".join(lines) + "\n"


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
        from tao_qc.ir.textform import op_counts

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
        from tao_qc.ir.textform import op_counts, op_delta

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
