"""The pass manager on real graphs: invariants between passes, failure reports with reproducers,
dump modes and files, provenance of created nodes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from _compile_helpers import MNIST_CNTK
from tao_qc.errors import InputError
from tao_qc.passes.fold_batchnorm import FoldBatchNorm
from tao_qc.passes.fold_constants import FoldConstants
from tao_qc.passes.load_and_check import LoadAndCheck
from tao_qc.passes.remove_identity import RemoveIdentity
from tao_qc.pipeline import (
    PROVENANCE_KEY,
    DumpInstrument,
    FixedPoint,
    PassContext,
    PassFailure,
    PassResult,
    Pipeline,
)
from tao_qc.spec import QuantizeSpec


@dataclass
class DropFirstConv:
    """A broken pass: removes a Conv whose output is still used."""

    name: str = "drop-first-conv"

    def run(self, model, ctx):
        conv = next(n for n in model.graph if n.op_type == "Conv")
        model.graph.remove(conv, safe=False)
        return PassResult(model, changed=True)


@dataclass
class RenameOutput:
    name: str = "rename-output"

    def run(self, model, ctx):
        model.graph.outputs[0].name = "renamed"
        return PassResult(model, changed=True)


@dataclass
class Explode:
    name: str = "explode"

    def run(self, model, ctx):
        raise ValueError("boom")


@dataclass
class RejectInput:
    name: str = "reject-input"

    def run(self, model, ctx):
        raise InputError("this model is not usable")


@dataclass
class AddUnmarkedIdentity:
    """Inserts an Identity before the first Conv without marking it."""

    name: str = "add-identity"

    def run(self, model, ctx):
        conv = next(n for n in model.graph if n.op_type == "Conv")
        node = ir.node("Identity", inputs=[conv.inputs[0]], name="extra_identity")
        model.graph.insert_before(conv, node)
        conv.replace_input_with(0, node.outputs[0])
        return PassResult(model, changed=True)


@pytest.fixture
def mnist() -> Path:
    return MNIST_CNTK


def context(tmp_path: Path, source: Path) -> PassContext:
    return PassContext(spec=QuantizeSpec(), work_dir=tmp_path, source_path=source)


def test_invariants_catch_a_pass_that_breaks_the_graph_and_save_a_reproducer(tmp_path, mnist):
    dumps = DumpInstrument(tmp_path / "passes")
    pipeline = Pipeline([LoadAndCheck(mnist), FoldConstants(), DropFirstConv()], [dumps])
    with pytest.raises(PassFailure) as caught:
        pipeline.run(None, context(tmp_path, mnist))
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert "pass 'drop-first-conv' failed" in message
    assert "passes run before it: load-and-check, fold-constants" in message
    assert "onnx.checker" in message or "shape inference" in message
    reproducer = tmp_path / "passes" / "02-drop-first-conv.failed-input.onnx"
    assert error.reproducer == reproducer and str(reproducer) in message
    # The reproducer is the graph the pass received: valid, with the Conv still there ...
    received = onnx.load(str(reproducer))
    onnx.checker.check_model(received)
    assert sum(n.op_type == "Conv" for n in received.graph.node) == 2
    # ... and running the pass alone on it fails the same way.
    with pytest.raises(PassFailure, match="drop-first-conv"):
        Pipeline([LoadAndCheck(reproducer), DropFirstConv()]).run(None, context(tmp_path / "again", reproducer))
    summary = json.loads((tmp_path / "passes" / "summary.json").read_text())
    assert [row["pass"] for row in summary] == ["load-and-check", "fold-constants", "drop-first-conv"]
    assert summary[-1]["failed"] and not summary[0]["failed"]


def test_a_pass_may_not_change_the_graph_interface(tmp_path, mnist):
    with pytest.raises(PassFailure, match=r"rename-output.*graph outputs changed from \['Plus214_Output_0'\] to \['renamed'\]"):
        Pipeline([LoadAndCheck(mnist), RenameOutput()]).run(None, context(tmp_path, mnist))


def test_a_raising_pass_is_reported_with_its_predecessors(tmp_path, mnist):
    pipeline = Pipeline([LoadAndCheck(mnist), RemoveIdentity(), Explode()], [DumpInstrument(tmp_path / "d")])
    with pytest.raises(PassFailure, match=r"pass 'explode' failed \(passes run before it: load-and-check, remove-identity\): ValueError: boom"):
        pipeline.run(None, context(tmp_path, mnist))
    assert (tmp_path / "d" / "02-explode.failed-input.onnx").is_file()


def test_bad_user_input_found_by_a_pass_is_not_wrapped_and_saves_no_reproducer(tmp_path, mnist):
    pipeline = Pipeline([LoadAndCheck(mnist), RejectInput()], [DumpInstrument(tmp_path / "d")])
    with pytest.raises(InputError, match="^this model is not usable$"):
        pipeline.run(None, context(tmp_path, mnist))
    assert not list((tmp_path / "d").glob("*.failed-input.onnx"))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("after-all", {"00-load-and-check", "01-fold-constants", "02-remove-identity"}),
        ("after-change", {"00-load-and-check", "01-fold-constants"}),
        ("after-failure", set()),
    ],
)
def test_dump_modes_write_graph_text_and_diff_per_pass(tmp_path, mnist, mode, expected):
    directory = tmp_path / "passes"
    pipeline = Pipeline([LoadAndCheck(mnist), FoldConstants(), RemoveIdentity()], [DumpInstrument(directory, mode)])
    result = pipeline.run(None, context(tmp_path, mnist))
    assert [r.changed for r in result.records] == [True, True, False]
    assert {p.stem for p in directory.glob("*.onnx")} == expected
    assert {p.stem for p in directory.glob("*.txt")} == expected | {"summary"}
    assert {p.stem for p in directory.glob("*.diff")} == expected - {"00-load-and-check"}
    for stem in expected:
        onnx.checker.check_model(onnx.load(str(directory / f"{stem}.onnx")))
        assert (directory / f"{stem}.txt").read_text().startswith("# tao-qc text")
    if "01-fold-constants" in expected:
        diff = (directory / "01-fold-constants.diff").read_text().splitlines()
        assert diff[0] == "# ops: -Reshape 1 (nodes 12 -> 11)"
        assert diff[1] == "--- 00-load-and-check.txt" and diff[2] == "+++ 01-fold-constants.txt"
        assert any(line.startswith("-") and "Reshape" in line for line in diff[3:])
    if "02-remove-identity" in expected:  # an unchanged pass diffs as no change
        assert (directory / "02-remove-identity.diff").read_text().startswith("# ops: no change (nodes 11)")
    rows = json.loads((directory / "summary.json").read_text())
    assert [(r["pass"], r["changed"], r["nodes"]) for r in rows] == [
        ("load-and-check", True, 12), ("fold-constants", True, 11), ("remove-identity", False, 11)]
    assert rows[1]["op_delta"] == "# ops: -Reshape 1 (nodes 12 -> 11)" and rows[1]["stats"] == {"nodes_folded": 1}
    summary = (directory / "summary.txt").read_text().splitlines()
    assert summary[0].split()[:5] == ["#", "pass", "changed", "time_s", "nodes"]
    assert summary[2].split()[:2] == ["1", "fold-constants"] and "-Reshape 1" in summary[2]


def test_print_after_prints_that_pass_text(tmp_path, mnist):
    printed = []
    dumps = DumpInstrument(None, "after-failure", ["fold-constants"], echo=printed.append)
    Pipeline([LoadAndCheck(mnist), FoldConstants(), RemoveIdentity()], [dumps]).run(None, context(tmp_path, mnist))
    assert len(printed) == 1
    assert printed[0].startswith("# tao-qc text") and "# ops (11 nodes):" in printed[0]


def test_nodes_a_pass_creates_carry_its_name(tmp_path, mnist):
    result = Pipeline([LoadAndCheck(mnist), AddUnmarkedIdentity()]).run(None, context(tmp_path, mnist))
    marks = {n.name: n.metadata_props.get(PROVENANCE_KEY) for n in result.model.graph}
    assert marks["extra_identity"] == "add-identity"
    assert marks["Convolution28"] is None
    saved = ir.to_proto(result.model)
    node = next(n for n in saved.graph.node if n.name == "extra_identity")
    assert {p.key: p.value for p in node.metadata_props} == {PROVENANCE_KEY: "add-identity"}


def test_pass_names_must_be_kebab_case(mnist):
    @dataclass
    class Bad:
        name: str = "Bad_Name"

    with pytest.raises(ValueError, match="kebab-case"):
        Pipeline([LoadAndCheck(mnist), Bad()])


def test_a_fixed_point_group_repeats_until_a_round_changes_nothing(tmp_path):
    """An Identity between the stem Conv and its BatchNorm: the first round removes it and folds
    every BatchNorm, the second changes nothing and ends the group."""
    import numpy as np
    import onnxruntime as ort

    from tao_qc.testing import zoo

    proto = onnx.load(str(zoo.export_zoo("small_cnn", tmp_path / "m.onnx")))
    bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    bn.input[0], conv_out = "stem_conv_identity", bn.input[0]
    proto.graph.node.insert(list(proto.graph.node).index(bn), onnx.helper.make_node(
        "Identity", [conv_out], ["stem_conv_identity"], name="stem_identity"))
    onnx.save(proto, tmp_path / "hidden.onnx")
    canonicalize = FixedPoint("canonicalize", [FoldConstants(), FoldBatchNorm(), RemoveIdentity()])
    result = Pipeline([LoadAndCheck(), canonicalize]).run(None, context(tmp_path, tmp_path / "hidden.onnx"))
    assert [r.name for r in result.records] == ["load-and-check"] + ["fold-constants", "fold-batchnorm", "remove-identity"] * 2
    assert [r.changed for r in result.records[1:]] == [True, True, False, False, False, False]
    assert not {"BatchNormalization", "Identity"} & {n.op_type for n in result.model.graph}
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    before = ort.InferenceSession(str(tmp_path / "hidden.onnx")).run(None, {"input": x})[0]
    after = ort.InferenceSession(ir.to_proto(result.model).SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)


def test_a_fixed_point_group_that_never_settles_stops_at_its_cap_with_a_warning(tmp_path, mnist, caplog):
    churn = FixedPoint("churn", [AddUnmarkedIdentity(), RemoveIdentity()], max_rounds=2)
    pipeline = Pipeline([LoadAndCheck(), churn])
    assert pipeline.names == ["load-and-check", "add-identity", "remove-identity"]
    result = pipeline.run(None, context(tmp_path, mnist))
    assert [r.name for r in result.records] == ["load-and-check"] + ["add-identity", "remove-identity"] * 2
    assert "churn stopped at its cap of 2 rounds" in result.records[-1].notes[-1]
    assert "still changing the graph after 2 rounds" in caplog.text
