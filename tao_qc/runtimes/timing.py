"""How a runtime times itself: the timing loop and its statistics (`Engine.latency` uses them; the
multi-model table behind `tao-qc bench` is `tao_qc.evaluate.latency`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tao_qc.errors import InputError


@dataclass
class LatencyResult:
    """Timing of one model at one batch size. Times are per batch, in milliseconds."""

    median_ms: float
    p90_ms: float
    throughput: float  # samples per second at the median
    batch_size: int = 1
    mean_ms: float = 0.0
    min_ms: float = 0.0
    runs: int = 0
    warmup: int = 0
    model: str = ""
    runtime: str = ""
    threads: int | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(times_s: Sequence[float], batch_size: int, **info: Any) -> LatencyResult:
    """Statistics of per-batch wall times in seconds (a pure function)."""
    if not len(times_s):
        raise ValueError("no timed runs")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return LatencyResult(
        median_ms=median,
        p90_ms=float(np.percentile(ms, 90)),
        throughput=float(batch_size * 1e3 / median) if median > 0 else float("inf"),
        batch_size=batch_size,
        mean_ms=float(ms.mean()),
        min_ms=float(ms.min()),
        runs=len(ms),
        **info,
    )


def time_calls(call: Callable[[], Any], *, warmup: int, runs: int, sync: Callable[[], Any] | None = None) -> list[float]:
    """Wall time of each of `runs` calls after `warmup` untimed ones; `sync` ends each timed call
    (a device synchronize for asynchronous runtimes)."""
    if runs < 1:
        raise InputError(f"--runs: {runs} timed runs is too few (valid: 1 or more)")
    for _ in range(max(warmup, 0)):
        call()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times
