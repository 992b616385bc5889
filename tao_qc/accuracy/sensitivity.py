"""Sensitivity ranking: from the calibrated graph, the two-pass ranking of `search.rank_nodes` (how
much each quantized node alone costs the target metric). `tao_qc.driver.measure_sensitivity` runs
the calibrating passes and writes the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.accuracy.executors import make_executor
from tao_qc.accuracy.fallback import TrialSetups, accuracy_data, quantized_candidates
from tao_qc.accuracy.metrics import target_for
from tao_qc.accuracy.search import rank_nodes
from tao_qc.console import progress
from tao_qc.pipeline import PassContext
from tao_qc.spec import QuantizeSpec


def rank_sensitivity(spec: QuantizeSpec, source: Path, model: Any, ctx: PassContext, stage: Path) -> dict[str, Any]:
    """The ranking of the calibrated `model`'s quantized nodes, as sensitivity.json holds it."""
    graph = CalibratedGraph.take(model, ctx, stage)
    data = accuracy_data(spec, source, ctx.calibration, ctx.held_back)
    setup = TrialSetups(spec, source, data, graph.folder)(graph)
    candidates = quantized_candidates(graph.facts)
    target = target_for(spec, setup.search_path)
    executor = make_executor(setup, spec.accuracy, graph.folder, trials=2 * len(candidates) + 2)
    try:
        quantized = executor.map([{}])[0]
        with progress("ranking nodes by sensitivity", 2 * len(candidates) + 2) as bar:
            sensitivity = rank_nodes(executor, candidates, quantized, spec.accuracy.ranking_samples, target.name,
                                     on_result=lambda _result: bar.advance())
    finally:
        executor.close()
    graph.discard()
    return {"model": str(source), "data": data.batches.describe(), "fp32": executor.fp32_value,
            "quantized_full": quantized.value, **sensitivity.to_dict()}
