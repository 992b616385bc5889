"""Activation grids as tight as the data on ONNX Runtime: measure-activation-bounds records each
quantized activation's [min, max] over the calibration data, and place-for-onnxruntime puts its
uint8 grid there (within modelopt's symmetric range), with 0 exactly on it.

A HardSwish's output lies in [-0.375, max]: the symmetric int8 grid modelopt calibrates spans
[-max, max], and shifted to uint8 (zero point 128) it keeps that step, max/127. Over the data's own
bounds the step is (max + 0.375)/255: about half."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tao_qc.driver import compile_model
from tao_qc.passes.measure_activation_bounds import SMALL_SIDE_SHARE, widen_smaller_side
from tao_qc.passes.qdq import uint8_grid_over
from tao_qc.spec.cpu import kernels_compute_as
from tao_qc.testing import zoo


class ConvHardSwishConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def _graph_arithmetic(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("cpu", ["avx2", "avx512_vnni"])
def test_a_hardswish_output_gets_a_grid_over_its_own_bounds_with_half_the_step(tmp_path, cpu):
    torch.manual_seed(0)
    net = ConvHardSwishConv().eval()
    with torch.no_grad():
        net.conv1.weight *= 4  # HardSwish outputs up to about 10: the grid's low end is -0.375 of that
    fp32 = zoo.export_onnx(net, torch.randn(1, 3, 16, 16), tmp_path / "hswish.onnx", dynamic_batch=True)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "held.npz", input=rng.standard_normal((32, 3, 16, 16)).astype(np.float32))
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "onnxruntime": {"cpu": cpu, "speed": "off", "activation_ranges": "asymmetric"},
                         "calibration": {"data": str(tmp_path / "calib.npz")},
                         "compare": {"data": str(tmp_path / "held.npz")}}}
    result = compile_model(fp32, spec, results_dir=tmp_path / "out", raise_on_mismatch=False)

    model = onnx.load(str(result.model_path))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    conv2 = next(n for n in model.graph.node if n.op_type == "Conv" and "conv2" in n.name)
    x_dq = producers[conv2.input[0]]
    scale, zero = float(constants[x_dq.input[1]]), int(constants[x_dq.input[2]])
    assert constants[x_dq.input[2]].dtype == np.uint8

    # The HardSwish output's bounds over the calibration data (modelopt's max calibration: its
    # symmetric range is the largest magnitude).
    float_model = onnx.load(str(fp32))
    hardswish = next(n for n in float_model.graph.node if n.op_type == "HardSwish").output[0]
    float_model.graph.output.append(onnx.ValueInfoProto(name=hardswish))
    calibration = np.load(tmp_path / "calib.npz")["input"]
    activation = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [hardswish], {"input": calibration})[0]
    low, high = float(activation.min()), float(activation.max())
    assert -0.375 - 1e-6 <= low < 0 < high
    symmetric = max(-low, high) / 127
    assert scale == pytest.approx((high - low) / 255, rel=0.01)  # the data's span, not twice its larger side
    assert scale <= 0.55 * symmetric  # the step nearly halved
    assert 0 < zero < 32  # 0 sits on the grid, near its low end
    assert -zero * scale <= low + 1e-6 and (255 - zero) * scale >= min(high, 127 * symmetric) - 1e-6

    # Closer to FP32 than the same model on the symmetric grid (zero point 128, step max/127).
    x = np.load(tmp_path / "held.npz")["input"]
    reference = _graph_arithmetic(str(fp32), x)
    shifted = onnx.ModelProto()
    shifted.CopyFrom(model)
    for tensor in shifted.graph.initializer:
        if tensor.name == x_dq.input[1]:
            tensor.CopyFrom(numpy_helper.from_array(np.array(symmetric, np.float32), tensor.name))
        elif tensor.name == x_dq.input[2]:
            tensor.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), tensor.name))
    error = np.abs(_graph_arithmetic(model, x) - reference).mean()
    assert error < 0.8 * np.abs(_graph_arithmetic(shifted, x) - reference).mean()

    # ORT's kernels take any zero point: where this CPU's kernels are the target's, they compute the graph.
    fidelity = result.report["kernel_fidelity"]
    if kernels_compute_as(cpu):
        assert fidelity["passed"], fidelity["reason"]
    stats = next(r for r in result.records if r.name == "place-for-onnxruntime").stats
    assert stats["zero_points_from_data"] == stats["activations_uint8"] >= 2  # the input's and conv2's input


def test_a_grid_over_the_bounds_holds_both_ends_and_zero_exactly():
    for low, high, amax in [(-0.375, 6.0, 6.0), (0.0, 5.0, 5.0), (-3.0, 0.0, 3.0), (-2.0, 9.0, 4.0), (-1e-3, 7.0, 7.0)]:
        scale, zero = uint8_grid_over(low, high, amax)
        lo, hi = max(low, -amax), min(high, amax)
        # each end on the grid, or within half a step of it (a zero point rounded to 0 or 255)
        assert -float(zero) * scale <= lo + scale / 2 and (255 - float(zero)) * scale >= hi - scale / 2
        assert scale <= (hi - min(lo, 0)) / 254  # no coarser than the span needs, with one step of slack
    assert uint8_grid_over(0.0, 0.0, 1.0) is None  # a tensor that was always 0 keeps its symmetric grid


def test_a_two_sided_tensors_smaller_side_is_widened_to_a_quarter_of_the_larger():
    assert widen_smaller_side(-0.1, 8.0) == [-SMALL_SIDE_SHARE * 8.0, 8.0]
    assert widen_smaller_side(-6.0, 0.5) == [-6.0, SMALL_SIDE_SHARE * 6.0]
    assert widen_smaller_side(-3.0, 8.0) == [-3.0, 8.0]  # already wider than a quarter
    assert widen_smaller_side(0.0, 8.0) == [0.0, 8.0] and widen_smaller_side(-2.0, 0.0) == [-2.0, 0.0]  # one sign only


@pytest.mark.slow  # compiles a model
def test_a_conv_output_read_by_a_conv_keeps_room_below_what_calibration_saw_and_a_hardswish_does_not(tmp_path):
    """conv1's output (no activation after it) mostly positive: its few negative values on 8 samples
    are the least certain bound, so its grid reaches a quarter of its top below 0; the HardSwish after
    conv2 cannot go below -0.375, so its grid stays on the data's bounds."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish(),
                        nn.Conv2d(8, 4, 3, padding=1)).eval()
    with torch.no_grad():
        net[0].bias += 0.9  # conv1's output: mostly positive, its few negative values small
    fp32 = zoo.export_onnx(net, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx", dynamic_batch=True)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32))
    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "onnxruntime": {"cpu": "avx512_vnni", "speed": "off"},
                         "calibration": {"data": str(tmp_path / "calib.npz")}}}
    result = compile_model(fp32, spec, results_dir=tmp_path / "out", compare=False)
    widened = result.facts["activation_bounds_widened"]
    bounds = result.facts["activation_bounds"]
    conv1 = next(name for name in bounds if "0/Conv" in name)
    hardswish = next(name for name in bounds if "HardSwish" in name or "Hardswish" in name)
    assert conv1 in widened, bounds
    low, high = widened[conv1]
    assert low < 0 < high and -low < SMALL_SIDE_SHARE * high  # the data's negative side was small
    assert bounds[conv1] == [-SMALL_SIDE_SHARE * high, high]
    assert hardswish not in widened and -0.375 - 1e-6 <= bounds[hardswish][0] < 0
    placed = {k.split(" (")[0]: v for k, v in result.facts["ranges"].items() if k.endswith("(uint8, place-for-onnxruntime)")}
    assert conv1 in placed and "the smaller side widened" in placed[conv1]["source"], list(result.facts["ranges"])


def test_activation_ranges_is_auto_unless_asked_and_a_wrong_value_is_one_line():
    from tao_qc.errors import SpecError
    from tao_qc.spec import load_spec

    assert load_spec({"quantize": {}}).onnxruntime.activation_ranges == "auto"
    with pytest.raises(SpecError) as error:
        load_spec({"quantize": {"onnxruntime": {"activation_ranges": "asym"}}})
    assert str(error.value) == ("quantize.onnxruntime.activation_ranges: 'asym' is not supported "
                                "(valid: auto, asymmetric, symmetric)")


def test_choose_ranges_scores_a_candidate_on_the_grid_placement_gives_it():
    """With the data's bounds known (ONNX Runtime's grids), a candidate range is judged on the uint8
    grid over those bounds: a HardSwish-like tensor in [-0.375, 6] rounds to half the error."""
    from tao_qc.passes.choose_ranges import fake_quantize

    x = np.linspace(-0.375, 6.0, 10001, dtype=np.float32)
    symmetric = fake_quantize(x, 6.0, np.zeros((), np.int8))
    over_bounds = fake_quantize(x, 6.0, np.zeros((), np.int8), [-0.375, 6.0])
    scale, zero = uint8_grid_over(-0.375, 6.0, 6.0)
    assert np.array_equal(over_bounds, ((np.clip(np.rint(x / scale) + int(zero), 0, 255) - int(zero)) * scale).astype(np.float32))
    assert np.abs(over_bounds - x).max() <= 0.5 * float(scale) + 1e-6
    assert np.abs(over_bounds - x).mean() < 0.6 * np.abs(symmetric - x).mean()
