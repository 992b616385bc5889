"""Choose each activation's range by what it does to the output of the nodes that read it.

One global calibration method is wrong somewhere: max ranges waste the int8 grid on one outlier,
percentile ranges clip what a tensor needs (a BERT's F1 92 -> 6 in published runs), MSE-optimal
ranges help ResNet-50 and not MobileNetV2. `algorithm: auto` (ours) measures, per activation tensor,
candidate ranges and keeps the one whose quantization disturbs its consumers least:

- `max`: modelopt's calibrated amax (max |x| over the calibration data),
- `percentile`: the `calibration.auto_percentiles` of |x| (default 99.9, 99.99, 99.999),
- `mse`: the range minimizing the squared error of x itself (rounding inside, clipping outside, over
  the histogram of |x|),
- `entropy`: TensorRT's KL-divergence threshold over the same histogram.

The histograms come from one pass of the float graph (the Q/DQ looked through) over all calibration
data (passes/clip_ranges.py's). Each candidate is then scored on the first `calibration.score_samples`
calibration samples: every node reading the tensor's DequantizeLinear is run alone (ONNX Runtime,
one node), on x fake-quantized at the candidate range and on x itself, with its other inputs as the
float graph computes them; the score is the sum over consumers of |y_q - y|^2 / |y|^2, per sample,
averaged over the samples. The lowest
score wins where it is at least 5% below max's (ties go to the earlier candidate), so a range is
only narrowed where that measurably helps. Weights keep modelopt's per-channel ranges. With
ONNX Runtime's asymmetric grids (measure-activation-bounds ran), x is quantized on the uint8 grid
placement will give it: the data's bounds within the candidate range, so clipping only the side
that needs it, and a range that only mattered on a symmetric grid is not chosen for it.

Runs where the spec asks for it (`algorithm: auto`, modelopt calibrating with max) or as accuracy
fallback's `ranges` step (`force`), before placement, so both targets see the chosen ranges.
Deterministic: the same data gives the same ranges.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from tao_qc.passes.clip_ranges import _amax, _histograms, _percentile, _set_scale, activation_quantizers
from tao_qc.passes.layer_runs import GraphRunner, float_weights, sample_feeds
from tao_qc.passes.qdq import uint8_grid_over
from tao_qc.pipeline import PassContext, PassResult, constant_array

log = logging.getLogger("tao_qc.quantize")

GROUP = 16  # tensors whose float values are held at once
# A narrower range must measure this much better than max to be taken: differences within a few
# percent on a few samples are noise, and max is what every other tool would have used.
MARGIN = 0.95
MSE_GRID = 256


@dataclass
class ChooseRanges:
    name: str = "choose-ranges"
    force: bool = False

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:

        if not (self.force or ctx.spec.algorithm == "auto") or ctx.facts.get("ranges_chosen"):
            return PassResult(model, changed=False, stats={"ranges_narrowed": 0})
        if ctx.calibration is None:
            raise ValueError("choose-ranges needs the calibration data")
        settings = ctx.spec.calibration
        quantizers = {t: qs for t, qs in activation_quantizers(model).items() if _integer(qs[0])}
        if not quantizers:
            return PassResult(model, changed=False, stats={"ranges_narrowed": 0}, notes=["no int8 activation Q/DQ"])
        amax = {name: _amax(qs[0]) for name, qs in quantizers.items()}
        amax = {name: value for name, value in amax.items() if value > 0}
        histograms = _histograms(model, amax, ctx.calibration)
        candidates = {t: candidate_ranges(histograms[t], amax[t], settings.auto_percentiles) for t in amax}

        consumers = {t: _consumers(quantizers[t]) for t in amax}
        feeds = sample_feeds(ctx.calibration, settings.score_samples)
        tensors = list(amax)
        # Where placement will put a tensor's grid over its data's bounds (ONNX Runtime's uint8 grids),
        # each candidate is scored on that grid, not on the symmetric one it will not have.
        bounds = ctx.facts.get("activation_bounds") or {}
        needed = {t: sorted({src for node in consumers[t] for src in _activation_sources(node)} | {t}) for t in tensors}
        runner = GraphRunner(model, sorted({n for names in needed.values() for n in names}), look_through_qdq=True, replace=float_weights(ctx.facts))
        choices: dict[str, dict[str, Any]] = {}
        for start in range(0, len(tensors), GROUP):
            group = tensors[start:start + GROUP]
            names = sorted({n for t in group for n in needed[t]})
            values = [runner.run(feed, names) for feed in feeds]
            for tensor in group:
                errors = _score(tensor, quantizers[tensor][0], consumers[tensor], candidates[tensor], values, model,
                                bounds.get(tensor))
                best = min(errors, key=lambda m: (errors[m], list(errors).index(m))) if errors else "max"
                if best != "max" and "max" in errors and not errors[best] < MARGIN * errors["max"]:
                    best = "max"
                choices[tensor] = {"method": best, "amax": candidates[tensor][best], "max": amax[tensor],
                                   "errors": {m: float(e) for m, e in errors.items()},
                                   "candidates": {m: float(v) for m, v in candidates[tensor].items()},
                                   "consumers": [n.name for n in consumers[tensor]]}
            del values

        ranges = ctx.facts.setdefault("ranges", {})
        narrowed, notes = 0, []
        for tensor, choice in choices.items():
            if choice["method"] == "max" or not 0 < choice["amax"] < amax[tensor]:
                continue
            for q in quantizers[tensor]:
                _set_scale(model.graph, q, choice["amax"])
            narrowed += 1
            if tensor in ranges:
                ranges[tensor] = {**ranges[tensor], "amax": [choice["amax"]], "scale": [choice["amax"] / 127.0],
                                  "source": f"auto: {choice['method']} (modelopt's amax {amax[tensor]:.4g})"}
            errors = choice["errors"]
            notes.append(f"{tensor}: {choice['method']} range {amax[tensor]:.4g} -> {choice['amax']:.4g} "
                         f"(consumer error {errors.get('max', float('nan')):.3g} -> {errors[choice['method']]:.3g})")
        ctx.facts["ranges_chosen"] = True
        ctx.facts["range_choices"] = choices
        methods = Counter(_family(c["method"]) for c in choices.values())
        return PassResult(model, changed=bool(narrowed),
                          stats={"ranges_narrowed": narrowed, "activation_ranges": len(quantizers),
                                 **{f"chose_{m}": methods.get(m, 0) for m in ("max", "percentile", "mse", "entropy")}},
                          notes=notes)


def _family(method: str) -> str:
    return "percentile" if method.startswith("p") and method != "max" else method


def _integer(q: ir.Node) -> bool:
    zero = constant_array(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else None
    return zero is not None and zero.dtype in (np.int8, np.uint8)


def _consumers(qs: list[ir.Node]) -> list[ir.Node]:
    """The nodes that read the tensor through its Q/DQ pairs."""
    found = []
    for q in qs:
        for use in q.outputs[0].uses():
            if use.node.op_type == "DequantizeLinear":
                found.extend(u.node for u in use.node.outputs[0].uses())
    return list({id(n): n for n in found}.values())


def _source(value: ir.Value | None) -> tuple[str, Any]:
    """What a consumer's input is in the float graph: ("const", array) or ("tensor", name)."""
    if value is None:
        return ("none", None)
    dq = value.producer()
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = dq.inputs[0].producer()
        if q is not None and q.op_type == "QuantizeLinear":
            value = q.inputs[0]
    array = constant_array(value)
    if array is not None:
        return ("const", array)
    return ("tensor", value.name)


def _activation_sources(node: ir.Node) -> list[str]:
    return [s[1] for s in map(_source, node.inputs) if s[0] == "tensor"]


def candidate_ranges(histogram: np.ndarray, amax: float, percentiles: list[float]) -> dict[str, float]:
    """Candidate amax values, max first; near-duplicates (within 0.1%) keep the earlier name."""

    found: dict[str, float] = {"max": float(amax)}
    for p in percentiles:
        found[f"p{p:g}"] = _percentile(histogram, amax, p)
    found["mse"] = mse_range(histogram, amax)
    found["entropy"] = entropy_range(histogram, amax)
    out: dict[str, float] = {}
    for name, value in found.items():
        value = float(min(amax, value))
        if value <= 0 or any(abs(value - kept) <= 1e-3 * amax for kept in out.values()):
            continue
        out[name] = value
    return out


def mse_range(histogram: np.ndarray, amax: float, levels: int = 127) -> float:
    """The clipping value c minimizing the expected squared error of symmetric int8 quantization of
    |x| distributed as `histogram` over [0, amax]: each bin's value rounded to the grid of step c/levels
    inside c, clipped to c outside."""
    bins = histogram.size
    centers = (np.arange(bins) + 0.5) * amax / bins
    counts = histogram.astype(np.float64)
    grid = amax * np.arange(1, MSE_GRID + 1) / MSE_GRID
    errors = []
    for c in grid:
        step = c / levels
        quantized = np.minimum(np.rint(centers / step) * step, c)
        errors.append(float((counts * np.square(centers - quantized)).sum()))
    return float(grid[int(np.argmin(errors))])


def entropy_range(histogram: np.ndarray, amax: float, quant_bins: int = 128, stride: int = 16) -> float:
    """TensorRT's entropy calibration: the threshold whose 128-level quantized histogram is closest
    (KL divergence) to the clipped original, over a 2048-bin histogram of |x|."""
    hist = histogram.astype(np.float64)
    if hist.size % 2048 == 0:
        hist = hist.reshape(2048, -1).sum(axis=1)
    bins = hist.size
    best, best_i = np.inf, bins
    for i in range(quant_bins, bins + 1, stride):
        reference = hist[:i].copy()
        reference[i - 1] += hist[i:].sum()
        if reference.sum() == 0:
            continue
        nonzero = hist[:i] > 0
        edges = np.linspace(0, i, quant_bins + 1).astype(int)
        expanded = np.zeros(i)
        for j in range(quant_bins):
            lo, hi = edges[j], edges[j + 1]
            if hi <= lo:
                continue
            count = nonzero[lo:hi].sum()
            if count:
                expanded[lo:hi] = np.where(nonzero[lo:hi], hist[lo:hi].sum() / count, 0.0)
        p = reference / reference.sum()
        q_total = expanded.sum()
        if q_total == 0:
            continue
        q = expanded / q_total
        mask = p > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return float(best_i * amax / bins)


def fake_quantize(x: np.ndarray, amax: float, zero: np.ndarray, bounds: list[float] | None = None) -> np.ndarray:
    """x on the grid of range `amax`: symmetric (zero point `zero`), or, with the data's `bounds`, the
    uint8 grid placement puts over them within [-amax, amax] (qdq.uint8_grid_over)."""
    grid = uint8_grid_over(*bounds, amax) if bounds is not None else None
    if grid is not None:
        scale, z = float(grid[0]), float(grid[1])
        return ((np.clip(np.rint(x / scale) + z, 0, 255) - z) * scale).astype(x.dtype)
    info = np.iinfo(zero.dtype)
    scale = amax / (127.0 if zero.dtype == np.int8 else 255.0)
    z = float(zero.reshape(-1)[0])
    q = np.clip(np.rint(x / scale) + z, info.min, info.max)
    return ((q - z) * scale).astype(x.dtype)


def _score(tensor: str, q: ir.Node, consumers: list[ir.Node], candidates: dict[str, float],
           values: list[dict[str, np.ndarray]], model: ir.Model, bounds: list[float] | None = None) -> dict[str, float]:
    """Per candidate, the summed relative squared error at the consumers' outputs."""
    zero = constant_array(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else np.zeros((), np.int8)
    runners = [r for r in (_NodeRunner(node, model) for node in consumers) if r.ok]
    if not runners:
        return {}
    errors = {m: 0.0 for m in candidates}
    for runner in runners:
        if tensor not in runner.tensor_inputs:
            continue
        # Per sample, relative to that sample's output: one sample with an outlier does not outweigh the rest.
        per_sample = {m: [] for m in candidates}
        for chunk in values:
            reference = runner.run(chunk)
            den = np.maximum(_per_sample(np.square(reference)), 1e-30)
            for method, amax in candidates.items():
                got = runner.run(chunk, {tensor: fake_quantize(chunk[tensor], amax, zero, bounds)})
                per_sample[method].append(_per_sample(np.square(got - reference)) / den)
        for method in candidates:
            errors[method] += float(np.mean(np.concatenate(per_sample[method])))
    return errors


def _per_sample(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0], -1).sum(axis=1) if array.ndim > 1 else np.atleast_1d(array.sum())


class _NodeRunner:
    """One node of the graph alone in an ORT session: float inputs as the float graph has them,
    weights dequantized by nothing (their float values: only the activation's range is judged)."""

    def __init__(self, node: ir.Node, model: ir.Model):
        import onnxruntime as ort
        from onnx import helper, numpy_helper

        self.ok = False
        try:
            proto = ir.serde.serialize_node(node)
        except Exception:  # noqa: BLE001 - a node that cannot stand alone is not scored
            return
        inputs, initializers, self.tensor_inputs, self.local = [], [], [], {}
        for index, value in enumerate(node.inputs):
            kind, what = _source(value)
            local = f"i{index}"
            if kind == "none":
                proto.input[index] = ""
                continue
            proto.input[index] = local
            if kind == "const":
                initializers.append(numpy_helper.from_array(np.asarray(what), local))
            else:
                self.tensor_inputs.append(what)
                self.local[local] = what
                inputs.append(helper.make_tensor_value_info(local, helper.np_dtype_to_tensor_dtype(np.dtype(np.float32))
                                                            if value.dtype is None else value.dtype.value, None))
        out_type = node.outputs[0].dtype.value if node.outputs[0].dtype is not None else 1
        del proto.output[1:]
        proto.output[0] = "y"
        graph = helper.make_graph([proto], "node", inputs, [helper.make_tensor_value_info("y", out_type, None)], initializers)
        opsets = [helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            options.intra_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self.session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets, ir_version=max(8, model.ir_version))
                                                .SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001
            return
        self.ok = True

    def run(self, values: dict[str, np.ndarray], replace: dict[str, np.ndarray] | None = None) -> np.ndarray:
        feeds = {local: (replace or {}).get(name, values[name]) for local, name in self.local.items()}
        return np.asarray(self.session.run(["y"], feeds)[0], dtype=np.float64)
