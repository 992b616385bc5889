"""Speed on the target CPU (tao_qc/speed): the quantized model timed against FP32, classes of
quantized units timed in float against INT8 and kept float where faster (`speed: search`), and the
report's word on why a model stays slower than FP32.

Which class wins is the CPU's business, so no test asserts a timing's outcome: they assert what is
timed (each class, with the nodes its kernel decides), that a class kept float is float in the
saved model with the measured reason, and that the warning names the cause and the fix.

Timings speak for the CPU that takes them only: a model compiled for another instruction set is not
timed (tao_qc.driver._times_on_this_cpu). These tests compile for this machine's by name, whatever
TAO_QC_CPU says `auto` means in the suite."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from torch import nn

from tao_qc.driver import compile_model, slower_than_fp32
from tao_qc.errors import SpecError
from tao_qc.evaluate.latency import BenchRow, BenchTable
from tao_qc.spec import load_spec
from tao_qc.spec.cpu import this_machine
from tao_qc.speed import float_where_faster
from tao_qc.speed.float_where_faster import SpeedCheck
from tao_qc.speed.unit_classes import NARROW_STEM, unit_classes
from tao_qc.testing import zoo


class EveryKernelClass(nn.Module):
    """One node of each class: an RGB stem (short reduction), a depthwise, a grouped, a pointwise and
    a spatial Conv, and a Gemm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.grouped = nn.Conv2d(32, 64, 3, 1, 1, groups=4)
        self.pointwise = nn.Conv2d(64, 64, 1)
        self.spatial = nn.Conv2d(64, 64, 3, 1, 1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.pointwise(x))
        x = torch.relu(self.spatial(x))
        return self.head(x.mean(dim=(2, 3)))


EXPECTED_CLASSES = {
    "Convs with little work per output": "stem",  # 3 input channels x 3x3 = a reduction of 27
    "depthwise Convs": "depthwise",
    "grouped Convs": "grouped",
    "pointwise Convs": "pointwise",
    "spatial Convs": "spatial",
    "Gemms and MatMuls": "head",
}


@pytest.fixture(scope="module")
def every_class(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("every-class")
    torch.manual_seed(0)
    model = zoo.export_onnx(EveryKernelClass().eval(), torch.randn(1, 3, 32, 32), root / "every.onnx", dynamic_batch=True)
    data = root / "calib.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return model, data


def _spec(data: Path, mode: str) -> dict:
    return {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "calibration": {"data": str(data), "batch_size": 4},
                         "onnxruntime": {"speed": mode, "cpu": this_machine().isa}}}


def _weight_is_float(model: onnx.ModelProto, node_name: str) -> bool:
    node = next(n for n in model.graph.node if n.name == node_name)
    initializers = {i.name: i for i in model.graph.initializer}
    weight = initializers.get(node.input[1])
    return weight is not None and weight.data_type == onnx.TensorProto.FLOAT


def _node_of(model: onnx.ModelProto, module: str, op: str) -> str:
    return next(n.name for n in model.graph.node if n.op_type == op and module in n.name)


def test_a_narrow_stem_is_one_class_tried_first(tmp_path):
    """YuNet's shape: the Convs before the first with 32 outputs (an RGB stem and a 16-channel
    depthwise Conv here) are tried in float together, before any other class; the Convs after them
    keep their kernel's class. A network that is wide from its first Conv has no such class."""
    pyramid = ir.load(zoo.export_zoo("feature_pyramid", tmp_path / "fpn.onnx"))
    convs = [n.name for n in pyramid.graph if n.op_type == "Conv"]
    classes = unit_classes(pyramid, set(convs))
    assert classes[0].label == NARROW_STEM and classes[0].nodes == convs[:2]
    assert all(name not in classes[0].nodes for unit in classes[1:] for name in unit.nodes)
    assert sorted(name for unit in classes for name in unit.nodes) == sorted(convs)
    wide = ir.load(zoo.export_onnx(EveryKernelClass().eval(), torch.randn(1, 3, 32, 32), tmp_path / "wide.onnx"))
    assert NARROW_STEM not in [u.label for u in unit_classes(wide, {n.name for n in wide.graph})]


def test_each_class_of_unit_is_timed_in_float_against_int8_at_batch_1_and_the_data_batch(every_class, tmp_path):
    model, data = every_class
    result = compile_model(model, _spec(data, "search"), results_dir=tmp_path / "out", compare=False)
    section = result.report["speed"]
    assert section["searched"] and section["batches"] == [1, 4] and section["cpu"]
    source = onnx.load(model)
    expected = {label: [_node_of(source, module, "Gemm" if module == "head" else "Conv")]
                for label, module in EXPECTED_CLASSES.items()}
    assert {t["label"]: t["nodes"] for t in section["trials"]} == expected
    for trial in section["trials"]:
        assert set(trial["speedup"]) == {"1", "4"} and all(v > 0 for v in trial["speedup"].values())
    assert set(section["int8_vs_fp32"]) == {"1", "4"}
    # What the trials decided, where their classes together won the second timing, is what the saved
    # model holds.
    saved = onnx.load(result.model_path)
    kept = ({node for t in section["trials"] if t["kept_float"] for node in t["nodes"]}
            if section["confirmed"] is not False else set())
    assert section["nodes_kept_float"] == len(kept)
    rows = {row["name"]: row for row in result.report["decisions"]}
    for trial in section["trials"]:
        for node in trial["nodes"]:
            assert _weight_is_float(saved, node) == (node in kept)
            assert ("faster in float" in rows[node]["reason"]) == (node in kept)


def test_a_class_kept_float_is_float_in_the_saved_model_with_its_measured_reason(every_class, tmp_path, monkeypatch):
    """With the gain needed set to nothing, every class counts as faster (alone and together): the path
    a CPU that loses on, say, depthwise Convs takes, through the real rebuild and comparison."""
    model, data = every_class
    for name in ("MIN_GAIN", "MAX_LOSS", "CONFIRM_GAIN"):
        monkeypatch.setattr(float_where_faster, name, 0.0)
    result = compile_model(model, _spec(data, "search"), results_dir=tmp_path / "out")
    section = result.report["speed"]
    assert all(t["kept_float"] for t in section["trials"]) and section["nodes_kept_float"] == 6
    saved = onnx.load(result.model_path)
    assert all(_weight_is_float(saved, n.name) for n in saved.graph.node if n.op_type in ("Conv", "Gemm"))
    depthwise = _node_of(saved, "depthwise", "Conv")
    row = next(r for r in result.report["decisions"] if r["name"] == depthwise)
    assert not row["quantized"]
    assert row["reason"].startswith("kept in float: faster in float: depthwise Convs run faster in float on this CPU (")
    assert "at batch 1" in row["reason"] and "at batch 4" in row["reason"]
    # The comparison ran on the rebuilt model: all float, so it matches FP32 to float rounding.
    assert result.report["comparison"]["passed"]
    assert set(section["final_vs_fp32"]) == {"1", "4"}
    # report.html shows each class with its measured gain and what was decided.
    html = (result.results_dir / "report.html").read_text()
    speed = html[html.index('<h3 id="speed">Speed on this CPU</h3>'):]
    for label in EXPECTED_CLASSES:
        row = speed[speed.index(f"<td>{label}</td>"):]
        row = row[:row.index("</tr>")]
        assert "at batch 1" in row and "at batch 4" in row and "kept in float" in row


def test_check_times_the_model_against_fp32_and_changes_nothing_by_timing(every_class, tmp_path, monkeypatch):
    """`check`, named or as what TAO_QC_SPEED makes `auto` mean (a build that must not depend on timings)."""
    model, data = every_class
    spec = _spec(data, "check")
    del spec["quantize"]["onnxruntime"]["speed"]
    monkeypatch.setenv("TAO_QC_SPEED", "check")
    result = compile_model(model, spec, results_dir=tmp_path / "out", compare=False)
    section = result.report["speed"]
    assert section["mode"] == "check" and not section["searched"] and not section["trials"]
    assert set(section["int8_vs_fp32"]) == {"1", "4"} and section["nodes_kept_float"] == 0
    assert all(row["quantized"] for row in result.report["decisions"])
    # A slower model says where the time goes, from ORT's profiler of both models.
    if section["why_slower"]:
        assert section["profile"]["fp32"] and section["profile"]["int8"]


@pytest.mark.parametrize("not_clearly_faster", [True, False])
def test_auto_searches_only_where_int8_is_not_clearly_faster_than_fp32(every_class, tmp_path, monkeypatch,
                                                                      not_clearly_faster):
    """The default. Whether this machine's INT8 model is clearly faster is its own business, so the
    threshold is set to make it so or not, and the gain needed to nothing: every class counts as faster
    (and again when timed together), the path a CPU that loses on them takes."""
    model, data = every_class
    spec = _spec(data, "check")
    del spec["quantize"]["onnxruntime"]["speed"]
    monkeypatch.delenv("TAO_QC_SPEED")
    monkeypatch.setattr(float_where_faster, "SEARCH_BELOW", float("inf") if not_clearly_faster else 0.0)
    for name in ("MIN_GAIN", "MAX_LOSS", "CONFIRM_GAIN"):
        monkeypatch.setattr(float_where_faster, name, 0.0)
    result = compile_model(model, spec, results_dir=tmp_path / "out")
    section = result.report["speed"]
    assert section["mode"] == "auto" and section["searched"] == not_clearly_faster
    assert set(section["int8_vs_fp32"]) == {"1", "4"}
    saved = onnx.load(result.model_path)
    computes = [n.name for n in saved.graph.node if n.op_type in ("Conv", "Gemm")]
    html = (result.results_dir / "report.html").read_text()
    if not_clearly_faster:
        assert section["search_reason"].startswith("searched: INT8 ran under inf")
        assert section["confirmed"] and set(section["confirmation"]) == {"1", "4"}
        assert section["nodes_kept_float"] == 6 and all(_weight_is_float(saved, name) for name in computes)
        assert "(confirmed: they stay float)" in html
    else:
        assert section["search_reason"].startswith("not searched") and not section["trials"]
        assert not any(_weight_is_float(saved, name) for name in computes)
    assert f"<code>speed: auto</code> {escape(section['search_reason'])}" in html


def test_classes_that_do_not_win_a_second_time_stay_int8(every_class, tmp_path, monkeypatch):
    """Each class won its own trial (gain needed: nothing) but not the fresh timing of all of them
    together (gain needed: more than any timing gives): none stays float, and the report says why."""
    model, data = every_class
    monkeypatch.setattr(float_where_faster, "MIN_GAIN", 0.0)
    monkeypatch.setattr(float_where_faster, "MAX_LOSS", 0.0)
    monkeypatch.setattr(float_where_faster, "CONFIRM_GAIN", float("inf"))
    result = compile_model(model, _spec(data, "search"), results_dir=tmp_path / "out")
    section = result.report["speed"]
    assert all(t["kept_float"] for t in section["trials"]) and section["confirmed"] is False
    assert section["nodes_kept_float"] == 0 and all(row["quantized"] for row in result.report["decisions"])
    saved = onnx.load(result.model_path)
    assert not any(_weight_is_float(saved, n.name) for n in saved.graph.node if n.op_type in ("Conv", "Gemm"))
    assert "(not confirmed: every class stays INT8)" in (result.results_dir / "report.html").read_text()


def test_tao_qc_speed_says_what_auto_means_and_a_wrong_value_is_one_line(monkeypatch):
    from tao_qc.errors import InputError

    monkeypatch.setenv("TAO_QC_SPEED", "search")
    assert float_where_faster.effective_mode("auto") == "search"
    assert float_where_faster.effective_mode("off") == "off"  # a mode the spec names stays
    monkeypatch.setenv("TAO_QC_SPEED", "")
    assert float_where_faster.effective_mode("auto") == "auto"
    monkeypatch.setenv("TAO_QC_SPEED", "fast")
    with pytest.raises(InputError) as error:
        float_where_faster.effective_mode("auto")
    assert str(error.value) == "TAO_QC_SPEED=fast is not a speed mode (valid: auto, check, search, off)"


def test_off_times_nothing_and_a_wrong_mode_is_a_one_line_spec_error(every_class, tmp_path):
    model, data = every_class
    result = compile_model(model, _spec(data, "off"), results_dir=tmp_path / "out", compare=False)
    assert "speed" not in result.report
    with pytest.raises(SpecError) as error:
        load_spec(_spec(data, "sometimes"))
    assert "quantize.onnxruntime.speed" in str(error.value) and "search" in str(error.value)


def test_a_model_slower_than_fp32_is_said_with_where_the_time_goes_and_the_fix():
    spec = load_spec({"quantize": {"target": "onnxruntime"}})
    latency = BenchTable("onnxruntime", {}, [BenchRow("fp32.onnx", 1, ratio=1.0), BenchRow("int8.onnx", 1, ratio=0.93)])
    profile = {"int8": {"QLinearConv": 2.72, "QuantizeLinear": 0.2}, "fp32": {"Conv": 2.58}}
    speed = SpeedCheck(mode="check", cpu="amx", threads=2, batches=[1], final_vs_fp32={1: 0.91}, profile=profile)
    warning = slower_than_fp32(latency, spec, speed)
    assert "0.91x at batch 1 FP32's speed" in warning and "2.72 ms" in warning and "deploy the FP32 model" in warning
    assert "quantize.onnxruntime.speed: search" in warning
    # The interleaved timing decides where it ran: the latency table's single pass read 0.93x, but
    # the rounds say it is as fast, within their noise.
    assert slower_than_fp32(latency, spec, SpeedCheck(mode="check", cpu="amx", threads=2, batches=[1],
                                                      final_vs_fp32={1: 0.98})) is None
