"""What a model carries besides its computation survives `compile`, on both targets.

The quantized model keeps metadata_props (every key, unchanged), doc strings, model version,
domain, graph name, input/output docs, custom-domain opset imports and local functions; opsets are
never downgraded; tao-qc records itself without overwriting any key of the user's. A pass that
drops any of it is stopped by the pipeline, named.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper

from _compile_helpers import export_zoo
from tao_qc.version import __version__
from tao_qc.driver import compile_model
from tao_qc.ir.model_fields import SOURCE_PRODUCER_KEY, SPEC_HASH_KEY, VERSION_KEY
from tao_qc.passes.load_and_check import LoadAndCheck
from tao_qc.pipeline import PassContext, PassFailure, PassResult, Pipeline
from tao_qc.spec import QuantizeSpec

METADATA = {"character": "a\nb\nc\n", "labels": "cat,dog", "tao_qc.note": "the user's own key in our prefix"}


@pytest.fixture(scope="module")
def decorated(tmp_path_factory):
    """small_cnn (tao_qc.zoo) with every field an exporter may set, and calibration data for it."""
    root = tmp_path_factory.mktemp("fields")
    model = onnx.load(str(export_zoo("small_cnn", root)))
    model.doc_string, model.model_version, model.domain = "a model's doc", 7, "com.example.vision"
    model.producer_name, model.producer_version = "exporter", "9.1"
    model.graph.name, model.graph.doc_string = "vision_graph", "the graph's doc"
    model.graph.input[0].doc_string, model.graph.output[0].doc_string = "an image", "class scores"
    helper.set_model_props(model, METADATA)
    model.opset_import.append(helper.make_opsetid("Paddle", 1))
    # a local function, as exporters write them for composite ops
    opset = next(o.version for o in model.opset_import if o.domain == "")
    double = helper.make_function("com.example.vision", "Double", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                                  [helper.make_opsetid("", opset)])
    model.functions.append(double)
    model.opset_import.append(helper.make_opsetid("com.example.vision", 1))
    onnx.checker.check_model(model)
    path = root / "decorated.onnx"
    onnx.save(model, str(path))
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = root / "calibration.npz"
    np.savez(data, **{model.graph.input[0].name: np.random.default_rng(0).standard_normal([16, *shape[1:]]).astype(np.float32)})
    return path, data


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_compile_keeps_every_field_and_records_itself(decorated, tmp_path, target):
    path, data = decorated
    source = onnx.load(str(path))
    result = compile_model(path, {"quantize": {"target": target, "calibration": {"data": str(data)}}},
                           results_dir=tmp_path / "out", compare=False)
    quantized = onnx.load(str(result.model_path))
    props = {p.key: p.value for p in quantized.metadata_props}
    assert {k: props[k] for k in METADATA} == METADATA  # byte for byte, the user's tao_qc.* key too
    assert props[SOURCE_PRODUCER_KEY] == "exporter 9.1" and props[VERSION_KEY] == __version__
    assert len(props[SPEC_HASH_KEY]) == 64
    assert (quantized.producer_name, quantized.producer_version) == ("tao-qc", __version__)
    for field in ("doc_string", "model_version", "domain"):
        assert getattr(quantized, field) == getattr(source, field)
    assert (quantized.graph.name, quantized.graph.doc_string) == ("vision_graph", "the graph's doc")
    assert quantized.graph.input[0].doc_string == "an image" and quantized.graph.output[0].doc_string == "class scores"
    opsets = {o.domain: o.version for o in quantized.opset_import}
    assert opsets["Paddle"] == 1 and opsets["com.example.vision"] == 1 and opsets[""] >= 13
    assert [(f.domain, f.name) for f in quantized.functions] == [("com.example.vision", "Double")]
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)  # it was quantized, too


def test_the_spec_digest_tells_two_specs_apart(decorated, tmp_path):
    path, data = decorated
    digests = set()
    for algorithm in ("minmax", "entropy"):
        spec = {"quantize": {"target": "tensorrt", "algorithm": algorithm, "calibration": {"data": str(data)}}}
        model = compile_model(path, spec, results_dir=tmp_path / algorithm, compare=False).model_path
        digests.add({p.key: p.value for p in onnx.load(str(model)).metadata_props}[SPEC_HASH_KEY])
    assert len(digests) == 2


@dataclass
class ForgetMetadata:
    """A broken pass: rebuilds the model without the user's metadata."""

    name: str = "forget-metadata"

    def run(self, model, ctx):
        model.metadata_props.clear()
        model.doc_string = None
        return PassResult(model, changed=True)


def test_a_pass_that_drops_a_field_is_stopped_and_named(decorated, tmp_path):
    path, _ = decorated
    pipeline = Pipeline([LoadAndCheck(path), ForgetMetadata()])
    with pytest.raises(PassFailure, match=r"pass 'forget-metadata' failed .*the model lost what the source carried: "
                                          r"model doc_string; metadata_props 'character', 'labels', 'tao_qc.note'"):
        pipeline.run(None, PassContext(spec=QuantizeSpec(), work_dir=tmp_path))
