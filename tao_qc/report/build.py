"""report.json: what a compile did (the spec as read, each decision and why, pass records, counts,
timings, library versions); the comparison, latency and accuracy sections are added beside it."""

from __future__ import annotations

from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from tao_qc.pipeline import PassContext, PassRecord, format_summary
from tao_qc.spec import QuantizeSpec
from tao_qc.spec.cpu import resolve, this_machine

_VERSIONED = ("tao-qc", "onnx", "onnx-ir", "onnxscript", "onnxruntime-gpu", "onnxruntime", "nvidia-modelopt", "numpy")


def cpu_section(spec: QuantizeSpec) -> dict[str, Any]:
    """The CPU the model was compiled for (target onnxruntime) and the one that measured it."""
    target = None
    if spec.target == "onnxruntime":
        target = {"asked": spec.onnxruntime.cpu, **resolve(spec.onnxruntime.cpu).as_dict()}
    return {"target": target, "this_machine": this_machine().as_dict()}


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_report(spec: QuantizeSpec, source: Path, output: Path, records: list[PassRecord], ctx: PassContext, seconds: float) -> dict[str, Any]:
    decisions = ctx.facts.get("decisions") or []
    declined = ctx.facts.get("declined") or {}
    rows = []
    for decision in decisions:
        row = decision.as_dict()
        row["reason"] = decision.reason
        if decision.unit.name in declined:
            row["declined_by_backend"] = declined[decision.unit.name]
        rows.append(row)
    quantized = [d for d in decisions if d.quantized and d.unit.name not in declined]
    calibration = ctx.calibration
    return {
        "tool": "tao-qc compile",
        "model": str(source),
        "output": str(output),
        "spec": spec.normalized(),
        "spec_file": spec.source,
        "quantize_mode": ctx.facts.get("quantize_mode"),
        "float_dtype": ctx.facts.get("float_dtype"),  # what everything not quantized is stored in
        "opset": ctx.facts.get("opset"),
        "calibration": {
            "data": calibration.describe() if calibration is not None else None,
            "random": bool(calibration.is_random) if calibration is not None else None,
            "samples": calibration.num_samples if calibration is not None else None,
        },
        "modelopt": ctx.facts.get("modelopt_settings"),
        "cpu": cpu_section(spec),
        "counts": {
            "candidates": len(decisions),
            "quantized": len(quantized),
            "kept_float": len(decisions) - len(quantized),
            "declined_by_backend": len(declined),
            # What each compute node runs in: its dtype where quantized, else native.
            "dtypes": dict(sorted(Counter(d.activations if d.quantized and d.unit.name not in declined else "native"
                                          for d in decisions).items())),
            "nodes": records[-1].nodes if records else 0,
            "ops": records[-1].op_counts if records else {},
        },
        "decisions": rows,
        "warnings": [f"pattern {p} matches nothing" for p in ctx.facts.get("unmatched_patterns", [])]
        + [f"pattern {p} matches only nodes that cannot be quantized" for p in ctx.facts.get("patterns_only_other_types", [])]
        + [f"{name}: {why}" for name, why in declined.items()],
        "passes": [r.as_dict() for r in records],
        "timings": {"total_s": round(seconds, 3), **{name: round(sum(r.seconds for r in records if r.name == name), 4)
                                                     for name in dict.fromkeys(r.name for r in records)},
                    "modelopt": {k: round(v, 4) for k, v in (ctx.facts.get("modelopt_timing") or {}).items()}},
        "summary": format_summary(records, timings=False),
        "versions": library_versions(),
        **corrections_report(ctx.facts),
    }


def corrections_report(facts: dict[str, Any]) -> dict[str, Any]:
    """What `algorithm: auto` chose per activation and what each weight correction did per node
    (only where they ran)."""
    out: dict[str, Any] = {}
    choices = facts.get("range_choices")
    if choices:
        out["ranges"] = {
            "chosen": {method: sum(1 for c in choices.values() if c["method"] == method)
                       for method in dict.fromkeys(c["method"] for c in choices.values())},
            "tensors": [{"tensor": name, **choice} for name, choice in choices.items()],
        }
    if facts.get("corrections"):
        out["corrections"] = facts["corrections"]
    return out
