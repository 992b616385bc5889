"""Sensitivity ranking and the fallback search: the fewest nodes kept in float that reach the target.

From the fully quantized model (the direction of deployment):

1. One evaluation on the whole accuracy data. Target met: nothing else runs.
2. The ranking subset: the samples on which the quantized model strays furthest from FP32 (the
   largest error energy relative to the output's, `metrics.sample_errors`), `accuracy.ranking_samples`
   of them.
3. Sensitivity, two passes over the ranking subset (every trial in parallel): each node kept alone
   in float (its gain: how much that raises the metric from the fully quantized model) and each
   node quantized alone (its damage: how much that lowers it from the all-float model). Nodes are
   ranked by gain + damage: where plain INT8 breaks the task, no single node brings it back and the
   gains are flat; the damages still tell the culprits apart.
4. A binary search over the ranked prefix for the shortest one that reaches the target on the whole
   accuracy data, bounded by `max_float_fraction` (about log2 of the bound full evaluations).
   Where even the bound misses and every failing check is a proxy (`tao_qc.accuracy.proxy_noise`):
   the shortest prefix within the proxy's noise of the bound's value instead, none where the bound
   itself is within the noise of the fully quantized model: nodes that move a proxy by no more than
   the samples' chance are not kept float.
5. Putting nodes back: each node of the found set is tried back in quantized (those trials in
   parallel), then the ones that passed alone are put back one by one, confirming each, so the set
   that remains is minimal in that no single node of it can go back.

Every full evaluation is a step of the report (float nodes, value, whether the target was met), so
a user sees how the result was reached and what it cost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ContextManager

import numpy as np

from tao_qc.accuracy.metrics import Target
from tao_qc.accuracy.proxy_noise import WIDTH
from tao_qc.accuracy.trials import TrialResult
from tao_qc.evaluate.results import checks_in_words

log = logging.getLogger("tao_qc.accuracy")


@dataclass
class NodeSensitivity:
    """One node's share of the accuracy lost, measured from both ends on the ranking subset."""

    name: str
    type: str
    order: int  # position among the candidates, in graph order
    float_alone: float  # the metric with this node alone kept in float (every other candidate quantized)
    gain: float  # float_alone minus the fully quantized model's value: what keeping it float gives back
    quantized_alone: float  # the metric with this node alone quantized (every other candidate float)
    damage: float  # the all-float value minus quantized_alone: what quantizing it costs on its own
    cosine_score: float  # the same two measures on the output cosine to FP32 (breaks ties)

    @property
    def score(self) -> float:
        """Both ends summed: near the fully quantized model a broken task metric is flat (no single
        node brings it back), near the float model it is not; each end misses what the other sees."""
        return self.gain + self.damage


@dataclass
class Sensitivity:
    metric: str
    samples: int  # size of the ranking subset
    sample_indices: list[int]
    quantized_value: float  # every candidate quantized, on the ranking subset
    float_value: float  # every candidate in float, on the ranking subset
    nodes: list[NodeSensitivity] = field(default_factory=list)  # graph order
    seconds: float = 0.0

    def ranked(self) -> list[NodeSensitivity]:
        """Most helpful to keep in float first (ties: the output cosine, then graph order)."""
        return sorted(self.nodes, key=lambda n: (-n.score, -n.cosine_score, n.order))

    def to_dict(self) -> dict[str, Any]:
        ranks = {n.name: rank for rank, n in enumerate(self.ranked(), start=1)}
        return {"metric": self.metric, "samples": self.samples, "sample_indices": self.sample_indices,
                "quantized_value": self.quantized_value, "float_value": self.float_value,
                "seconds": round(self.seconds, 3),
                "nodes": [{**asdict(n), "score": n.score, "rank": ranks[n.name]} for n in self.nodes]}


@dataclass
class Step:
    phase: str  # check | search | put-back
    float_nodes: list[str]
    value: float
    met: bool
    in_words: str = ""  # with no metric: each check by name, value and floor (`checks_in_words`)

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "float_nodes": len(self.float_nodes), "nodes": self.float_nodes,
                "value": self.value, "met": self.met, "in_words": self.in_words}


@dataclass
class FallbackResult:
    target: str
    fp32_value: float
    quantized_value: float  # every selected node quantized
    reached: bool
    kept_float: list[str]  # the set chosen (minimal where the target was reached)
    value: float  # the metric with that set, on the accuracy data
    limit: int  # the most nodes max_float_fraction allows
    candidates: int
    sensitivity: Sensitivity | None = None
    steps: list[Step] = field(default_factory=list)
    full_evaluations: int = 0
    ranking_trials: int = 0
    seconds: float = 0.0
    executor: str = "inline"  # where the trials ran (local worker processes, Ray, this process)
    workers: int = 1
    # Where every failing check is a proxy and the target was out of reach: the noise the search
    # stopped within (two standard deviations of the value), and how many float nodes it stopped at.
    proxy_noise: float | None = None
    stopped_moving: int | None = None

    @property
    def ran(self) -> bool:
        return self.sensitivity is not None

    def to_dict(self) -> dict[str, Any]:
        gains = {n.name: n for n in self.sensitivity.nodes} if self.sensitivity else {}
        ranked = self.sensitivity.ranked() if self.sensitivity else []
        return {
            "target": self.target, "fp32": self.fp32_value, "quantized": self.quantized_value,
            "reached": self.reached, "value": self.value, "limit": self.limit, "candidates": self.candidates,
            "kept_float": [{"name": name, "gain": gains[name].gain, "damage": gains[name].damage,
                            "rank": ranked.index(gains[name]) + 1} if name in gains else {"name": name}
                           for name in self.kept_float],
            "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
            "steps": [s.to_dict() for s in self.steps],
            "evaluations": {"full": self.full_evaluations, "ranking_trials": self.ranking_trials},
            "seconds": round(self.seconds, 3), "executor": self.executor, "workers": self.workers,
            "proxy_noise": self.proxy_noise, "stopped_moving": self.stopped_moving,
        }


def fallback_reason(node: str, sensitivity: Sensitivity, metric: str) -> str:
    entry = next(n for n in sensitivity.nodes if n.name == node)
    rank = sensitivity.ranked().index(entry) + 1
    return (f"sensitivity rank {rank} of {len(sensitivity.nodes)}: float alone {metric} {entry.gain:+.4g}, "
            f"quantized alone {-entry.damage:+.4g} on the ranking samples")


def rank_nodes(executor: Any, candidates: Sequence[tuple[str, str]], quantized: TrialResult, samples: int,
               metric: str, on_result: Callable[[TrialResult], None] | None = None) -> Sensitivity:
    """Each candidate `(name, op type)` alone in float and alone quantized, on the `samples` samples
    where `quantized` (the fully quantized model's full evaluation) strays furthest from FP32: two
    passes over the ranking subset, every trial of both in parallel."""
    started = time.perf_counter()
    worst = np.argsort(-np.asarray(quantized.sample_error), kind="stable")[:samples]
    subset = sorted(int(i) for i in worst)
    names = [name for name, _ in candidates]
    every = {name: "sensitivity trial" for name in names}
    sets = [{}, every] + [{name: "sensitivity trial"} for name in names]
    sets += [{other: "sensitivity trial" for other in names if other != name} for name in names]
    results = executor.map(sets, subset, on_result=on_result)
    all_quantized, all_float = results[0], results[1]
    alone_float, alone_quantized = results[2:2 + len(names)], results[2 + len(names):]
    nodes = []
    for order, ((name, kind), up, down) in enumerate(zip(candidates, alone_float, alone_quantized)):
        cosine = (up.cosine - all_quantized.cosine) + (all_float.cosine - down.cosine)
        nodes.append(NodeSensitivity(name, kind, order, up.value, up.value - all_quantized.value, down.value,
                                     all_float.value - down.value, cosine))
    return Sensitivity(metric, len(subset), subset, all_quantized.value, all_float.value, nodes,
                       time.perf_counter() - started)


def search_fallback(executor: Any, target: Target, candidates: Sequence[tuple[str, str]], *, max_float_fraction: float,
                    ranking_samples: int, progress: Callable[[str, int], ContextManager[Any]] | None = None,
                    quantized: TrialResult | None = None) -> FallbackResult:
    """The fewest candidates kept in float that reach `target` on the accuracy data (see the module
    docstring). `quantized`: the fully quantized model's full evaluation, if already made."""
    started = time.perf_counter()
    fp32 = executor.fp32_value
    steps: list[Step] = []
    full = 0

    def evaluate(sets: list[list[str]], phase: str) -> list[TrialResult]:
        nonlocal full
        results = executor.map([{name: reasons.get(name, "accuracy fallback") for name in chosen} for chosen in sets])
        full += len(sets)
        for chosen, result in zip(sets, results):
            steps.append(Step(phase, list(chosen), result.value, target.met(result.value, fp32),
                              checks_in_words(result.checks)))
            log.info("%s: %d nodes in float: %s (%s)", phase, len(chosen),
                     steps[-1].in_words or f"{target.name} {result.value:.5g}",
                     "target met" if steps[-1].met else "target missed")
        return results

    reasons: dict[str, str] = {}
    if quantized is None:
        quantized = evaluate([[]], "check")[0]
    else:
        steps.append(Step("check", [], quantized.value, target.met(quantized.value, fp32), checks_in_words(quantized.checks)))
    limit = int(math.floor(max_float_fraction * len(candidates)))
    result = FallbackResult(target.describe(fp32), fp32, quantized.value, steps[-1].met, [], quantized.value, limit,
                            len(candidates), steps=steps)
    if result.reached:
        result.full_evaluations, result.seconds = full, time.perf_counter() - started
        return result

    trials = 2 * len(candidates) + 2
    with (progress or _no_progress)("ranking nodes by sensitivity", trials) as bar:
        sensitivity = rank_nodes(executor, candidates, quantized, ranking_samples, target.name,
                                 on_result=lambda _result: bar.advance())
    result.sensitivity, result.ranking_trials = sensitivity, trials
    order = [n.name for n in sensitivity.ranked()]
    reasons.update({name: fallback_reason(name, sensitivity, target.name) for name in order})

    best: tuple[list[str], float, bool] = ([], quantized.value, False)

    def consider(chosen: list[str], value: float, met: bool) -> None:
        nonlocal best
        if (met, -len(chosen) if met else value) > (best[2], -len(best[0]) if best[2] else best[1]):
            best = (list(chosen), value, met)

    if limit == 0:
        return _finish(result, best, full, started)
    top = evaluate([order[:limit]], "search")[0]
    consider(order[:limit], top.value, target.met(top.value, fp32))
    if not target.met(top.value, fp32):
        log.warning("keeping the %d most sensitive nodes in float (max_float_fraction %.2f) still misses the target",
                    limit, max_float_fraction)
        if quantized.noise > 0:
            best = _where_the_proxy_stops_moving(result, order, quantized, top, evaluate, target)
        return _finish(result, best, full, started)
    low, high = 0, limit  # prefix of `low` nodes misses (the fully quantized model), `high` meets
    while high - low > 1:
        middle = (low + high) // 2
        trial = evaluate([order[:middle]], "search")[0]
        met = target.met(trial.value, fp32)
        consider(order[:middle], trial.value, met)
        low, high = (low, middle) if met else (middle, high)
    chosen = order[:high]

    if len(chosen) > 1:
        singles = evaluate([[n for n in chosen if n != name] for name in chosen], "put-back")
        removable = [(name, r.value) for name, r in zip(chosen, singles) if target.met(r.value, fp32)]
        removable.sort(key=lambda item: -item[1])
        if removable:
            first, value = removable[0]
            chosen = [n for n in chosen if n != first]
            consider(chosen, value, True)
            for name, _ in removable[1:]:
                attempt = [n for n in chosen if n != name]
                trial = evaluate([attempt], "put-back")[0]
                if target.met(trial.value, fp32):
                    chosen = attempt
                    consider(chosen, trial.value, True)
    return _finish(result, best, full, started)


def _where_the_proxy_stops_moving(result: FallbackResult, order: list[str], quantized: TrialResult, top: TrialResult,
                                  evaluate: Callable[[list[list[str]], str], list[TrialResult]],
                                  target: Target) -> tuple[list[str], float, bool]:
    """Where every failing check is a proxy and even `top` (the `limit` most sensitive nodes float)
    misses it: the shortest ranked prefix whose value is within the proxy's noise of `top`'s, none
    where `top` itself is within the noise of `quantized` (`tao_qc.accuracy.proxy_noise`). Nodes
    past that point buy a proxy's value the samples cannot tell from chance, at a cost in speed.
    A shorter prefix that happens to meet the target (the proxy need not rise with every node) is
    taken as found."""
    width = WIDTH * quantized.noise
    result.proxy_noise = width
    if top.value - quantized.value <= width:
        log.info("no float node moves the checks beyond their noise (+-%.3g): every node stays quantized", width)
        result.stopped_moving = 0
        return [], quantized.value, False
    low, high = 0, result.limit  # a prefix of `low` nodes falls short of top's value by more than the noise, `high` does not
    value = top.value
    while high - low > 1:
        middle = (low + high) // 2
        trial = evaluate([order[:middle]], "search")[0]
        if target.met(trial.value, result.fp32_value):
            return order[:middle], trial.value, True
        if trial.value >= top.value - width:
            high, value = middle, trial.value
        else:
            low = middle
    log.info("the checks stop moving beyond their noise (+-%.3g) at %d float nodes", width, high)
    result.stopped_moving = high
    return order[:high], value, False


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[Any]:
    class _Silent:
        def advance(self, n: int = 1) -> None:
            pass

    yield _Silent()


def _finish(result: FallbackResult, best: tuple[list[str], float, bool], full: int, started: float) -> FallbackResult:
    result.kept_float, result.value, result.reached = best
    result.full_evaluations, result.seconds = full, time.perf_counter() - started
    return result
