"""What a person reads first about a compile, in this order, for report.html's first row and the
terminal summary alike: the user's accuracy target, the nodes in INT8 and in float (and why), the
speed against FP32 on the target CPU, the kernel-fidelity result. Then the default checks, which are
marked as such: once the user sets `accuracy.metric` they are shown but decide nothing.

Plain functions of the report.json dict (old reports too: every key is optional)."""

from __future__ import annotations

from collections import Counter
from typing import Any


def is_default_check(check: Any) -> bool:
    """A check the user did not ask for. Reads the `default` field where results carry one, else the
    `why` text that has said "default ..." since checks existed."""
    flag = check.get("default") if isinstance(check, dict) else getattr(check, "default", None)
    if flag is not None:
        return bool(flag)
    why = check.get("why") if isinstance(check, dict) else getattr(check, "why", "")
    return str(why or "").startswith("default")


def user_set_target(report: dict[str, Any]) -> bool:
    """Whether the spec names an accuracy metric or a bound (`accuracy.metric`, `min`, `max_drop`)."""
    accuracy = (report.get("spec") or {}).get("accuracy") or {}
    return any(accuracy.get(key) is not None for key in ("metric", "min", "max_drop"))


def accuracy_target(report: dict[str, Any]) -> dict[str, Any] | None:
    """The user's target: metric, value of the saved model, FP32's value, the target in words, met
    (True, False, None: not measured), on what data. None where the user set no target."""
    section = report.get("accuracy") or {}
    if not user_set_target(report) or not section:
        return None
    final = section.get("final") or {}
    if final.get("value") is not None:
        # The saved model measured on the comparison data: what raise_if_failed decides by.
        return {"metric": final.get("metric") or section.get("metric"), "value": final["value"], "fp32": final.get("fp32"),
                "target": final.get("target"), "met": final.get("met"), "data": final.get("data"),
                "note": final.get("note")}  # e.g. measured on the accuracy data, where only it has labels
    # Not measured on the comparison data: the accuracy data's figure for the model that was saved.
    search = section.get("search") or {}
    if search.get("sensitivity"):
        value = search.get("value")
    else:
        kept = [step for step in section.get("steps") or [] if step.get("kept")]
        clipping = section.get("clipping") or {}
        value = (kept[-1].get("value") if kept else clipping.get("value") if clipping.get("kept")
                 else section.get("quantized"))
    note = final.get("error")  # a sentence saying where the final measure failed
    return {"metric": section.get("metric"), "value": value, "fp32": section.get("fp32"), "target": section.get("target"),
            "met": section.get("reached"), "data": section.get("data"), "note": note}


def target_in_words(target: dict[str, Any]) -> str:
    """The target without the metric's name in front ("Target.describe" writes "<metric> >= 0.9281
    (FP32 0.9381 - 0.01)"): where it is shown the metric is named already."""
    return str(target.get("target") or "").removeprefix(str(target.get("metric") or "")).strip()


def verdict(report: dict[str, Any]) -> dict[str, Any] | None:
    """Whether the run passed what decides it (report.json's `verdict`, written by compile from the
    same function that sets the exit code); reports from before it: the comparison's own verdict."""
    if report.get("verdict"):
        return report["verdict"]
    comparison = report.get("comparison")
    if not comparison or not defaults_decide(report):
        return None  # an older report where a metric decided: its verdict was not recorded
    return {"passed": bool(comparison.get("passed")), "failures": list(comparison.get("failures") or []), "fails_run": None}


def node_counts(report: dict[str, Any]) -> dict[str, Any] | None:
    """Compute nodes by what they run in, and the reasons the float ones are float (most common first)."""
    decisions = report.get("decisions") or []
    if not decisions:
        return None
    kept_by_fallback = {k.get("name") for k in ((report.get("accuracy") or {}).get("kept_float") or [])}
    dtypes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for decision in decisions:
        runs_quantized = bool(decision.get("quantized")) and not decision.get("declined_by_backend")
        if runs_quantized:
            dtypes[dtype_label(decision)] += 1
            continue
        dtypes["float"] += 1
        reasons[float_reason(decision, kept_by_fallback)] += 1
    quantized = sum(n for dtype, n in dtypes.items() if dtype != "float")
    return {"total": len(decisions), "quantized": quantized, "float": dtypes.get("float", 0),
            "dtypes": {dtype: n for dtype, n in dtypes.most_common() if dtype != "float"},
            "float_reasons": dict(reasons.most_common())}


def dtype_label(decision: dict[str, Any]) -> str:
    """What a quantized node runs in: its activations' dtype, or its weights' where only they are."""
    activations, weights = decision.get("activations"), decision.get("weights")
    if activations and activations != "native":
        return str(activations) if weights in (activations, None, "native") else f"{activations} ({weights} weights)"
    return f"{weights} weights only"


def float_reason(decision: dict[str, Any], kept_by_fallback: set[str] = frozenset()) -> str:
    """Why a compute node runs in float, in a few words that group nodes (the details are per node)."""
    if decision.get("name") in kept_by_fallback or str(decision.get("weights_rule") or "").startswith("accuracy fallback"):
        return "accuracy fallback"
    if decision.get("declined_by_backend"):
        return "left in float by the backend"
    if decision.get("skipped_by"):
        return "excluded by skip_names"
    rule = str(decision.get("weights_rule") or "")
    if rule.startswith("layers["):
        return "kept native by a layers entry"
    if rule.startswith("default: "):
        # tao-qc's own defaults ("default: attention-style MatMul (both inputs ...) stays in float ..."):
        # the words before the parenthesis name the kind of node.
        return f"{rule.removeprefix('default: ').split(' (')[0]} (float by default)"
    return rule.split(" (")[0] or "not selected"


def speed(report: dict[str, Any]) -> dict[str, Any] | None:
    """The quantized model's speed against FP32: the ratio, at which batch, on which runtime and CPU."""
    latency = report.get("latency") or {}
    rows = [row for row in latency.get("rows") or [] if row.get("median_ms") and row.get("ratio") is not None]
    if len(rows) < 2:
        return None
    reference = rows[0].get("model")
    candidates = [row for row in rows if row.get("model") != reference]
    if not candidates:
        return None
    row = candidates[-1]
    cpu = report.get("cpu") or {}
    here = cpu.get("this_machine") or {}
    target = (cpu.get("target") or {}).get("isa")
    out = {"ratio": row["ratio"], "batch": row.get("batch_size"), "runtime": latency.get("runtime"),
           "fp32_ms": rows[0]["median_ms"], "quantized_ms": row["median_ms"], "measured_on": here.get("isa"),
           "cpu_model": here.get("model"), "target": target, "runtime_target": (report.get("spec") or {}).get("target"),
           "rounds": None}
    rounds = {int(b): r for b, r in ((report.get("speed") or {}).get("final_vs_fp32") or {}).items()}
    if rounds:
        # The speed check timed both models in interleaved rounds, which a busy machine disturbs far
        # less than the latency table's one pass (UltraFace read 7.4x in one pass, 3.5x in rounds):
        # its ratio is the one headlined.
        out["rounds"] = rounds
        out["batch"] = out["batch"] if out["batch"] in rounds else min(rounds)
        out["ratio"] = rounds[out["batch"]]
    return out


def kernel_fidelity(report: dict[str, Any]) -> dict[str, Any] | None:
    section = report.get("kernel_fidelity")
    if not section:
        return None
    here = ((section.get("cpu") or {}).get("this_machine") or {}).get("isa")
    return {"passed": bool(section.get("passed")), "reason": section.get("reason"), "decides": section.get("decides", True),
            "measured_on": here}


def default_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in ((report.get("comparison") or {}).get("checks") or []) if is_default_check(c)]


def user_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in ((report.get("comparison") or {}).get("checks") or []) if not is_default_check(c)]


def defaults_decide(report: dict[str, Any]) -> bool:
    """Whether the default checks decide pass or fail: Evaluation.failures counts them only where no
    `accuracy.metric` was measured on the comparison data (`accuracy.final`)."""
    return (report.get("accuracy") or {}).get("final") is None


# Up to this many default checks are shown one by one; above, the passing ones fold into one line
# with the closest call (YuNet's 12 outputs made a wall of cards above the comparison).
SHOWN_DEFAULTS = 4


def closest_call(checks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The check nearest its threshold (smallest value - threshold)."""
    scored = [c for c in checks if c.get("value") is not None and c.get("threshold") is not None]
    return min(scored, key=lambda c: c["value"] - c["threshold"], default=None)
