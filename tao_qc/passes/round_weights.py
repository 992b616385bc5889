"""AdaRound: round each weight up or down as the layer's output wants, not to the nearest step.

Rounding every weight to its nearest int8 step minimizes the error of the weights, not of what the
layer computes; on the layers that lose most, choosing the rounding direction per weight against
the layer's output takes most of the loss back (Nagel et al. 2020; AIMET: a detector at W8A8 49.9 ->
81.2 mAP, FP32 82.2; AMD Quark: mobilenetv2_050 1.7 -> 41.4). Per chosen layer:

    minimize |f(x_q, s * clamp(floor(W/s) + h(V))) - f(x_q, W)|^2 / |f(x_q, W)|^2 / e0 + lambda sum(1 - |2h - 1|^beta) / sqrt(n)

over V (e0 the relative error of nearest rounding, lambda 1, n the weights, h the rectified sigmoid, beta annealed from 20 to 2 so every h ends at 0 or 1), with Adam, on
the quantized model's own input x_q (the DequantizeLinear output the layer reads in the calibrated
graph, every range choice applied; all layers' inputs come from one run). The target is the layer
with its float weights on the same inputs: the rounding is fitted to what the layer's own weights
do to its output, not to the error accumulated upstream (which no rounding of this layer can take
back, and fitting it overfits a few samples). The grid is the one placement stores the weight on
(`qdq.weight_grid`): modelopt's per-channel scale, or, where `place-for-onnxruntime` narrows the
layer to 7 bits for a CPU whose U8S8 kernels saturate 8-bit pairs (`cpu`), scale x 127/64 with
|q| <= 64 (the inputs then come from a run with every narrowed weight on its 7-bit grid too). The
result is written back as the float weight `s * q` (the integers the finishing passes of the target
then store), and the float weights the float graph is compared with are kept in
`ctx.facts["float_weights"]`. A layer keeps AdaRound's rounding only where it measures better than
nearest rounding on all samples.

Which layers: the `layers` where nearest rounding costs most at the output (|f(x_q, round(W)) -
f(x_q, W)|^2 / |f(x_q, W)|^2, what AdaRound can reduce), or the `nodes` patterns. Bounded:
`iterations` Adam steps per layer and `max_seconds` for the whole pass (each layer gets an equal
share of what is left). Why our own code and not amd-quark, nncf or aimet-onnx: each quantizes the
graph itself (their own Q/DQ placement and calibration) and AdaRound runs inside that flow; on the
calibrated graph tao-qc already has (modelopt's ranges, placement for two targets afterwards) it is
about sixty lines of torch on one layer at a time, with nothing forked or pinned.
Deterministic: a seeded generator picks the minibatches, one torch thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from tao_qc.passes.layer_runs import GraphRunner, narrowed_weights, quantized_layers, sample_feeds, set_initializer
from tao_qc.passes.qdq import WeightGrid, weight_grid
from tao_qc.pipeline import PassContext, PassResult, constant_array
from tao_qc.spec.cpu import CpuTarget
from tao_qc.spec.selection import onnx_unit

log = logging.getLogger("tao_qc.quantize")

ZETA, GAMMA = 1.1, -0.1
REG_WEIGHT = 1.0
LEARNING_RATE = 5e-2
WARMUP = 0.2
MINIBATCH = 8
SEED = 0


@dataclass
class RoundWeights:
    name: str = "round-weights"
    settings: Any = None  # a CorrectionSpec (method: adaround)
    skip: frozenset = field(default_factory=frozenset)
    # The CPU placement stores weights for (passes.placement_cpu; None: TensorRT): where its kernels
    # saturate 8-bit pairs, the layers placement narrows are rounded on their 7-bit grid.
    cpu: CpuTarget | None = None

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:

        started = time.perf_counter()
        if ctx.calibration is None:
            raise ValueError("round-weights needs the calibration data")
        settings = self.settings
        layers = [layer for layer in quantized_layers(model) if layer.name not in self.skip and _supported(layer)]
        if not layers:
            return PassResult(model, changed=False, stats={"layers_rounded": 0})
        feeds = sample_feeds(ctx.calibration, settings.samples)
        # Every layer's input as the calibrated graph computes it (its own Q/DQ applied, nearest
        # rounding everywhere, upstream weights on the grid placement stores), from one run over the samples.
        runner = GraphRunner(model, [layer.x.name for layer in layers], stored=narrowed_weights(model, self.cpu))
        runs = [runner.run(feed) for feed in feeds]
        del runner
        inputs = {layer.name: np.concatenate([run[layer.x.name] for run in runs]) for layer in layers}
        del runs
        errors = {layer.name: rounding_error(layer, inputs[layer.name], self.cpu) for layer in layers}
        if settings.nodes:
            chosen = [layer for layer in layers
                      if any(onnx_unit(layer.name, layer.node.op_type).matched_by(p) for p in settings.nodes)]
        else:
            worst = sorted(range(len(layers)), key=lambda i: (-errors[layers[i].name], i))[:settings.layers]
            chosen = [layers[i] for i in sorted(worst)]
        names = {layer.name for layer in chosen}
        for layer in layers:
            if layer.name not in names:
                inputs.pop(layer.name, None)
        if not chosen:
            return PassResult(model, changed=False, stats={"layers_rounded": 0})
        new_weights: dict[str, np.ndarray] = {}
        records = []
        for index, layer in enumerate(chosen):
            left = settings.max_seconds - (time.perf_counter() - started)
            if left <= 0:
                records.append({"node": layer.name, "op": layer.node.op_type, "skipped": "max_seconds reached"})
                continue
            weight, record = adaround_layer(layer, inputs.pop(layer.name), settings.iterations,
                                            left / (len(chosen) - index), self.cpu)
            records.append(record)
            if weight is not None:
                new_weights[layer.weight.name] = weight
        for layer in chosen:
            if layer.weight.name in new_weights:
                ctx.facts.setdefault("float_weights", {}).setdefault(layer.weight.name, np.asarray(constant_array(layer.weight)).copy())
                set_initializer(model.graph, layer.weight, new_weights[layer.weight.name])
        ctx.facts.setdefault("corrections", []).append({
            "method": "adaround", "samples": sum(len(next(iter(f.values()))) for f in feeds),
            "seconds": round(time.perf_counter() - started, 3),
            "ranking": {layer.name: errors[layer.name] for layer in layers}, "nodes": records})
        notes = [f"{r['node']}: output error {r['output_error_nearest']:.3g} -> {r['output_error_after']:.3g}"
                 for r in records if "output_error_after" in r]
        return PassResult(model, changed=bool(new_weights), stats={"layers_rounded": len(new_weights),
                                                                   "layers_ranked": len(layers)}, notes=notes)


def _supported(layer: Any) -> bool:
    node = layer.node
    weight = constant_array(layer.weight)
    if node.op_type == "Conv":
        auto = node.attributes.get("auto_pad")
        return weight.ndim in (3, 4) and (auto is None or auto.as_string() in ("NOTSET", ""))
    return weight.ndim == 2


def _quantizer(layer: Any, cpu: CpuTarget | None = None):
    """The float weight, its per-channel scale (broadcastable), and the integer bounds around its zero
    point: the grid placement for `cpu` stores the weight on (`qdq.weight_grid`), 7 bits where it narrows."""
    import torch

    q = layer.weight_q
    weight = np.asarray(constant_array(layer.weight), dtype=np.float32)
    scale = np.asarray(constant_array(q.inputs[1]), dtype=np.float32)
    zero = constant_array(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] is not None else np.zeros((), np.int8)
    info = np.iinfo(zero.dtype)
    low, high = info.min, info.max
    grid = narrowed_grid(layer, cpu)
    if grid is not None:
        scale, low, high = grid.scale, grid.low, grid.high
    axis = _attr(q, "axis", 1) % weight.ndim
    shape = [1] * weight.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    z = float(np.asarray(zero).reshape(-1)[0])
    return torch.from_numpy(weight.copy()), torch.from_numpy(scale.reshape(shape).copy()), low - z, high - z


def narrowed_grid(layer: Any, cpu: CpuTarget | None) -> WeightGrid | None:
    """The grid placement for `cpu` stores the layer's weight on where it is coarser than its
    QuantizeLinear's (7 bits for a CPU without VNNI), else None."""
    grid = weight_grid(layer.weight_q, cpu)
    return grid if grid is not None and grid.narrowed else None


def rounding_error(layer: Any, x: np.ndarray, cpu: CpuTarget | None = None) -> float:
    """What nearest rounding of the weights costs at the layer's output, on its own quantized inputs,
    relative to the output: |f(x, s * round(W / s)) - f(x, W)|^2 / |f(x, W)|^2 (what AdaRound can reduce),
    on the grid placement for `cpu` stores."""
    import torch

    torch.set_num_threads(1)
    w, s, low, high = _quantizer(layer, cpu)
    fn = layer_function(layer)
    with torch.no_grad():
        xs = torch.from_numpy(np.asarray(x, dtype=np.float32))
        y = fn(xs, w)
        error = (fn(xs, s * torch.round(w / s).clamp(low, high)) - y).square().sum()
        return float(error) / max(float(y.square().sum()), 1e-30)


def _attr(node: ir.Node, name: str, default: Any) -> Any:
    attribute = node.attributes.get(name)
    if attribute is None:
        return default
    return attribute.value if not isinstance(attribute.value, (list, tuple)) else list(attribute.value)


def layer_function(layer: Any):
    """The layer as a torch function of (x, weight), its constant bias included."""
    import torch
    import torch.nn.functional as F

    node = layer.node
    bias_array = constant_array(node.inputs[2]) if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 else None
    bias = torch.from_numpy(np.array(bias_array, dtype=np.float32)) if bias_array is not None else None
    if node.op_type == "Conv":
        dims = constant_array(layer.weight).ndim - 2
        strides = _attr(node, "strides", [1] * dims)
        dilations = _attr(node, "dilations", [1] * dims)
        pads = _attr(node, "pads", [0] * (2 * dims))
        group = _attr(node, "group", 1)
        conv = F.conv2d if dims == 2 else F.conv1d
        symmetric = pads[:dims] == pads[dims:]
        torch_pad = [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])]

        def conv_fn(x, w):
            if not symmetric:
                x = F.pad(x, torch_pad)
            return conv(x, w, bias, stride=strides, padding=pads[:dims] if symmetric else 0, dilation=dilations, groups=group)

        return conv_fn
    if node.op_type == "Gemm":
        alpha, beta, trans_b = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0), _attr(node, "transB", 0)

        def gemm_fn(x, w):
            y = alpha * (x @ (w.t() if trans_b else w))
            return y + beta * bias if bias is not None else y

        return gemm_fn
    return lambda x, w: torch.matmul(x, w)


def adaround_layer(layer: Any, inputs: np.ndarray, iterations: int, seconds: float,
                   cpu: CpuTarget | None = None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """AdaRound for one layer: the new float weight (s * q) or None where nearest rounding measures
    better. The target is the layer's output with its float weights on the same (quantized) inputs.
    The grid (s and the bounds of q) is the one placement for `cpu` stores the weight on."""
    import torch

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    w, s, low, high = _quantizer(layer, cpu)
    weight = np.asarray(constant_array(layer.weight))
    floor = torch.floor(w / s)
    rest = (w / s - floor).clamp(0.01, 0.99)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    fn = layer_function(layer)
    x_all = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
    with torch.no_grad():
        y_all = fn(x_all, w)
    energy = float(y_all.square().mean()) or 1e-30
    with torch.no_grad():
        start_error = float((fn(x_all, s * torch.round(w / s).clamp(low, high)) - y_all).square().mean()) / energy
    # The reconstruction term in units of nearest rounding's error: about 1 where the optimization
    # starts to matter, whatever the layer's scale (a relative error of 1e-3 would leave Adam's
    # steps below its epsilon and nothing would move).
    unit = energy * max(start_error, 1e-12)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)

    def soft():
        return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    done = 0
    for step in range(iterations):
        if time.perf_counter() - started > seconds:
            break
        rows = torch.randperm(len(x_all), generator=generator)[:MINIBATCH]
        h = soft()
        w_soft = s * (floor + h).clamp(low, high)
        loss = (fn(x_all[rows], w_soft) - y_all[rows]).square().mean() / unit
        warm = iterations * WARMUP
        if step >= warm:
            beta = 20 + (2 - 20) * (step - warm) / max(iterations - warm, 1)
            loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).sum() / max(h.numel() ** 0.5, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done = step + 1
    with torch.no_grad():
        nearest = s * torch.round(w / s).clamp(low, high)
        rounded = s * (floor + (soft() >= 0.5).float()).clamp(low, high)
        error_nearest = float((fn(x_all, nearest) - y_all).square().mean()) / energy
        error_after = float((fn(x_all, rounded) - y_all).square().mean()) / energy
        changed = float((rounded != nearest).float().mean())
    record = {"node": layer.name, "op": layer.node.op_type, "iterations": done,
              "seconds": round(time.perf_counter() - started, 3), "output_error_nearest": error_nearest,
              "output_error_after": min(error_after, error_nearest), "weights_rounded_otherwise": changed,
              "kept": error_after < error_nearest}
    if narrowed_grid(layer, cpu) is not None:
        record["weight_bits"] = cpu.weight_bits  # fitted on the narrower grid placement stores for this CPU
    if error_after >= error_nearest:
        return None, record
    return rounded.numpy().astype(weight.dtype), record
