"""How fast the quantized model runs against FP32 on this CPU, where the time goes when it is
slower, and (`speed: search`) which classes of quantized units to keep in float because they run
faster so.

INT8 is not faster everywhere: on CPUs without VNNI ORT's integer kernels multiply in 16 bits, and
on any CPU a depthwise or few-channel Conv does little work for the QuantizeLinear and
DequantizeLinear around it. Which units lose is a property of the runtime, the CPU and the shapes,
so it is measured, not assumed:

1. FP32 and the finished INT8 model are timed in interleaved rounds on this machine (`check`).
2. `search`: for each class of unit (`unit_classes`), the model is finished again from the
   calibrated graph with that class in float (`KeepFloat`'s `float_for_speed`, the same graph
   surgery as accuracy fallback) and timed against the model kept so far. A class stays float where
   that is faster by `MIN_GAIN` at the median round and slower at no batch size. The classes kept
   must then win a second time: the model with all of them float, timed afresh against the all-INT8
   one, faster by `MIN_GAIN` again, or none stays float (one lucky round is not a decision).
3. `auto` (the default) searches only where the INT8 model is not clearly faster than FP32 (under
   `SEARCH_BELOW` at some batch): a user gets the faster of the placements the search could measure
   where it matters, and a model well ahead of FP32 does not depend on timings. `TAO_QC_SPEED=check`
   makes `auto` mean `check` (builds that must not depend on timings: a build machine, the test suite).
4. Where the result is still slower than FP32, ORT's profiler gives the time per op type of both
   models: the report's answer to "why".

Nodes in float only move the model toward FP32, so the search costs no accuracy the comparison
after it does not show.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.errors import InputError
from tao_qc.evaluate.latency import time_interleaved
from tao_qc.passes import finishing_passes
from tao_qc.pipeline import PassContext, Pipeline, save_model
from tao_qc.runtimes.base import RuntimeSettings
from tao_qc.runtimes.onnxruntime import time_by_op_type
from tao_qc.runtimes.registry import get_runtime
from tao_qc.spec import QuantizeSpec
from tao_qc.speed.unit_classes import unit_classes

log = logging.getLogger("tao_qc.speed")

# Below a 4% gain at the median round, two timings of the same model on a busy 2-core machine
# disagree as often as not: keeping float for less would trade INT8's size for noise.
MIN_GAIN = 1.04
# A class that is faster at one batch size may be slower at another; this much slower anywhere vetoes it.
MAX_LOSS = 0.98
# Two timings of one model in interleaved rounds differ by up to 3% here: a model within that of
# FP32's speed is as fast, not slower.
AS_FAST = 0.97
# The second win a search's float classes need, all of them together against the all-INT8 model.
CONFIRM_GAIN = MIN_GAIN
# `speed: auto` searches where INT8 runs under this at some batch. A held-out PicoDet-style detector
# read 0.92-1.01x FP32 by default on an AVX2 EPYC and 1.13x with its two stem Convs float: near FP32's
# speed is where a class in float can win. A model well ahead of FP32 is left as placed, so that its
# compile does not depend on timings.
SEARCH_BELOW = 1.2
ENVIRONMENT_VARIABLE = "TAO_QC_SPEED"


def effective_mode(setting: str) -> str:
    """`quantize.onnxruntime.speed` as it runs: `auto` is what TAO_QC_SPEED names where it is set."""
    if setting == "auto" and (named := os.environ.get(ENVIRONMENT_VARIABLE, "").strip()):
        if named not in ("auto", "check", "search", "off"):
            raise InputError(f"{ENVIRONMENT_VARIABLE}={named} is not a speed mode (valid: auto, check, search, off)")
        return named
    return setting


@dataclass
class ClassTrial:
    label: str
    nodes: list[str]
    speedup: dict[int, float]  # batch -> median over rounds of INT8 time / float time (>1: float is faster)
    kept_float: bool

    @property
    def reason(self) -> str:
        return f"{self.label} run faster in float on this CPU ({_at(self.speedup)})"


@dataclass
class SpeedCheck:
    mode: str  # check | search
    cpu: str
    threads: int
    batches: list[int]
    int8_vs_fp32: dict[int, float] = field(default_factory=dict)  # batch -> FP32 time / INT8 time, before the search
    searched: bool = False
    trials: list[ClassTrial] = field(default_factory=list)
    final_vs_fp32: dict[int, float] = field(default_factory=dict)  # the same after it
    # Where the model stays slower than FP32: ms per run per op type, ORT's profiler at batch 1.
    profile: dict[str, dict[str, float]] | None = None
    seconds: float = 0.0
    search_reason: str | None = None  # `auto`: why it searched, or why it did not
    # The search's float classes together against the all-INT8 model, timed afresh (>1: faster),
    # and whether that second win held (None: nothing to confirm).
    confirmation: dict[int, float] = field(default_factory=dict)
    confirmed: bool | None = None

    @property
    def float_for_speed(self) -> dict[str, str]:
        if self.confirmed is False:
            return {}
        return {node: trial.reason for trial in self.trials if trial.kept_float for node in trial.nodes}

    @property
    def slower_than_fp32(self) -> bool:
        return bool(self.final_vs_fp32) and min(self.final_vs_fp32.values()) < AS_FAST

    def why_slower(self) -> str | None:
        """One sentence: where the time goes, and what was tried."""
        if not self.slower_than_fp32:
            return None
        parts = []
        if self.profile:
            int8, fp32 = self.profile["int8"], self.profile["fp32"]
            moves = sum(ms for op, ms in int8.items() if op in ("QuantizeLinear", "DequantizeLinear", "Transpose",
                                                                 "ReorderInput", "ReorderOutput"))
            integer = sum(ms for op, ms in int8.items() if op.startswith(("QLinear", "MatMulInteger", "ConvInteger")))
            dense = sum(ms for op, ms in fp32.items() if op in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul"))
            parts.append(f"ORT's integer kernels take {integer:.2f} ms a run where FP32's Conv/Gemm/MatMul take "
                         f"{dense:.2f} ms, and the quantized model's Q/DQ and layout changes add {moves:.2f} ms "
                         "(batch 1, ORT's profiler)")
        slower = [t.label for t in self.trials if not t.kept_float and _mean(t.speedup) < 1.0]
        little = [t.label for t in self.trials if not t.kept_float and _mean(t.speedup) >= 1.0]
        if self.confirmed is False:
            parts.append(f"the classes the search kept float ran at {_at(self.confirmation)} the INT8 model's speed "
                         "when timed again, so none stays float")
        if slower:
            parts.append("with " + " or ".join(slower) + " in float it ran slower still")
        if little:
            parts.append(" and ".join(little) + f" in float gained under {100 * (MIN_GAIN - 1):.0f}%")
        return "; ".join(parts) or None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["nodes_kept_float"] = len(self.float_for_speed)
        out["why_slower"] = self.why_slower()
        for row in out["trials"]:
            row["speedup"] = {str(b): v for b, v in row["speedup"].items()}
        for key in ("int8_vs_fp32", "final_vs_fp32", "confirmation"):
            out[key] = {str(b): v for b, v in out[key].items()}
        return out


def search_float_classes(spec: QuantizeSpec, base: CalibratedGraph, current: Path, fp32: Path,
                         feeds_by_batch: dict[int, dict[str, np.ndarray]], folder: Path, cpu: str,
                         *, rounds: int = 7, mode: str = "search") -> SpeedCheck:
    """`speed: search`: time `current` (finished from `base`) against FP32, then each class of its
    quantized compute nodes in float against the model kept so far; the classes that are faster stay
    float (`SpeedCheck.float_for_speed`) where, all together, they are faster again in a fresh timing
    against `current`. `mode="auto"`: the classes only where `current` runs under `SEARCH_BELOW` at
    some batch. `time_against_fp32` measures the saved model after."""
    started = time.perf_counter()
    settings = RuntimeSettings(save_artifact=False)
    result = SpeedCheck(mode=mode, cpu=cpu, threads=settings.intra_op_threads, batches=sorted(feeds_by_batch))
    backend = get_runtime("onnxruntime")
    reference, kept = backend.build(fp32, settings), backend.build(current, settings)
    original = kept
    try:
        result.int8_vs_fp32 = _speedups(reference, kept, feeds_by_batch, rounds)
        log.info("speed: the quantized model runs at %s FP32's speed", _at(result.int8_vs_fp32))
        result.searched = mode != "auto" or min(result.int8_vs_fp32.values()) < SEARCH_BELOW
        if mode == "auto":
            result.search_reason = (f"searched: INT8 ran under {SEARCH_BELOW:g}x FP32's speed ({_at(result.int8_vs_fp32)})"
                                    if result.searched else
                                    f"not searched: INT8 runs at {SEARCH_BELOW:g}x FP32's speed or more")
        keep_float = dict(base.facts.get("keep_float") or {})
        quantized = {d.unit.name for d in base.facts.get("decisions") or [] if d.quantized} - set(keep_float)
        for index, unit in enumerate(unit_classes(base.model(), quantized) if result.searched else []):
            chosen = {**result.float_for_speed, **{node: unit.label for node in unit.nodes}}
            candidate_path = folder / f"float-where-faster-{index}.onnx"
            save_model(_finished(spec, base, chosen, folder), candidate_path)
            candidate = backend.build(candidate_path, settings)
            speedup = _speedups(kept, candidate, feeds_by_batch, rounds)  # > 1: the float class is faster
            trial = ClassTrial(unit.label, list(unit.nodes), speedup,
                               _mean(speedup) >= MIN_GAIN and min(speedup.values()) >= MAX_LOSS)
            result.trials.append(trial)
            log.info("speed search: %s (%d) %s (%s)", unit.label, len(unit.nodes),
                     "kept in float" if trial.kept_float else "stay INT8", _at(speedup))
            if trial.kept_float:
                if kept is not original:
                    kept.close()
                kept = candidate
            else:
                candidate.close()
        if kept is not original:
            result.confirmation = _speedups(original, kept, feeds_by_batch, rounds)
            result.confirmed = _mean(result.confirmation) >= CONFIRM_GAIN and min(result.confirmation.values()) >= MAX_LOSS
            log.info("speed search: the classes kept float, timed again against INT8: %s (%s)", _at(result.confirmation),
                     "confirmed" if result.confirmed else "not confirmed: none stays float")
    finally:
        reference.close()
        if kept is not original:
            kept.close()
        original.close()
    result.seconds = time.perf_counter() - started
    return result


def time_against_fp32(saved: Path, fp32: Path, feeds_by_batch: dict[int, dict[str, np.ndarray]], cpu: str,
                      search: SpeedCheck | None = None, *, rounds: int = 7) -> SpeedCheck:
    """The saved model against FP32 in interleaved rounds (`speed: check`, and after a search), with
    ORT's time per op type of both where it is slower: what the report says about speed."""
    started = time.perf_counter()
    settings = RuntimeSettings(save_artifact=False)
    result = search or SpeedCheck(mode="check", cpu=cpu, threads=settings.intra_op_threads, batches=sorted(feeds_by_batch))
    backend = get_runtime("onnxruntime")
    reference, model = backend.build(fp32, settings), backend.build(saved, settings)
    try:
        result.final_vs_fp32 = _speedups(reference, model, feeds_by_batch, rounds)
    finally:
        reference.close()
        model.close()
    if not result.int8_vs_fp32:
        result.int8_vs_fp32 = dict(result.final_vs_fp32)
    log.info("speed: the saved model runs at %s FP32's speed", _at(result.final_vs_fp32))
    if result.slower_than_fp32:
        first = min(feeds_by_batch)
        result.profile = {"fp32": time_by_op_type(fp32, feeds_by_batch[first], settings),
                          "int8": time_by_op_type(saved, feeds_by_batch[first], settings)}
    result.seconds += time.perf_counter() - started
    return result


def _finished(spec: QuantizeSpec, base: CalibratedGraph, float_for_speed: dict[str, str], folder: Path) -> Any:
    facts = copy.deepcopy(base.facts)
    facts["float_for_speed"] = dict(float_for_speed)
    ctx = PassContext(spec=spec, work_dir=folder, facts=facts)
    return Pipeline(finishing_passes(spec, verify=False), check_invariants=False).run(base.model(), ctx).model


def _speedups(slow: Any, fast: Any, feeds_by_batch: dict[int, dict[str, np.ndarray]], rounds: int) -> dict[int, float]:
    """Per batch: the median over interleaved rounds of `slow`'s time / `fast`'s time."""
    out = {}
    for batch, feeds in sorted(feeds_by_batch.items()):
        slow_times, fast_times = time_interleaved([slow, fast], feeds, rounds=rounds)
        out[batch] = float(np.median(slow_times / fast_times))
    return out


def _mean(speedups: dict[int, float]) -> float:
    return math.exp(float(np.mean(np.log(list(speedups.values())))))


def _at(speedups: dict[int, float]) -> str:
    return ", ".join(f"{gain:.2f}x at batch {batch}" for batch, gain in speedups.items())
