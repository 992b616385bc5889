"""Where trials run: in this process, in local worker processes, or on a Ray cluster.

Every executor loads a `TrialSetup` once per worker and then maps float sets to `TrialResult`s, in
order. Workers are fresh `python -m tao_qc.accuracy.worker` interpreters over a socket pair (as the
modelopt child is): multiprocessing's spawn would re-import the caller's `__main__`, re-running an
unguarded user script. Each worker's ONNX Runtime session uses one intra-op thread, so N workers
use N cores without oversubscribing them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from tao_qc.accuracy.trials import TrialResult, TrialRunner, TrialSetup
from tao_qc.accuracy.worker import packed, ray_actor_class
from tao_qc.errors import InputError, TaoQcError
from tao_qc.pipeline.child import start_child
from tao_qc.runtimes.base import physical_cores

log = logging.getLogger("tao_qc.accuracy")


class TrialError(TaoQcError):
    """A trial failed inside a worker."""


class Executor(Protocol):
    name: str
    workers: int

    def map(self, float_sets: Sequence[dict[str, str]], samples: Sequence[int] | None = None,
            on_result: Any = None) -> list[TrialResult]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Trials one after another in this process (one worker, or a single check)."""

    name = "inline"
    workers = 1

    def __init__(self, setup: TrialSetup):
        self.runner = TrialRunner(setup)

    @property
    def fp32_value(self) -> float:
        return self.runner.fp32_value

    def map(self, float_sets, samples=None, on_result=None):
        results = []
        for keep in float_sets:
            results.append(self.runner.run(keep, samples))
            if on_result:
                on_result(results[-1])
        return results

    def close(self) -> None:
        pass


class _Worker:
    def __init__(self, setup_path: Path):
        self.process, self.conn = start_child("tao_qc.accuracy.worker")
        self.conn.send(str(setup_path))

    def ready(self) -> float:
        return self._receive()

    def send(self, keep: dict[str, str], samples: Sequence[int] | None) -> None:
        self.conn.send((keep, None if samples is None else list(samples)))

    def _receive(self) -> Any:
        while not self.conn.poll(1.0):
            if self.process.poll() is not None:
                raise TrialError(f"an accuracy worker ended unexpectedly (exit code {self.process.returncode})")
        kind, payload = self.conn.recv()
        if kind == "input-error":
            raise InputError(f"{payload} (in an accuracy worker)")
        if kind == "error":
            raise TrialError(f"a trial failed: {payload}")
        return payload

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        try:
            self.process.wait(10)
        except Exception:  # noqa: BLE001 - a stuck worker is killed rather than waited on
            self.process.kill()


class LocalExecutor:
    """Worker processes on this machine."""

    name = "local"

    def __init__(self, setup: TrialSetup, workers: int, folder: Path):
        self.workers = workers
        path = setup.save(folder)
        self.pool = [_Worker(path) for _ in range(workers)]
        try:
            values = [worker.ready() for worker in self.pool]  # each has computed FP32's outputs
        except BaseException:
            self.close()  # the first worker's error is the one said; the others end with it
            raise
        self.fp32_value = values[0]

    def map(self, float_sets, samples=None, on_result=None):
        from multiprocessing.connection import wait

        def start(worker: _Worker, keep: dict[str, str]) -> Any:
            worker.send(keep, samples)
            return worker.conn

        def finished(running: dict[Any, _Worker]) -> Iterator[tuple[Any, TrialResult]]:
            for conn in wait(list(running), timeout=1.0):
                yield conn, running[conn]._receive()
            for worker in running.values():
                if worker.process.poll() is not None:
                    raise TrialError(f"an accuracy worker ended unexpectedly (exit code {worker.process.returncode})")

        return _dispatch(float_sets, self.pool, start, finished, on_result)

    def close(self) -> None:
        for worker in self.pool:
            worker.close()


class RayExecutor:
    """Actors on an existing Ray cluster (`ray_address`), each holding the setup once.

    The setup's files travel through Ray's object store, so cluster nodes need tao-qc installed but
    no shared filesystem.
    """

    name = "ray"

    def __init__(self, setup: TrialSetup, workers: int | None, address: str):
        try:
            import ray
        except ImportError:
            raise InputError("quantize.accuracy.executor: ray is not installed (pip install tao-qc[ray])") from None
        self.ray = ray
        if not ray.is_initialized():
            started = time.perf_counter()
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except ConnectionError as exc:
                raise InputError(f"quantize.accuracy.ray_address: no Ray cluster at {address!r} ({exc})") from None
            log.info("connected to Ray at %s in %.1f s", address, time.perf_counter() - started)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(workers or cpus, cpus))
        bundle = ray.put(packed(setup))
        actor = ray_actor_class(ray)
        self.actors = [actor.remote(bundle) for _ in range(self.workers)]
        try:
            self.fp32_value = ray.get([a.fp32_value.remote() for a in self.actors])[0]
        except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's exception
            self.close()
            raise _from_ray(exc, "an accuracy actor failed to start on Ray") from None

    def map(self, float_sets, samples=None, on_result=None):
        ray = self.ray

        def start(actor: Any, keep: dict[str, str]) -> Any:
            return actor.run.remote(keep, None if samples is None else list(samples))

        def finished(running: dict[Any, Any]) -> Iterator[tuple[Any, TrialResult]]:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                try:
                    yield ref, ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's exception
                    raise _from_ray(exc, "a trial failed on Ray") from None

        return _dispatch(float_sets, self.actors, start, finished, on_result)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


USER_ERROR_MARK = f"{InputError.__module__}.{InputError.__name__}: "


def _from_ray(exc: Exception, what: str) -> TaoQcError:
    """The error a Ray-wrapped exception stands for: the user's InputError as itself (one line), any
    other as a TrialError with its last line."""
    cause: BaseException | None = exc
    for _ in range(8):  # RayTaskError.cause, then __cause__: a short chain, never a cycle followed for ever
        if cause is None or isinstance(cause, InputError):
            break
        cause = getattr(cause, "cause", None) or cause.__cause__
    if isinstance(cause, InputError):
        return InputError(f"{str(cause).strip()} (on Ray)")
    lines = str(exc).strip().splitlines()
    # An actor that failed to start carries its error as text only.
    said = [line.split(USER_ERROR_MARK, 1)[1] for line in lines if USER_ERROR_MARK in line]
    if said:
        return InputError(f"{said[-1].strip()} (on Ray)")
    return TrialError(f"{what}: {lines[-1] if lines else type(exc).__name__}")


def _dispatch(float_sets: Sequence[dict[str, str]], workers: Sequence[Any],
              start: Callable[[Any, dict[str, str]], Any],
              finished: Callable[[dict[Any, Any]], Iterator[tuple[Any, TrialResult]]],
              on_result: Callable[[TrialResult], None] | None) -> list[TrialResult]:
    """Hand the float sets to idle workers in order and collect the results in that order.

    `start(worker, keep)` sends one trial and returns a handle to wait on; `finished(running)` (handle
    -> worker) waits for some of them and yields (handle, result) for each one done."""
    results: list[TrialResult | None] = [None] * len(float_sets)
    pending = list(enumerate(float_sets))
    running: dict[Any, tuple[Any, int]] = {}
    idle = list(workers)
    while pending or running:
        while pending and idle:
            worker = idle.pop()
            index, keep = pending.pop(0)
            running[start(worker, keep)] = (worker, index)
        for handle, result in finished({handle: worker for handle, (worker, _) in running.items()}):
            worker, index = running.pop(handle)
            results[index] = result
            idle.append(worker)
            if on_result:
                on_result(result)
    return results  # type: ignore[return-value]


def make_executor(setup: TrialSetup, accuracy: Any, folder: Path, *, trials: int) -> Any:
    """The executor `accuracy.executor` asks for, sized for `trials` trials."""
    if accuracy.executor == "ray":
        return RayExecutor(setup, accuracy.workers, accuracy.ray_address)
    workers = min(accuracy.workers or physical_cores(), max(1, trials))
    if workers <= 1:
        return InlineExecutor(setup)
    return LocalExecutor(setup, workers, folder)
