"""`tao-qc sensitivity`: the calibrating passes once, then the two-pass ranking of `search.rank_nodes`,
written as sensitivity.json and sensitivity.html beside each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tao_qc.accuracy.calibrated import CalibratedGraph
from tao_qc.accuracy.executors import make_executor
from tao_qc.accuracy.fallback import (
    TrialSetups,
    accuracy_data,
    needs_held_back_data,
    quantized_candidates,
)
from tao_qc.accuracy.metrics import target_for
from tao_qc.accuracy.search import rank_nodes
from tao_qc.console import progress
from tao_qc.errors import InputError
from tao_qc.fileio import atomic_write_text, staged_dir
from tao_qc.passes import calibrating_passes
from tao_qc.pipeline import PassContext, Pipeline
from tao_qc.report.pictures import sensitivity_html
from tao_qc.spec import load_spec


def measure_sensitivity(model_path: str | Path, spec: Any, results_dir: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    spec = load_spec(spec).for_onnx_pipeline()
    source = Path(model_path).expanduser().resolve()
    if not source.is_file():
        raise InputError(f"model {source} does not exist")
    final = Path(results_dir or Path.cwd() / f"{source.stem}.sensitivity").expanduser().resolve()
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "sensitivity.json").is_file())):
        raise InputError(f"{final} is not an empty folder or an earlier sensitivity result (give another with -o)")
    with staged_dir(final) as stage:
        ctx = PassContext(spec=spec, work_dir=stage, source_path=source)
        ctx.facts["hold_back_for_accuracy"] = needs_held_back_data(spec)
        calibrated = Pipeline(calibrating_passes(spec, source_path=source)).run(None, ctx)
        graph = CalibratedGraph.take(calibrated.model, ctx, stage)
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
        result = {"model": str(source), "data": data.batches.describe(), "fp32": executor.fp32_value,
                  "quantized_full": quantized.value, **sensitivity.to_dict()}
        atomic_write_text(stage / "sensitivity.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(stage / "sensitivity.html", sensitivity_html(result, f"Sensitivity of {source.name}"))
    return result, final
