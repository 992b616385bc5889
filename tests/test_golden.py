"""Golden pass dumps: the canonical text after every pass that changed the graph, and the summary.

golden/<case>/ holds them for each fixed model with its spec; golden/<case>-onnxruntime/ the same
model and calibration data compiled with `target: onnxruntime` (place-for-onnxruntime included).
Any difference fails; `pytest --update-golden` rewrites the files (then review `git diff golden/`).
See golden/README.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits, export_zoo
from tao_qc.compile import compile_model
from tao_qc.pipeline import format_summary

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
MODELS = ["small_cnn", "transformer_block", "mnist_cntk"]
CASES = MODELS + [f"{model}-onnxruntime" for model in MODELS]


def _model_and_data(case: str, work: Path):
    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.spec import load_spec

    spec = load_spec(GOLDEN / case / "spec.yaml")
    case = case.removesuffix("-onnxruntime")
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


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_golden_pass_dumps(case, tmp_path, update_golden):
    model, spec, batches = _model_and_data(case, tmp_path)
    dumps = tmp_path / "dumps"
    result = compile_model(model, spec, results_dir=tmp_path / "results", dump="after-change", dump_dir=dumps,
                           calibration=batches, compare=False)
    produced = {p.name: p.read_text() for p in sorted(dumps.glob("[0-9][0-9]-*.txt"))}
    produced["summary.txt"] = format_summary(result.records, timings=False)
    if case.endswith("-onnxruntime"):
        assert spec.target == "onnxruntime"
        assert any(name.endswith("-place-for-onnxruntime.txt") for name in produced), "the placement pass changed nothing"
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
