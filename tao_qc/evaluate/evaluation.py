"""What compile measured of the saved model, as typed results, and what of it fails the run.

The comparison, the latency table and the kernel-fidelity check come from this package; the
accuracy outcome and the speed check from the layer above (tao_qc.accuracy, tao_qc.speed), which
this package cannot import: they enter as the small protocols below. report.json's sections are
`Evaluation.sections()`; `Evaluation.failures()` is the one place pass or fail is decided, for the
exit code and for report.json's `verdict` alike, from the objects themselves, never from a report
read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tao_qc.evaluate.kernel_fidelity import KernelFidelity
from tao_qc.evaluate.latency import BenchTable
from tao_qc.evaluate.results import ComparisonResult


class AccuracyVerdict(Protocol):
    """The accuracy check's outcome (tao_qc.accuracy.fallback.AccuracyOutcome)."""

    warnings: list[str]  # what the report should say besides pass or fail

    def failures(self) -> list[str]: ...

    @property
    def metric_decides(self) -> bool: ...  # a task metric was measured on the saved model

    def section(self) -> dict[str, Any]: ...


class SpeedSection(Protocol):
    """The speed check (tao_qc.speed.float_where_faster.SpeedCheck)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Evaluation:
    comparison: ComparisonResult | None = None
    latency: BenchTable | None = None
    kernel_fidelity: KernelFidelity | None = None
    accuracy: AccuracyVerdict | None = None
    speed: SpeedSection | None = None

    def failures(self) -> list[str]:
        """What fails the run, one sentence each (none: it passed).

        Without an accuracy metric the comparison's checks decide. With one (`accuracy.metric`), that
        metric on the comparison data decides, with only the comparison checks the user set
        explicitly (tolerances, `min_top1_agreement`) and NaN/Inf on top; fallback that ran out of
        `max_float_fraction` fails too. A kernel-fidelity verdict about another CPU than the one the
        model is compiled for fails nothing (`KernelFidelity.decides`)."""
        failures = list(self.accuracy.failures()) if self.accuracy is not None else []
        fidelity = self.kernel_fidelity
        if fidelity is not None and not fidelity.passed and fidelity.decides and fidelity.reason:
            failures.append(fidelity.reason)
        if self.comparison is not None and not self.comparison.passed:
            if self.accuracy is not None and self.accuracy.metric_decides:
                failures += [c.describe() for c in self.comparison.checks if not c.passed and not c.default]
            else:
                failures += self.comparison.failures
        return failures

    def warnings(self) -> list[str]:
        """What report.json's warnings add from these results."""
        return list(self.accuracy.warnings) if self.accuracy is not None else []

    def sections(self) -> dict[str, Any]:
        """report.json's sections for what was measured (none where nothing was)."""
        out: dict[str, Any] = {}
        if self.comparison is not None:
            out["comparison"] = self.comparison.to_dict()
            out["latency"] = self.latency.to_dict() if self.latency is not None else None
        if self.kernel_fidelity is not None:
            out["kernel_fidelity"] = self.kernel_fidelity.to_dict()
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.section()
        if self.speed is not None:
            out["speed"] = self.speed.to_dict()
        return out
