"""The calibrated graph as quantize-modelopt (and clip-ranges) left it, kept for accuracy trials.

Fallback never calibrates again: every trial, and the final rebuild, starts from this graph and
the facts the finishing passes read. It lives in a folder of the staging directory and goes with it.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tao_qc.accuracy.trials import picklable_facts
from tao_qc.passes.choose_grids import ChooseGrids
from tao_qc.passes.clip_ranges import ClipRanges
from tao_qc.pipeline import PassContext, save_model


@dataclass
class CalibratedGraph:
    folder: Path
    path: Path
    facts: dict[str, Any]

    @classmethod
    def take(cls, model: Any, ctx: Any, stage: Path) -> CalibratedGraph:
        folder = Path(tempfile.mkdtemp(prefix=".accuracy-", dir=stage))
        return cls._saved(model, copy.deepcopy(picklable_facts(ctx.facts)), folder, "calibrated.onnx")

    @classmethod
    def _saved(cls, model: Any, facts: dict[str, Any], folder: Path, name: str) -> CalibratedGraph:
        path = folder / name
        save_model(model, path)
        return cls(folder, path, facts)

    def model(self) -> Any:
        import onnx_ir as ir

        model = ir.load(self.path)
        ir.external_data.load_to_model(model)
        return model

    def facts_with(self, keep_float: dict[str, str]) -> dict[str, Any]:
        facts = copy.deepcopy(self.facts)
        facts["keep_float"] = dict(keep_float)
        return facts

    def clipped(self, ctx: Any, percentile: float) -> tuple[CalibratedGraph, int]:
        """A copy with activation ranges clipped at `percentile` (tao_qc/passes/clip_ranges.py, one pass of
        the float graph over the calibration data), and how many ranges it narrowed."""
        facts = copy.deepcopy(self.facts)
        facts["clip_percentile"] = percentile
        work = PassContext(spec=ctx.spec, work_dir=self.folder, source_path=ctx.source_path,
                           calibration=ctx.calibration, facts=facts)
        result = ClipRanges().run(self.model(), work)
        return self._saved(result.model, work.facts, self.folder, f"clipped-{percentile:g}.onnx"), result.stats["ranges_clipped"]

    def on_symmetric_grids(self) -> CalibratedGraph | None:
        """The same graph with placement's uint8 grids over modelopt's +-amax (zero point 128) instead of
        the data's own bounds; None where it has none to drop. Only the facts differ: no file is written."""
        if not self.facts.get("activation_bounds"):
            return None
        facts = copy.deepcopy(self.facts)
        facts["activation_bounds"], facts["activation_bounds_widened"] = {}, {}
        return CalibratedGraph(self.folder, self.path, facts)

    def with_grids_chosen_on(self, ctx: Any, data: Any) -> CalibratedGraph | None:
        """The same graph with each activation's grid chosen on `data` (tao_qc/passes/choose_grids.py:
        the data's bounds or symmetric, per tensor); None where every tensor chose alike (a whole-model
        choice already covers it) or there is nothing to choose. Only the facts differ."""
        if not self.facts.get("activation_bounds"):
            return None
        work = PassContext(spec=ctx.spec, work_dir=self.folder, source_path=ctx.source_path, facts=copy.deepcopy(self.facts))
        ChooseGrids(data).run(self.model(), work)
        chosen = work.facts["grids_chosen"]
        if not 0 < len(chosen["symmetric"]) < chosen["measured"]:
            return None
        return CalibratedGraph(self.folder, self.path, work.facts)

    def transformed(self, ctx: Any, passes: list, name: str) -> CalibratedGraph:
        """A copy with `passes` run over it (accuracy fallback's ranges and corrections steps), with
        the calibration data as `ctx` holds it."""
        work = PassContext(spec=ctx.spec, work_dir=self.folder, source_path=ctx.source_path,
                           calibration=ctx.calibration, facts=copy.deepcopy(self.facts))
        model = self.model()
        for step in passes:
            model = step.run(model, work).model
        return self._saved(model, work.facts, self.folder, f"{name}.onnx")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
