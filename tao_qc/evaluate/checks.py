"""What must hold of a comparison (the check policy and its default thresholds; see
`tao_qc.evaluate.compare` for the rules in words)."""

from __future__ import annotations

from typing import Any

from tao_qc.evaluate.detection import DEFAULT_MAX_MAP_DROP, DEFAULT_MIN_MAP50_VS_FP32
from tao_qc.evaluate.results import Check, OutputMetrics
from tao_qc.spec import CompareSpec

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_MIN_COSINE = 0.99


def checks_for(metrics: OutputMetrics, settings: CompareSpec, *, boxes_checked: bool = False) -> list[Check]:
    """What `settings` asks of one output (see the module docstring for the defaults).

    `boxes_checked`: a detection check stands for the outputs, so no default cosine check."""
    checks = []
    tolerance_set = settings.atol is not None or settings.rtol is not None
    if metrics.nonfinite:
        checks.append(Check(metrics.name, "nonfinite", metrics.nonfinite, 0, False, "NaN/Inf in the candidate"))
    if tolerance_set:
        passed = bool(metrics.polygraphy_passed) if metrics.polygraphy_passed is not None else metrics.within_tolerance == 1.0
        checks.append(Check(metrics.name, "within_tolerance", metrics.within_tolerance or 0.0, 1.0, passed,
                            f"atol={settings.atol or 0:g}, rtol={settings.rtol or 0:g}"))
    if metrics.is_classifier and (settings.min_top1_agreement is not None or not tolerance_set):
        threshold = settings.min_top1_agreement if settings.min_top1_agreement is not None else DEFAULT_MIN_TOP1_AGREEMENT
        why = "min_top1_agreement" if settings.min_top1_agreement is not None else "default for classifier outputs"
        agreement = metrics.top1_agreement or 0.0
        checks.append(Check(metrics.name, "top1_agreement", agreement, threshold, agreement >= threshold, why))
    if not metrics.is_classifier and not tolerance_set and not boxes_checked:
        checks.append(Check(metrics.name, "cosine", metrics.cosine, DEFAULT_MIN_COSINE, metrics.cosine >= DEFAULT_MIN_COSINE,
                            "default for non-classifier outputs"))
    return checks


def detection_checks(section: dict[str, Any], settings: CompareSpec) -> list[Check]:
    """The default detection check (see the module docstring); none where mAP is undefined (FP32 finds
    nothing to compare against), and then the raw outputs keep their cosine checks."""
    if settings.atol is not None or settings.rtol is not None:
        return []
    if section.get("against") == "annotations":
        fp32 = (section.get("fp32") or {}).get("map")
        if fp32 is None or section.get("map") is None:
            return []
        floor = fp32 - DEFAULT_MAX_MAP_DROP
        return [Check("detections", "map", section["map"], floor, section["map"] >= floor,
                      f"default for detection: at most {DEFAULT_MAX_MAP_DROP:g} below FP32's {fp32:.4f}")]
    value = (section.get("vs_fp32") or {}).get("map50")
    if value is None:
        return []
    return [Check("detections", "map50_vs_fp32", value, DEFAULT_MIN_MAP50_VS_FP32, value >= DEFAULT_MIN_MAP50_VS_FP32,
                  "default for detection")]
