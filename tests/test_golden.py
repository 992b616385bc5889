"""Golden pass dumps: the canonical text after every pass that changed the graph, and the summary.

golden/<case>/ holds them for each fixed model with its spec; golden/<case>-onnxruntime/ the same
model and calibration data compiled with `target: onnxruntime` (place-for-onnxruntime included) for
a CPU with VNNI (8-bit weights), golden/<case>-onnxruntime-avx2/ for one without (7-bit weights),
golden/<case>-onnxruntime-symmetric/ with modelopt's symmetric grids shifted to uint8 (zero point
128, `activation_ranges: symmetric`) where the others' follow the data's own bounds (the default). Each spec names its CPU, so every machine checks them all.
Any difference fails; `pytest --update-golden` rewrites the files (then review `git diff golden/`).
See golden/README.md.

The texts pin structure and scales to 3 significant digits; the numbers the text does not show
(int8 weights, int32 biases, per-channel scales) are held to the invariants that make them right:
each int8 weight dequantizes to the float weight it replaced within half a quantization step, and
each int32 bias has the scale input scale x weight scale, channel by channel, and dequantizes to
the float bias within half a step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits, export_zoo
from onnx import numpy_helper

from tao_qc.driver import compile_model
from tao_qc.spec.cpu import resolve as resolve_cpu
from tao_qc.pipeline import format_summary
from tao_qc.ir.textform import format_model

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MODELS = ["small_cnn", "transformer_block", "mnist_cntk", "small_cnn_mixed"]
# Cases that compile another case's model with a spec of their own.
MODEL_OF = {"small_cnn_mixed": "small_cnn"}
# target onnxruntime, for each CPU whose placement differs and with symmetric activation grids (the
# suffix after the model's name)
ONNXRUNTIME_CPUS = ("-onnxruntime", "-onnxruntime-avx2", "-onnxruntime-symmetric")
CASES = MODELS + [f"{model}{cpu}" for cpu in ONNXRUNTIME_CPUS for model in MODELS]
GOLDEN_VALUE_DIGITS = 3


def _model_and_data(case: str, work: Path):
    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.spec import load_spec

    spec = load_spec(GOLDEN / case / "spec.yaml")
    case = _model_case(case)
    case = MODEL_OF.get(case, case)
    if case == "mnist_cntk":
        model = MNIST_CNTK
        arrays = {MNIST_INPUT: digits()[0][: spec.calibration.max_samples]}
    else:
        model = export_zoo(case, work)
        rng = np.random.default_rng(0)
        arrays = {}
        for info in model_inputs(onnx.load(str(model))):
            shape = (spec.calibration.max_samples, *info.shape[1:])
            arrays[info.name] = rng.standard_normal(shape).astype(np.float32)
    data = work / f"{case}.npz"
    np.savez(data, **arrays)
    batches = open_inputs(str(data), model_inputs(onnx.load(str(model))), calibration=spec.calibration)
    return model, spec, batches


def _model_case(case: str) -> str:
    for suffix in sorted(ONNXRUNTIME_CPUS, key=len, reverse=True):
        if case.endswith(suffix):
            return case.removesuffix(suffix)
    return case


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_golden_pass_dumps(case, tmp_path, update_golden):
    model, spec, batches = _model_and_data(case, tmp_path)
    dumps = tmp_path / "dumps"
    result = compile_model(model, spec, results_dir=tmp_path / "results", dump="after-change", dump_dir=dumps,
                           calibration=batches, compare=False)
    produced = {}
    for text_path in sorted(dumps.glob("[0-9][0-9]-*.txt")):
        graph = onnx.load(str(text_path.with_suffix(".onnx")))
        assert format_model(graph) == text_path.read_text()  # the saved graph is the one the dump printed
        produced[text_path.name] = format_model(graph, value_digits=GOLDEN_VALUE_DIGITS)
    produced["summary.txt"] = format_summary(result.records, timings=False)
    if case != _model_case(case):
        assert spec.target == "onnxruntime" and spec.onnxruntime.cpu != "auto", "a golden names the CPU it is for"
        assert any(name.endswith("-place-for-onnxruntime.txt") for name in produced), "the placement pass changed nothing"
        before_quantization = _last_dump_before(dumps, result.records, "quantize-modelopt")
        checked = check_stored_weights_and_biases(onnx.load(str(result.model_path)), before_quantization)
        # int8 weights are stored quantized; FP8 ones stay float behind their Q/DQ (TensorRT's form)
        assert checked["weights"] == result.report["counts"]["dtypes"].get("int8", 0)
        assert checked["biases"] == EXPECTED_INT32_BIASES[_model_case(case)]
        if spec.onnxruntime.activation_ranges != "symmetric":
            # zero points follow the data (0 for what is never negative, others where 0 falls), not 128 throughout
            placement = next(r for r in result.records if r.name == "place-for-onnxruntime")
            assert placement.stats["zero_points_from_data"] >= 1
            zeros = activation_zero_points(onnx.load(str(result.model_path)))
            assert zeros and any(z != 128 for z in zeros), zeros
        # each channel's largest weight sits on the grid's end: 127 where the CPU adds pairs in int32, 64 where not
        assert checked["weights"] == 0 or checked["largest_weight"] == resolve_cpu(spec.onnxruntime.cpu).weight_magnitude
    folder = GOLDEN / case
    expected = {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}

    if update_golden:
        for name in set(expected) - set(produced):
            (folder / name).unlink()
        for name, text in produced.items():
            (folder / name).write_text(text)
        return

    missing = sorted(set(produced) - set(expected))
    stale = sorted(set(expected) - set(produced))
    assert not missing, f"golden/{case}: no golden file for {missing} (run pytest --update-golden and review git diff golden/)"
    assert not stale, f"golden/{case}: {stale} are no longer produced (run pytest --update-golden and review)"
    for name, text in produced.items():
        assert text == expected[name], (
            f"golden/{case}/{name} differs from this run's output (if intended: pytest --update-golden, then review git diff golden/)"
        )


# Conv/Gemm biases each case's placement stores as int32 (mnist_cntk's bias Adds fold into its Convs,
# the transformer's MatMuls have none; small_cnn's head Gemm stays float; the mixed case's FP8 Convs keep
# float biases).
EXPECTED_INT32_BIASES = {"small_cnn": 3, "transformer_block": 0, "mnist_cntk": 2, "small_cnn_mixed": 2}


def activation_zero_points(model: onnx.ModelProto) -> list[int]:
    """The zero points of the uint8 activation QuantizeLinear nodes of a placed model."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [int(values[q.input[2]]) for q in model.graph.node if q.op_type == "QuantizeLinear" and len(q.input) > 2
            and q.input[2] in values and values[q.input[2]].dtype == np.uint8 and values[q.input[2]].size == 1]


def _last_dump_before(dumps: Path, records, pass_name: str) -> onnx.ModelProto:
    """The graph as the named pass received it: the last dump of a pass that ran before it."""
    index = next(r.index for r in records if r.name == pass_name)
    earlier = [p for p in sorted(dumps.glob("[0-9][0-9]-*.onnx")) if int(p.name[:2]) < index]
    return onnx.load(str(earlier[-1]))


def check_stored_weights_and_biases(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, int]:
    """Assert the invariants of every stored int8 weight and int32 bias of `quantized` against the
    float tensors the same-named node read in `float_model`; return how many of each were checked."""
    values = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    floats = {init.name: numpy_helper.to_array(init) for init in float_model.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node}
    producer = {name: node for node in quantized.graph.node for name in node.output}
    checked = {"weights": 0, "biases": 0, "largest_weight": 0}
    for node in quantized.graph.node:
        weight_dq = producer.get(node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in values:
            continue  # a float node, or a weight quantized at run time (modelopt's own placement)
        original = float_nodes[node.name]
        weight, weight_scale = _stored(weight_dq, values, np.int8)
        weight, weight_scale = _without_zero_padding(f"{node.name} weight", weight, weight_scale, floats[original.input[1]])
        _assert_within_half_a_step(f"{node.name} weight", weight, weight_scale, floats[original.input[1]])
        checked["weights"] += 1
        checked["largest_weight"] = max(checked["largest_weight"], int(np.abs(weight.astype(np.int32)).max(initial=0)))
        if len(node.input) < 3 or not node.input[2]:
            continue
        bias_dq = producer[node.input[2]]
        bias, bias_scale = _stored(bias_dq, values, np.int32)
        input_scale = values[producer[node.input[0]].input[1]]
        assert input_scale.size == 1, f"{node.name}: per-tensor input scale expected"
        np.testing.assert_allclose(bias_scale.reshape(-1), (input_scale * weight_scale).reshape(-1), rtol=1e-6,
                                   err_msg=f"{node.name}: bias scale is not input scale x weight scale")
        _assert_within_half_a_step(f"{node.name} bias", bias, bias_scale, floats[original.input[2]])
        checked["biases"] += 1
    return checked


def _without_zero_padding(what: str, integers: np.ndarray, scale: np.ndarray,
                          original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The part of a stored weight that holds the original's values: fit-ort-integer-kernels pads
    channels with zeros (input channels to a multiple of 4, output filters where needed), and that
    padding must be exactly zero."""
    if integers.shape == original.shape:
        return integers, scale
    assert integers.ndim == original.ndim and all(a >= b for a, b in zip(integers.shape, original.shape)), \
        f"{what}: stored {integers.shape} does not extend the original {original.shape}"
    kept = tuple(slice(0, n) for n in original.shape)
    padding = integers.copy()
    padding[kept] = 0
    assert not padding.any(), f"{what}: the padding beyond {original.shape} is not zero"
    scale_kept = tuple(slice(0, n) if size > 1 else slice(None) for n, size in zip(original.shape, scale.shape))
    return integers[kept], scale[scale_kept]


def _stored(dq: onnx.NodeProto, values: dict[str, np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """(integers, scale broadcastable to them) of a DequantizeLinear of a stored tensor with zero point 0."""
    integers, scale = values[dq.input[0]], values[dq.input[1]]
    zero = values[dq.input[2]] if len(dq.input) > 2 and dq.input[2] else np.zeros((), dtype)
    assert integers.dtype == dtype and zero.dtype == dtype, f"{dq.name}: {integers.dtype}, expected {np.dtype(dtype)}"
    assert not zero.any(), f"{dq.name}: symmetric quantization expected (zero point 0)"
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * integers.ndim
    if scale.size > 1:
        shape[axis] = -1
    return integers, scale.reshape(shape)


def _assert_within_half_a_step(what: str, integers: np.ndarray, scale: np.ndarray, original: np.ndarray) -> None:
    dequantized = integers.astype(np.float64) * scale.astype(np.float64)
    error = np.abs(dequantized - original.astype(np.float64))
    # half a step, plus the float32 rounding of the division that chose each integer
    allowed = scale.astype(np.float64) / 2 + 1e-6 * np.abs(original.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert (error <= allowed).all(), (
        f"{what}: dequantizes {error[worst]:.3g} away from the float value at {worst} (half a step: {allowed[worst]:.3g})")
