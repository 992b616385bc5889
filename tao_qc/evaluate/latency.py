"""Latency: warm up, then time N runs; report median, p90 and throughput per batch size.

Each engine times itself (`Engine.latency`) the way its runtime is best measured: ONNX Runtime on CPU
with `session.run` on prepared numpy feeds; on CUDA (ORT's CUDA provider, TensorRT) with inputs and
outputs already on the device, so no host transfer is inside the timed loop (as trtexec measures).
This module holds what they share: the timing loop, the statistics, synthetic feeds, and the
multi-model table behind `tao-qc bench`.

`measure_latency(model_path, feeds_or_shapes, runtime=..., threads=...)` is the one call other code
needs (the placement benchmark uses it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.ir.shapes import resolve_shape
from tao_qc.runtimes.base import RuntimeSettings
from tao_qc.runtimes.registry import get_runtime
from tao_qc.runtimes.timing import LatencyResult, summarize, time_calls  # noqa: F401 - shared with the runtimes
from tao_qc.spec.cpu import compiled_for, this_machine

log = logging.getLogger("tao_qc.latency")

DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50


class BatchNotSupported(InputError):
    """The model's batch dimension is fixed at another size than the one asked for."""


def synthetic_feeds(inputs: Sequence[Any], batch_size: int, *, seed: int = 0,
                    shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Random feeds for `inputs` (`tao_qc.data.InputInfo`) at `batch_size`.

    Dimensions the model leaves open besides the batch come from `shapes` (`{input: full shape}`, the
    data's or `--input-shapes`; its batch dimension is replaced by `batch_size`).
    A fixed batch dimension that differs from `batch_size` raises `BatchNotSupported`: rewriting it
    on a copy is unsound for graphs that bake the batch into Reshape shapes (mnist_cntk does), so
    bench reports the row as skipped instead.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        if not info.shape:
            raise InputError(f"input {info.describe()} is a scalar; latency needs batched inputs")
        first = info.shape[0]
        if isinstance(first, int) and first > 0 and first != batch_size:
            raise BatchNotSupported(f"fixed batch {first} ({info.describe()})")
        shape = resolve_shape(info, shapes)
        feeds[info.name] = _random(rng, (batch_size, *shape[1:]), info.dtype)
    return feeds


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise InputError(f"cannot make random data of type {dtype.name}")


def _feeds_from(engine: Any, feeds_or_shapes: Mapping[str, Any] | None, batch_size: int) -> dict[str, np.ndarray]:
    if feeds_or_shapes is None:
        return synthetic_feeds(engine.input_specs, batch_size)
    rng = np.random.default_rng(0)
    specs = {info.name: info for info in engine.input_specs}
    unknown = [name for name in feeds_or_shapes if name not in specs]
    if unknown:
        raise InputError(f"feeds name {', '.join(unknown)}, which are not inputs of the model (inputs: {', '.join(specs)})")
    feeds = {}
    for name, info in specs.items():
        value = feeds_or_shapes.get(name)
        if value is None:
            raise InputError(f"no feed or shape for input {info.describe()}")
        array = value if isinstance(value, np.ndarray) else _random(rng, tuple(int(d) for d in value), info.dtype)
        fits = array.ndim == len(info.shape) and all(
            not (isinstance(want, int) and want > 0) or got == want for got, want in zip(array.shape, info.shape)
        )
        if not fits:
            raise InputError(f"feed for input {info.describe()} has shape {list(array.shape)}")
        feeds[name] = array
    return feeds


def measure_latency(
    model_path: str | Path,
    feeds_or_shapes: Mapping[str, Any] | None = None,
    *,
    runtime: str = "onnxruntime",
    threads: int | None = 2,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    batch_size: int = 1,
    settings: Any = None,
) -> LatencyResult:
    """Build `model_path` on `runtime` and time it.

    `feeds_or_shapes`: `{input: array}` or `{input: shape}` (random data of that shape), or None for
    random data at `batch_size` from the model's input shapes. `settings` (a `RuntimeSettings`)
    overrides `threads` when given.
    """
    settings = settings or RuntimeSettings(threads=threads, save_artifact=False)
    engine = get_runtime(runtime).build(Path(model_path), settings)
    try:
        feeds = _feeds_from(engine, feeds_or_shapes, batch_size)
        return engine.latency(feeds, warmup=warmup, runs=runs)
    finally:
        engine.close()


def time_interleaved(engines: Sequence[Any], feeds: Mapping[str, np.ndarray], *, rounds: int = 7,
                     seconds_per_turn: float = 0.05, max_runs_per_turn: int = 20) -> list[np.ndarray]:
    """Per engine, its median wall time (seconds) in each of `rounds` rounds. The engines take turns
    within a round, so drift (other work on the machine, clock changes) hits them alike and the
    per-round ratio of two engines is a fair comparison even where absolute times wander."""
    feeds = dict(feeds)
    single = []
    for engine in engines:
        engine.run(feeds)  # the first run allocates; not a time to compare
        single.append(min(time_calls(lambda e=engine: e.run(feeds), warmup=0, runs=2)))
    runs = max(1, min(max_runs_per_turn, int(seconds_per_turn / max(min(single), 1e-6))))
    per_round: list[list[float]] = [[] for _ in engines]
    for _ in range(rounds):
        for index, engine in enumerate(engines):
            per_round[index].append(float(np.median(time_calls(lambda e=engine: e.run(feeds), warmup=0, runs=runs))))
    return [np.asarray(times) for times in per_round]


# ---------------------------------------------------------------------------------------------
# Several models, several batch sizes: the table behind `tao-qc bench`.


@dataclass
class BenchRow:
    model: str
    batch_size: int
    result: LatencyResult | None = None
    ratio: float | None = None  # first model's median / this model's median: >1 is faster
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "batch_size": self.batch_size, "ratio": self.ratio, "note": self.note}
        timed = self.result.to_dict() if self.result else {"median_ms": None, "p90_ms": None, "throughput": None}
        out.update({k: v for k, v in timed.items() if k not in out})
        return out


@dataclass
class BenchTable:
    runtime: str
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "settings": self.settings, "rows": [row.to_dict() for row in self.rows]}

    def speed_against_first(self) -> float | None:
        """The last model's ratio against the first at the largest batch both were timed at (compile's
        table: the quantized model against FP32), or None where that was not timed."""
        models = list(dict.fromkeys(row.model for row in self.rows))
        if len(models) < 2:
            return None
        timed = [row for row in self.rows if row.model == models[-1] and row.ratio is not None]
        return max(timed, key=lambda row: row.batch_size).ratio if timed else None

    def render(self) -> Any:
        """A rich table: a row per model and batch size, the ratio against the first model."""
        from rich.table import Table

        cpu = self.settings.get("cpu") or {}
        on = f", {cpu['isa']}" + (f": {cpu['model']}" if cpu.get("model") else "") if cpu.get("isa") else ""
        table = Table(title=f"latency on {self.runtime} ({self.settings.get('threads')} threads, {self.settings.get('device')}{on})")
        for column in ("model", "batch", "median ms", "p90 ms", "samples/s", "ratio vs first"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in self.rows:
            if row.result is None:
                table.add_row(Path(row.model).name, str(row.batch_size), "-", "-", "-", f"skipped: {row.note}")
                continue
            r = row.result
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
            made_for = (cpu.get("compiled_for") or {}).get(row.model)
            table.add_row(Path(row.model).name + (f" (for {made_for})" if made_for else ""), str(row.batch_size), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:.1f}", ratio)
        return table


def bench_models(
    model_paths: Sequence[str | Path],
    batch_sizes: Sequence[int] = (1,),
    *,
    runtime: str = "onnxruntime",
    settings: Any = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    on_progress: Callable[[], None] | None = None,
    engines: Sequence[Any] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> BenchTable:
    """Time every model at every batch size with the same settings; ratios are against the first model.

    `engines`: already built engines for `model_paths` (same order) to reuse instead of building.
    `shapes`: `{input: full shape}` for dimensions the models leave open besides the batch.
    """
    settings = settings or RuntimeSettings(threads=2)
    if engines is None:
        backend = get_runtime(runtime)
        built: list[Any] = []
        try:
            for path in model_paths:
                built.append(backend.build(Path(path), settings))
            return bench_models(model_paths, batch_sizes, runtime=runtime, settings=settings, warmup=warmup, runs=runs,
                                on_progress=on_progress, engines=built)
        finally:
            for engine in built:
                engine.close()
    _check_same_inputs(engines)
    table = BenchTable(runtime, {**settings.to_dict(), "device": engines[0].device if engines else settings.device,
                                 "cpu": _cpu(model_paths)})
    for batch in batch_sizes:
        first: LatencyResult | None = None
        for index, engine in enumerate(engines):
            row = BenchRow(str(model_paths[index]), batch)
            try:
                feeds = synthetic_feeds(engine.input_specs, batch, shapes=shapes)
            except BatchNotSupported as exc:
                row.note = str(exc)
                log.warning("%s: batch %d skipped: %s", model_paths[index], batch, exc)
            else:
                row.result = engine.latency(feeds, warmup=warmup, runs=runs)
                if index == 0:
                    first = row.result
                if first is not None:
                    row.ratio = first.median_ms / row.result.median_ms
            table.rows.append(row)
            if on_progress:
                on_progress()
    return table


def _cpu(model_paths: Sequence[str | Path]) -> dict[str, Any]:
    """The CPU that times (figures hold for its instruction set) and what each model was compiled for."""
    import onnx

    here = this_machine()
    models = {}
    for path in model_paths:
        try:
            metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception:  # noqa: BLE001 - a runtime reads what onnx cannot (a TensorRT engine)
            metadata = {}
        models[str(path)] = compiled_for(metadata)
    return {"isa": here.isa, "model": here.model_name, "compiled_for": models}


def _check_same_inputs(engines: Sequence[Any]) -> None:
    """Models compared side by side must take the same inputs (names and per-sample shapes)."""
    if len(engines) < 2:
        return
    def signature(engine: Any) -> list[tuple[str, tuple]]:
        return [(i.name, tuple(d if isinstance(d, int) else "?" for d in i.shape[1:])) for i in engine.input_specs]

    reference = signature(engines[0])
    for engine in engines[1:]:
        if signature(engine) != reference:
            mine = ", ".join(i.describe() for i in engine.input_specs)
            theirs = ", ".join(i.describe() for i in engines[0].input_specs)
            raise InputError(f"{engine.model_path.name} takes {mine} but {engines[0].model_path.name} takes {theirs}: models must share inputs")
