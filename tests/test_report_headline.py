"""report.html as a person reads it, checked on the rendered page of real compiles: the first row is the
user's accuracy target, then nodes, speed and kernel fidelity; default checks come after it, marked;
decisions are grouped by rule and say each rule once (at 4 nodes and at 500); the error histogram's
tick labels never overlap; no relative error is an artifact of a zero reference. The terminal
summary keeps the same order."""

from __future__ import annotations

import json
import re
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits, run_cli, session
from tao_qc.driver import compile_model
from tao_qc.report.console import compile_summary_lines
from tao_qc.spec.cpu import this_machine


class _Page(HTMLParser):
    """The parts of report.html these tests read: the cards (in order, with the row they sit in), the
    decision groups, the histogram tick labels, every element's text."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict] = []  # {"kind", "key", "value", "detail", "row"}
        self.groups: list[dict] = []  # {"summary", "open", "nodes", "notes", "text"}
        self.histograms: list[list[tuple[float, str]]] = []  # per histogram: (x, label) of tick labels
        self.order: list[str] = []  # "headline", "defaults", "h2:<text>" in document order
        self._stack: list[tuple[str, dict]] = []
        self._card: dict | None = None
        self._card_part: str | None = None
        self._group: dict | None = None
        self._in_summary = self._in_code = False
        self._histogram: list | None = None
        self._tick: float | None = None
        self._h2: str | None = None
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "div" and "headline" in classes:
            self._row = "headline"
            self.order.append("headline")
        if tag == "div" and "defaults" in classes:
            self._row = "defaults"
            self.order.append("defaults")
        if tag == "h2":
            self._h2 = ""
        if tag == "div" and "card" in classes:
            self._card = {"kind": attrs.get("data-card"), "key": "", "value": "", "detail": "", "row": self._row}
        elif self._card is not None and tag == "div" and classes and classes[0] in ("k", "v", "d"):
            self._card_part = {"k": "key", "v": "value", "d": "detail"}[classes[0]]
        if tag == "details" and "group" in classes:
            self._group = {"summary": "", "open": "open" in attrs, "nodes": [], "notes": [], "text": ""}
        if tag == "summary" and self._group is not None:
            self._in_summary = True
        if tag == "code" and self._group is not None:
            self._in_code = True
        if tag == "svg" and attrs.get("aria-label") == "error histogram":
            self._histogram = []
        if tag == "text" and self._histogram is not None:
            self._tick = float(attrs["x"])
        self._stack.append((tag, attrs))

    def handle_endtag(self, tag):
        opened, attrs = self._stack.pop()
        classes = (attrs.get("class") or "").split()
        if tag == "h2":
            self.order.append(f"h2:{self._h2}")
            self._h2 = None
            self._row = None
        if tag == "div" and self._card is not None and "card" in classes:
            self.cards.append(self._card)
            self._card = None
        elif tag == "div" and self._card_part:
            self._card_part = None
        if tag == "summary":
            self._in_summary = False
        if tag == "code":
            self._in_code = False
        if tag == "details" and self._group is not None:
            self.groups.append(self._group)
            self._group = None
        if tag == "svg" and self._histogram is not None:
            self.histograms.append(self._histogram)
            self._histogram = None
        if tag == "text":
            self._tick = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data
        if self._card is not None and self._card_part:
            self._card[self._card_part] += data
        if self._group is not None:
            self._group["text"] += data
            if self._in_summary:
                self._group["summary"] += data
            elif self._in_code:
                self._group["nodes"].append(data)
        if self._histogram is not None and self._tick is not None and re.fullmatch(r"1e-?\d+", data.strip()):
            self._histogram.append((self._tick, data.strip()))


def page(path: Path) -> _Page:
    parsed = _Page()
    parsed.feed(path.read_text(encoding="utf-8"))
    parsed.close()
    return parsed


# An 11-px sans-serif digit is about 6.1 px wide (0.55 em), a minus sign less: a label of n characters
# takes at most 6.5 n px. Labels closer than that overprint.
def _labels_clear(ticks: list[tuple[float, str]]) -> bool:
    return all(x2 - x1 >= 6.5 * (len(a) + len(b)) / 2 + 2 for (x1, a), (x2, b) in zip(ticks, ticks[1:]))


# ---------------------------------------------------------------------------------------------
# A user's accuracy target on mnist_cntk: it comes first, the default top-1 check after it


@pytest.fixture(scope="module")
def mnist_with_target(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist-target")
    images, labels = digits()
    np.savez(root / "calibration.npz", **{MNIST_INPUT: images[:48]})
    np.savez(root / "held_out.npz", **{MNIST_INPUT: images[100:300]})
    np.save(root / "labels.npy", labels[100:300])
    # Compiled for this machine by name: the speed card is headlined only where the model was timed
    # on the CPU it is for.
    spec = {"quantize": {"device": "cpu", "target": "onnxruntime", "calibration": {"data": str(root / "calibration.npz")},
                         "onnxruntime": {"cpu": this_machine().isa},
                         "compare": {"data": str(root / "held_out.npz"), "labels": str(root / "labels.npy")},
                         "accuracy": {"metric": "top1_accuracy", "max_drop": 0.05, "fallback": "off"}}}
    (root / "q.json").write_text(json.dumps(spec))
    return root


def test_the_first_card_is_the_users_target_and_defaults_follow_marked_with_this_cpus_speed(mnist_with_target, capsys):
    root = mnist_with_target
    code, stdout, stderr = run_cli(["compile", MNIST_CNTK, "--spec", root / "q.json", "-o", root / "results"], capsys)
    report = json.loads((root / "results" / "report.json").read_text())
    final = report["accuracy"]["final"]
    assert final["metric"] == "top1_accuracy" and final["value"] is not None
    assert code == (0 if final["met"] else 1), stderr
    assert report["verdict"]["passed"] == (code == 0)
    html = page(root / "results" / "report.html")

    headline = [card for card in html.cards if card["row"] == "headline"]
    assert [card["kind"] for card in headline] == ["target", "nodes", "speed", "fidelity"]
    target = headline[0]
    assert target["key"].startswith("accuracy target · top1_accuracy")
    assert f"{final['value']:.4g}" in target["value"]
    assert ("met" if final["met"] else "missed") in target["value"]
    # The target in words, without the metric's name again (the card's title holds it), FP32 in it.
    assert f"target {final['target'].removeprefix('top1_accuracy ')}" in target["detail"]
    assert f"FP32 {final['fp32']:.4g}" in target["detail"]
    nodes = report["counts"]
    assert f"{nodes['quantized']} INT8 · {nodes['candidates'] - nodes['quantized']} float" in headline[1]["value"]
    assert headline[1]["detail"] == f"all {nodes['candidates']} compute nodes quantized"  # the float case: the 500-node test
    # The speed check's interleaved rounds are headlined where they ran (target onnxruntime, this CPU).
    speed = report["speed"]["final_vs_fp32"]["1"]
    assert f"{speed:.2f}×" in headline[2]["value"] and "in interleaved rounds" in headline[2]["detail"]
    assert f"one timed pass at batch 1: FP32 {report['latency']['rows'][0]['median_ms']:.3f} ms" in headline[2]["detail"]
    assert report["cpu"]["this_machine"]["isa"] in headline[2]["detail"]
    assert ("kernels exact" if report["kernel_fidelity"]["passed"] else "kernels deviate") in headline[3]["value"]

    # The default top-1 agreement check: below the headline row, marked default, and said to decide nothing.
    [default] = [c for c in report["comparison"]["checks"] if c["why"].startswith("default")]
    defaults = [card for card in html.cards if card["row"] == "defaults"]
    assert [card["key"] for card in defaults] == [f"default · top-1 agreement · {default['output']}"]
    assert html.order.index("headline") < html.order.index("defaults") < html.order.index("h2:Accuracy: quantized against FP32")
    text = (root / "results" / "report.html").read_text()
    assert "they decide nothing: your accuracy target above does" in text
    assert not any("cosine" in card["key"] or "check" in card["key"].lower() for card in headline)

    # The terminal summary: the same order.
    lines = stdout.splitlines()
    starts = ["  accuracy target: top1_accuracy", "  nodes: ", "  speed vs FP32: ", "  kernel fidelity: ",
              "  default checks (they decide nothing: your target does): top-1 agreement"]
    positions = [next(i for i, line in enumerate(lines) if line.startswith(start)) for start in starts]
    assert positions == sorted(positions), stdout


def test_without_a_target_the_default_checks_are_said_to_decide(mnist_cntk_compiled):
    results = mnist_cntk_compiled.results_dir
    report = json.loads((results / "report.json").read_text())
    html = page(results / "report.html")
    first = next(card for card in html.cards if card["row"] == "headline")
    assert first["kind"] == "target" and first["key"] == "accuracy: default checks"
    assert ("PASSED" if report["comparison"]["passed"] else "FAILED") in first["value"]
    assert "No accuracy target is set, so these decide the run." in (results / "report.html").read_text()
    assert all(card["key"].startswith("default · ") for card in html.cards if card["row"] == "defaults")
    # Each default says what it measures, whether it is the task's measure, and where its floor came from.
    text = (results / "report.html").read_text()
    for check in (c for c in report["comparison"]["checks"] if c["default"]):
        assert f'<div class="about" data-check="{check["metric"]}">Measures {escape(check["measures"])}' in text
        assert f"Floor: {escape(check['floor_basis'])}" in text
    # A classifier's top-1 agreement is its task's measure: no word of proxies in the terminal.
    assert not any("proxies" in line for line in compile_summary_lines(report))


def test_checks_that_pass_read_passed_where_the_run_fails_on_kernel_fidelity(mnist_cntk_compiled, tmp_path):
    """The accuracy line and card give the checks' own verdict; the run's failure (here the kernels of
    this CPU, as compile records it) is the `run:` line and the verdict under the cards."""
    from tao_qc.report.html import write_html_report

    report = json.loads((mnist_cntk_compiled.results_dir / "report.json").read_text())
    assert report["comparison"]["passed"]
    reason = "ORT's integer kernels on this CPU (avx2) deviate from the graph's arithmetic: Plus214_Output_0 off by 6.10x the quantization error"
    report["kernel_fidelity"] = {**(report.get("kernel_fidelity") or {}), "passed": False, "reason": reason, "decides": True}
    report["verdict"] = {"passed": False, "failures": [reason], "fails_run": True}
    lines = compile_summary_lines(report)
    assert "  accuracy: the default checks (no accuracy.metric set): passed" in lines
    assert f"  run: FAILED: {reason}" in lines
    html = page(write_html_report(report, tmp_path / "report.html"))
    first = next(card for card in html.cards if card["row"] == "headline")
    assert first["key"] == "accuracy: default checks" and "PASSED" in first["value"]
    assert "run failed (exit 1)" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------------------------------------
# 500 compute nodes, ending in a softmax: grouped decisions, thinned ticks, a guarded relative error

CHAIN, WIDTH, CLASSES, PROBE = 500, 16, 10, 64


def _chain_model(path: Path, sample: np.ndarray) -> Path:
    """`CHAIN` MatMul+Relu layers, each near-identity and scaled so that `sample`'s features keep a mean
    of 0.5 (a plain chain of 500 layers fades to nothing or explodes), then a Gemm to logits spread
    some +-40 apart and a Softmax: probabilities down to ~1e-26 in the reference, the near-zeros a plain
    relative error turns into 1e+13, and errors over 20 decades for the histogram."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    value, features = "x", sample.astype(np.float32)
    for index in range(CHAIN):
        weight = (np.eye(WIDTH) + 0.08 * rng.standard_normal((WIDTH, WIDTH))).astype(np.float32)
        weight *= 0.5 / np.maximum(features @ weight, 0).mean()
        features = np.maximum(features @ weight, 0)
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [value, f"w{index}"], [f"m{index}"], name=f"block{index // 100}_mm{index}"))
        nodes.append(helper.make_node("Relu", [f"m{index}"], [f"r{index}"], name=f"block{index // 100}_relu{index}"))
        value = f"r{index}"
    # A second output with exact zeros in FP32: the same Gemm of the input twice, once quantized
    # ("probe") and once kept float by skip_names ("probe_float"), subtracted. FP32 computes 0 to
    # the bit; INT8 leaves its rounding there, the case a plain relative error turns into 1e+35.
    # Beside it the quantized Gemm's own values, so the output has a scale of its own.
    probe = rng.standard_normal((WIDTH, PROBE)).astype(np.float32)
    bias = -0.5 * probe.sum(axis=0)
    inits += [numpy_helper.from_array(probe, "probe_w"), numpy_helper.from_array(bias, "probe_b"),
              numpy_helper.from_array(probe.copy(), "probe_float_w"), numpy_helper.from_array(bias.copy(), "probe_float_b")]
    nodes += [helper.make_node("Gemm", ["x", "probe_w", "probe_b"], ["probe_q"], name="probe"),
              helper.make_node("Gemm", ["x", "probe_float_w", "probe_float_b"], ["probe_f"], name="probe_float"),
              helper.make_node("Sub", ["probe_q", "probe_f"], ["probe_d"], name="probe_sub"),
              helper.make_node("Concat", ["probe_d", "probe_q"], ["features"], name="probe_concat", axis=1)]
    head = rng.standard_normal((WIDTH, CLASSES)).astype(np.float32)
    head *= 20 / (features @ head).std()
    inits += [numpy_helper.from_array(head, "head_w"), numpy_helper.from_array(np.zeros(CLASSES, np.float32), "head_b")]
    nodes += [helper.make_node("Gemm", [value, "head_w", "head_b"], ["logits"], name="head"),
              helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, CLASSES]),
                               helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 2 * PROBE])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def chain_compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(1)
    calibration, compared = rng.random((16, WIDTH), dtype=np.float32), rng.random((24, WIDTH), dtype=np.float32)
    np.savez(root / "calibration.npz", x=calibration)
    np.savez(root / "compare.npz", x=compared)
    model = _chain_model(root / "chain.onnx", compared)
    spec = {"quantize": {"device": "cpu", "target": "onnxruntime",
                         "layers": [{"module_name": "*"}, {"module_name": "block4_*", "weights": {"dtype": "native"},
                                                           "activations": {"dtype": "native"}}],
                         "skip_names": ["block0_mm0", "head", "probe_float"],
                         "calibration": {"data": str(root / "calibration.npz")},
                         "compare": {"data": str(root / "compare.npz"), "fail_on_mismatch": False},
                         "accuracy": {"fallback": "off"},
                         "onnxruntime": {"kernel_fidelity": False}}}
    result = compile_model(model, spec, results_dir=root / "results")
    return root, model, result


def test_decisions_at_500_nodes_are_grouped_folded_and_said_once(chain_compiled):
    root, _, result = chain_compiled
    report = result.report
    decisions = report["decisions"]
    assert len(decisions) == CHAIN + 3  # every MatMul, the two probes and the head Gemm
    path = root / "results" / "report.html"
    html = page(path)
    text = path.read_text(encoding="utf-8")

    # Three groups: the '*' rule, the block4 rule that keeps nodes native, skip_names; folded at 500 nodes.
    assert len(html.groups) == 3
    assert not any(group["open"] for group in html.groups)
    listed = [name for group in html.groups for name in group["nodes"]]
    assert sorted(listed) == sorted(d["name"] for d in decisions)  # each node once, in exactly one group
    # 399 MatMuls and the probe by '*', block4's 100 kept native by the second rule, three skipped by name.
    assert sorted(group["summary"].split(" · ")[0] for group in html.groups) == ["100 nodes", "3 nodes", "400 nodes"]
    by_name = {d["name"]: d for d in decisions}
    for group in html.groups:
        first = by_name[group["nodes"][0]]
        assert first["weights_rule"] == first["activations_rule"]  # said once below, though both columns hold it
        if first["skipped_by"]:
            # skip_names is one group; each node's note names its entry, once.
            assert "skip_names" in group["summary"]
            assert all(group["text"].count(by_name[name]["skipped_by"]) == 1 for name in group["nodes"])
        else:
            # The group's rule is said once, in its summary, never again per node.
            assert group["summary"].count(first["weights_rule"]) == 1
            assert group["text"].count(first["weights_rule"]) == 1, group["summary"]
    section = unescape(text[text.index("<h2>Quantization decisions</h2>"):text.index("<h2>Passes</h2>")])
    assert section.count("layers[0] '*'") == 1 and section.count("block4_*") == 1
    # A page that scales with nodes, not with nodes times sentences: under 200 bytes a node, beside the
    # rest of the page (the pass table, figures, styles).
    assert len(text.encode()) < 200 * len(decisions) + 64_000, len(text.encode())


def test_histogram_tick_labels_are_thinned_to_what_fits(chain_compiled, mnist_cntk_compiled):
    root, _, result = chain_compiled
    outputs = result.report["comparison"]["outputs"]
    histograms = page(root / "results" / "report.html").histograms + page(mnist_cntk_compiled.results_dir / "report.html").histograms
    assert len(histograms) == len(outputs) + 1
    for ticks in histograms:
        assert len(ticks) >= 2 and _labels_clear(ticks), ticks
    # The softmax's errors span 20+ decades: one label each would overprint, so some go unlabelled.
    probabilities = next(i for i, o in enumerate(outputs) if o["name"] == "probabilities")
    edges = outputs[probabilities]["error_histogram"]["log10_edges"]
    decades = int(np.floor(edges[-1])) - int(np.ceil(edges[0])) + 1
    assert decades >= 12
    assert len(histograms[probabilities]) < decades


def test_relative_error_is_guarded_against_a_zero_reference(chain_compiled):
    root, model, result = chain_compiled
    x = np.load(root / "compare.npz")["x"]

    def run(path):
        runner = session(path)
        return [np.concatenate(parts).astype(np.float64)
                for parts in zip(*(runner.run(None, {"x": x[i:i + 1]}) for i in range(len(x))))]

    plain_errors = []
    text = (root / "results" / "report.html").read_text()
    for output, fp32, quantized in zip(result.report["comparison"]["outputs"], run(model), run(result.model_path)):
        error = np.abs(quantized - fp32)
        plain_errors.append(np.mean(error / np.maximum(np.abs(fp32), np.finfo(np.float32).tiny)))
        # The rule docs/report.md states: |q - FP32| / max(|FP32|, mean |FP32| of the output).
        guarded = np.mean(error / np.maximum(np.abs(fp32), np.abs(fp32).mean()))
        assert output["mean_rel_error"] == pytest.approx(guarded, rel=0.05, abs=1e-6), output["name"]
        assert output["mean_rel_error"] < 10
        shown = re.search(rf"<td><code>{output['name']}</code></td>(?:<td class=\"num\">[^<]*</td>){{3}}"
                          r"<td class=\"num\">([^<]*)</td>", text)
        assert shown and float(shown.group(1)) < 10
    assert max(plain_errors) > 1e3  # the artifact this model provokes: a relative error at exact zeros


# ---------------------------------------------------------------------------------------------
# The issue's case: PP-OCRv5's recognizer with a text-accuracy target, whose default cosine misses


@pytest.mark.slow  # PP-OCRv5's recognizer compiled for ONNX Runtime, fallback off (about 40 s here)
def test_a_recognizer_headlines_its_text_accuracy_and_its_missed_default_check_fails_nothing(tmp_path, shared_models, capsys):
    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    np.savez(tmp_path / "calibration.npz", x=corpus.recognizer_input(lines.files[:8]))
    np.savez(tmp_path / "lines.npz", x=corpus.recognizer_input(lines.files[8:24]))
    np.save(tmp_path / "texts.npy", np.array(lines.texts[8:24]))
    # Plain INT8 reads PP-OCRv5 badly (README of ../shared/models), so it misses the default check
    # (sequence agreement 0.97); the target here is loose enough for plain INT8 to meet, so the two disagree.
    spec = {"quantize": {"device": "cpu", "target": "onnxruntime",
                         "calibration": {"data": str(tmp_path / "calibration.npz"), "batch_size": 8},
                         "compare": {"data": str(tmp_path / "lines.npz"), "labels": str(tmp_path / "texts.npy")},
                         "accuracy": {"metric": "tao_qc.corpus:text_accuracy", "max_drop": 1.0, "fallback": "off"}}}
    (tmp_path / "q.json").write_text(json.dumps(spec))
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(["compile", shared_models / "ppocrv5_rec.onnx", "--spec", tmp_path / "q.json", "-o", out], capsys)
    report = json.loads((out / "report.json").read_text())
    # The default for a CTC recognizer's per-step probabilities: the text it reads (issue 36).
    [default_check] = [c for c in report["comparison"]["checks"] if c["default"]]
    assert default_check["metric"] == "sequence_agreement" and not default_check["passed"]
    final = report["accuracy"]["final"]
    assert final["met"] and code == 0 and report["verdict"] == {"passed": True, "failures": [], "fails_run": True}, stderr

    html = page(out / "report.html")
    text = (out / "report.html").read_text()
    first = html.cards[0]
    assert first["row"] == "headline" and first["key"] == "accuracy target · tao_qc.corpus:text_accuracy"
    assert f"{final['value']:.4g}" in first["value"] and "met" in first["value"]
    assert "run passed" in text and "FAILED" not in text
    [default] = [card for card in html.cards if card["row"] == "defaults"]
    assert default["key"] == "default · sequence agreement · fetch_name_0" and "below" in default["value"]
    assert '<span class="badge warn">below</span> <span class="badge none">default</span>' in text  # not a red "fail"
    assert "Default checks decide nothing once the accuracy target is measured" in text
    assert "  comparison on onnxruntime (16 samples): below a default check (decides nothing: accuracy.metric decides)" in stdout
    assert stdout.splitlines()[1].startswith("  accuracy target: tao_qc.corpus:text_accuracy")


def test_yunets_twelve_outputs_fold_their_passing_defaults_and_read_a_sane_relative_error(tmp_path, shared_models):
    # YuNet: the 1e+29 "mean rel" of the issue (sigmoid maps near zero), and 12 default cosine checks.
    from tao_qc.testing import corpus

    np.savez(tmp_path / "photos.npz", input=corpus.photos("yunet_n_320"))
    spec = {"quantize": {"device": "cpu", "target": "onnxruntime", "calibration": {"data": str(tmp_path / "photos.npz")},
                         "compare": {"data": str(tmp_path / "photos.npz"), "fail_on_mismatch": False},
                         "accuracy": {"fallback": "off"}, "onnxruntime": {"kernel_fidelity": False}}}
    result = compile_model(shared_models / "yunet_n_320.onnx", spec, results_dir=tmp_path / "results")
    outputs = result.report["comparison"]["outputs"]
    assert len(outputs) == 12 and all(o["mean_rel_error"] < 1 for o in outputs), [o["mean_rel_error"] for o in outputs]
    checks = result.report["comparison"]["checks"]
    assert len(checks) == 12 and all(c["why"].startswith("default") for c in checks)
    defaults = [card for card in page(tmp_path / "results" / "report.html").cards if card["row"] == "defaults"]
    failing = [c for c in checks if not c["passed"]]
    # The failing ones one by one (none, on these photos, as measured), the passing ones as one card.
    assert [card["key"] for card in defaults[:-1]] == [f"default · {c['metric']} · {c['output']}" for c in failing]  # cosine: its own name
    nearest = min((c for c in checks if c["passed"]), key=lambda c: c["value"] - c["threshold"])
    assert defaults[-1]["key"] == f"default · {len(checks) - len(failing)}{' more' if failing else ''} checks"
    assert f"closest: {nearest['metric']} {nearest['value']:.4g} on {nearest['output']}" in defaults[-1]["detail"]
    # The cosine says it is a proxy, in the checks table, and the terminal says that proxies decided.
    assert '<div class="about" data-check="cosine">' in (tmp_path / "results" / "report.html").read_text()
    assert "Is a proxy for whatever reads the values" in (tmp_path / "results" / "report.html").read_text()
    lines = compile_summary_lines(result.report)
    assert any(line.startswith("  default checks (these decide the run)") for line in lines)
    assert "  these checks are proxies, not the task: give accuracy.metric (a detector: compare.decoder) for a " \
           "verdict on what the model is for" in lines
