"""report.html: self-contained, every section present when given, robust when sections are missing."""

from __future__ import annotations

import json
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest

from _runtimes_helpers import build_assets
from tao_qc.evaluate.compare import evaluate_quantized
from tao_qc.data import model_inputs, open_inputs
from tao_qc.spec.selection import decide, onnx_unit
from tao_qc.report.html import render_html, steps_html, write_html_report
from tao_qc.spec import QuantizeSpec

DATA = Path(__file__).parent / "data"


class _Structure(HTMLParser):
    """Collects tags, headings and every URL-bearing attribute, and checks nesting."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "path", "circle"}

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[str] = []
        self.urls: list[str] = []
        self.stack: list[str] = []
        self._heading: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag in ("h1", "h2", "h3"):
            self._heading = ""
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data


def parse(html: str) -> _Structure:
    structure = _Structure()
    structure.feed(html)
    structure.close()
    assert structure.stack == [], f"unclosed tags: {structure.stack}"
    return structure


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    assets = build_assets(tmp_path_factory.getbasetemp())
    model = onnx.load(str(assets.mnist_fp32))
    inputs = open_inputs(assets.digits, model_inputs(model), max_samples=200, key="--data")
    spec = QuantizeSpec(backend="modelopt.onnx", mode="static_ptq", target="onnxruntime", model_path=str(assets.mnist_fp32),
                        skip_names=["Times212"])
    sections = evaluate_quantized(assets.mnist_fp32, assets.mnist_int8, inputs, spec, np.load(assets.labels), runs=3,
                                  warmup=1).sections()
    units = [onnx_unit(node.name, node.op_type) for node in model.graph.node]
    decisions = decide(units, spec.layers, spec.skip_names, static=True).decisions
    return {
        "spec": spec.normalized(),
        "decisions": [d.as_dict() for d in decisions],
        "passes": [
            {"index": 1, "name": "load-and-check", "changed": False, "time_s": 0.011, "nodes": 12, "stats": {}},
            {"index": 2, "name": "quantize", "changed": True, "time_s": 1.9, "nodes": 24, "stats": {"qdq_inserted": 12}},
        ],
        "counts": {"quantized_nodes": 2, "qdq_pairs": 6},
        "versions": {"onnx": onnx.__version__, "tao-qc": "0.1.0"},
        **sections,
    }


def test_full_report_is_self_contained_and_complete(full_report, tmp_path):
    path = write_html_report(full_report, tmp_path / "out" / "report.html")
    html = path.read_text(encoding="utf-8")
    structure = parse(html)
    assert structure.urls == []  # no external (or any) linked assets
    assert "<script" not in html and "<link" not in html and "url(" not in html
    assert structure.headings[:1] == ["tao-qc report: mnist_fp32.onnx"]
    for heading in ("Accuracy: quantized against FP32", "Error distribution", "Latency", "Quantization decisions", "Passes"):
        assert heading in structure.headings
    assert structure.tags.count("svg") >= 2  # the error histogram and the latency bars
    assert html.count("<rect") > 10
    # The decisions table names every compute node with its dtypes and deciding rule.
    for decision in full_report["decisions"]:
        assert re.search(rf"<code[^>]*>{re.escape(decision['name'])}</code>", html)
    assert "skipped by skip_names" in html
    comparison = full_report["comparison"]["outputs"][0]
    assert f"{100 * comparison['top1_agreement']:.2f}%" in html
    assert "PASSED" in html and "qdq_inserted" in html
    assert re.search(r"\d\.\d\d×", html)  # a latency ratio


def test_missing_sections_say_so():
    html = render_html({})
    parse(html)
    assert "No comparison was run" in html
    assert "Latency was not measured" in html
    assert "No per-node decisions recorded" in html
    assert "No pass summary recorded" in html
    only_latency = render_html({"latency": {"runtime": "onnxruntime", "settings": {"threads": 2, "device": "cpu"}, "rows": [
        {"model": "a.onnx", "batch_size": 8, "ratio": None, "note": "fixed batch 1", "median_ms": None}]}})
    parse(only_latency)
    assert "skipped: fixed batch 1" in only_latency


def test_failed_comparison_and_identical_outputs_render(full_report):
    failed = json.loads(json.dumps(full_report["comparison"]))
    failed["passed"] = False
    failed["failures"] = ["output 'Plus214_Output_0': top-1 agreement 80.00% (needs >= 99.00%)"]
    failed["outputs"][0]["error_histogram"] = {"log10_edges": [], "counts": [], "zeros": 10, "total": 10}
    html = render_html({"comparison": failed})
    parse(html)
    assert "FAILED" in html and "top-1 agreement 80.00%" in html
    assert "no error: outputs identical" in html


def test_text_is_escaped():
    html = render_html({"decisions": [{"name": "<script>alert(1)</script>", "type": "Conv", "quantized": True,
                                       "weights": "int8", "activations": "int8", "weights_rule": "layers[0] '*'",
                                       "activations_rule": "layers[0] '*'", "skipped_by": None}]})
    parse(html)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_the_steps_table_says_what_a_range_step_did_with_the_corrections():
    """A step that met its target on new ranges alone never fitted the corrections: the table must not
    say they measured worse; one that fitted them and measured worse says both figures."""
    not_needed = {"step": "clip", "before": 0.3, "value": 0.99, "met": True, "kept": True, "seconds": 1.0,
                  "without_corrections": 0.99, "corrections_dropped": ["bias"]}
    worse = dict(not_needed, met=False, value=0.97, without_corrections=0.97, with_corrections=0.95)
    refitted = dict(not_needed, corrections_dropped=None, corrections_refitted=["adaround"])
    html = steps_html([not_needed, worse, refitted])
    assert "clip (without bias: not needed, 0.99" in html and "worse" not in html
    assert "clip (without bias: 0.97 without, 0.95 with)" in html
    assert "clip (then adaround fitted again)" in html


def test_tensorrt_layer_table_renders_from_engine_info():
    from tao_qc.runtimes.tensorrt import parse_engine_layers

    layers = [row.to_dict() for row in parse_engine_layers((DATA / "tensorrt_inspector_int8_resnet.json").read_text())]
    html = render_html({"comparison": {"passed": True, "outputs": [], "checks": [],
                                       "engines": {"candidate": {"layers": layers}}}})
    parse(html)
    assert "TensorRT layers" in html and "CaskConvolution" in html and "<b>INT8</b>" in html


def _row_of(html: str, node: str) -> str:
    match = re.search(rf'<tr class="(q?)"><td><code>{re.escape(node)}</code></td>.*?</tr>', html)
    assert match, f"no decisions row for {node}"
    return match.group(0)


def test_the_report_html_of_a_real_compile(mnist_cntk_compiled):
    # compile's own report.html: written beside report.json from the staging folder, then moved.
    results = mnist_cntk_compiled.results_dir
    report = json.loads((results / "report.json").read_text())
    html = (results / "report.html").read_text(encoding="utf-8")
    structure = parse(html)
    assert structure.urls == [] and "<script" not in html

    # Times212 was selected, but modelopt left it in float: not counted, not highlighted, reason shown.
    declined = next(row for row in report["decisions"] if row["name"] == "Times212")
    assert declined["quantized"] and declined["declined_by_backend"]
    assert re.search(r'<div class="card" data-card="nodes"><div class="k">nodes</div><div class="v">2 INT8 · 1 float</div>'
                     r'<div class="d">of 3 compute nodes; float: 1 left in float by the backend</div>', html)
    assert "2 of 3 compute nodes quantized (highlighted), 1 selected but left in float by the backend" in html
    assert _row_of(html, "Times212").startswith('<tr class="">')
    assert escape(declined["declined_by_backend"]) in _row_of(html, "Times212")
    # Convolution28's group has no per-node notes: its nodes are a compact list, the quantized highlighted.
    assert '<code class="node q" title="Conv">Convolution28</code>' in html

    # Every warning of report.json is in the page.
    assert report["warnings"] and "Warnings" in structure.headings
    for warning in report["warnings"]:
        assert f"<li>{escape(warning)}</li>" in html

    # Paths point where the results are, never into the staging folder that was renamed into place.
    model = str(results / "mnist_cntk.int8.onnx")
    assert report["output"] == model and report["comparison"]["candidate"] == model
    assert report["comparison"]["passed"] and report["comparison"]["num_samples"] == 300
    assert f"<code>{escape(model)}</code>" in html
    for text in ((results / "report.json").read_text(), html):
        assert ".partial" not in text


def test_the_first_row_of_a_tensorrt_compile_says_what_its_cpu_timing_is_worth(mnist_cntk_compiled):
    # mnist_cntk_compiled is placed for TensorRT (the default target) and timed on ONNX Runtime's CPU provider.
    report = json.loads((mnist_cntk_compiled.results_dir / "report.json").read_text())
    assert report["spec"]["target"] == "tensorrt" and report["latency"]["runtime"] == "onnxruntime"
    html = (mnist_cntk_compiled.results_dir / "report.html").read_text()
    speed = re.search(r'<div class="card" data-card="speed">.*?</div></div>', html)
    assert speed and "placed for tensorrt, so this timing says little about its speed there" in speed.group(0)
    assert 'data-card="fidelity"' not in html  # kernel fidelity is an ONNX Runtime CPU check: no card


def test_corrections_say_which_nodes_were_fitted_on_seven_bit_weights():
    from tao_qc.report.html import corrections_html

    nodes = [{"node": "conv", "output_error_nearest": 0.01, "output_error_after": 0.001, "iterations": 300,
              "weight_bits": 7}, {"node": "dw", "output_error_nearest": 0.02, "output_error_after": 0.01, "iterations": 300}]
    html = corrections_html({"corrections": [{"method": "adaround", "samples": 16, "seconds": 1.0, "nodes": nodes}]})
    assert "1 of them on the 7-bit weights placement stores for a CPU without VNNI" in html
    nodes = [{k: v for k, v in n.items() if k != "weight_bits"} for n in nodes]
    assert "7-bit" not in corrections_html({"corrections": [{"method": "adaround", "samples": 16, "seconds": 1.0,
                                                              "nodes": nodes}]})
