"""Do the default checks' floors separate INT8 models that keep the task from those that lose it?
(issue 36). One command:

    python bench/default_checks.py [--cpu avx2|avx512_vnni|...]

For each zoo model trained here (tests/_text_map_helpers.py, tests/_ctc_helpers.py; cached in
.pytest_cache like the tests' own; the word recognizer's first training took 12 minutes on 2 cores), several INT8 models from one FP32 model: max and percentile
ranges, and max ranges where one ReLU channel carries rare outliers (the channel scaled up by a
factor, its consumer's weights scaled down by the same factor: FP32 computes the same). Each is
compiled with fallback off; the table gives its default check (value, floor, verdict, on the
comparison data) beside its task result on unseen data, FP32's and INT8's:
- text detector: ICDAR's H-mean of the lines found against the true lines (text_regions' matching);
- recognizers: character error rate against the true text.
"Task kept": INT8 within a point of FP32's task figure. A floor is right where the verdict and
"task kept" agree on every row.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from tao_qc.driver import compile_model  # noqa: E402
from tao_qc.errors import AccuracyError  # noqa: E402
from tao_qc.evaluate import ctc_reading, text_regions  # noqa: E402
from tao_qc.evaluate.results import check_name  # noqa: E402
from tao_qc.testing import zoo  # noqa: E402
from tao_qc.testing.corpus import character_error_rate  # noqa: E402

TASK_POINT = 0.01  # "within a point" of FP32's task figure


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    session = _session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _compile(source: Path, folder: Path, algorithm: str, cpu: str) -> tuple[dict, Path]:
    spec = {"quantize": {"target": "onnxruntime", "algorithm": algorithm, "onnxruntime": {"cpu": cpu, "speed": "off"},
                         "calibration": {"data": str(folder / "cal.npz"), "batch_size": 8},
                         "compare": {"data": str(folder / "held.npz")}, "accuracy": {"fallback": "off"}}}
    results = folder / f"{source.stem}-{algorithm}"
    try:
        compile_model(source, spec, results_dir=results)
    except AccuracyError:
        pass  # the verdict is in report.json
    (check,) = json.loads((results / "report.json").read_text())["comparison"]["checks"]
    return check, results / f"{source.stem}.int8.onnx"


def _cer(probabilities: np.ndarray, texts: list[list[int]], blank: int) -> float:
    return character_error_rate(ctc_reading.greedy_decode(probabilities, blank), texts)


def _row(model: str, change: str, check: dict, fp32_task: float, int8_task: float, task: str, lower_is_better: bool):
    kept = int8_task <= fp32_task + TASK_POINT if lower_is_better else int8_task >= fp32_task - TASK_POINT
    verdict = "pass" if check["passed"] else "fail"
    return (f"| {model} | {change} | {check_name(check['metric'])} | {check['value']:.3f} | {check['threshold']:g} | "
            f"{verdict} | {task} {fp32_task:.3f} -> {int8_task:.3f} | {'yes' if kept else 'no'} |"
            + ("" if kept == check["passed"] else " **disagree**"))


def text_detector(folder: Path, cpu: str) -> list[str]:
    from _text_map_helpers import text_pages, trained_detector, with_outlier_channel

    calibration, _ = text_pages(16, seed=31)
    held, _ = text_pages(16, seed=32)
    unseen, truth = text_pages(64, seed=33)
    np.savez(folder / "cal.npz", input=calibration)
    np.savez(folder / "held.npz", input=held)
    rows = []
    for factor in (1.0, 30.0, 50.0, 70.0, 100.0):
        model = with_outlier_channel(trained_detector(), factor, calibration) if factor > 1 else trained_detector()
        source = folder / f"detector_{int(factor)}x.onnx"
        zoo.export_onnx(model, torch.from_numpy(calibration[:1]), source, dynamic_batch=True)
        fp32_task = text_regions.region_agreement(truth, _run(source, unseen)).h_mean
        for algorithm in ("max", "percentile"):
            check, compiled = _compile(source, folder, algorithm, cpu)
            int8_task = text_regions.region_agreement(truth, _run(compiled, unseen)).h_mean
            change = f"{algorithm} ranges" + (f", outlier {factor:g}x" if factor > 1 else "")
            rows.append(_row("text detector (zoo, DB-style)", change, check, fp32_task, int8_task,
                             "lines found", lower_is_better=False))
    return rows


def _recognizer_rows(name: str, folder: Path, cpu: str, reader, data: dict, blank: int, factors: tuple[float, ...],
                     plant) -> list[str]:
    from _ctc_helpers import PerStepSoftmax

    np.savez(folder / "cal.npz", input=data["calibration"])
    np.savez(folder / "held.npz", input=data["held"])
    rows = []
    for factor in factors:
        model = copy.deepcopy(reader)
        with torch.no_grad():
            plant(model, factor)
        source = folder / f"reader_{int(factor)}x.onnx"
        zoo.export_onnx(PerStepSoftmax(model).eval(), torch.from_numpy(data["calibration"][:1]), source, dynamic_batch=True)
        fp32_task = _cer(_run(source, data["test"]), data["test_texts"], blank)
        for algorithm in ("max", "percentile"):
            check, compiled = _compile(source, folder, algorithm, cpu)
            int8_task = _cer(_run(compiled, data["test"]), data["test_texts"], blank)
            change = f"{algorithm} ranges" + (f", outlier {factor:g}x" if factor > 1 else "")
            rows.append(_row(name, change, check, fp32_task, int8_task, "CER", lower_is_better=True))
    return rows


def word_recognizer(folder: Path, cpu: str) -> list[str]:
    from _ctc_helpers import WORD_BLANK, trained_word_recognizer
    from _text_map_helpers import rarest_active_channel

    reader, data = trained_word_recognizer()
    with torch.no_grad():
        channel = rarest_active_channel(reader.relu(reader.stem(torch.from_numpy(data["calibration"]))))

    def plant(model, factor):  # ReLU(k z) = k ReLU(z); the depthwise consumer's channel undoes k
        model.stem.weight[channel] *= factor
        model.stem.bias[channel] *= factor
        model.depthwise1.weight[channel] /= factor

    return _recognizer_rows("word recognizer (zoo, 63 classes, blank first)", folder, cpu, reader, data, WORD_BLANK,
                            (1.0, 30.0, 100.0, 300.0), plant)


def digit_recognizer(folder: Path, cpu: str) -> list[str]:
    from _ctc_helpers import BLANK, trained_recognizer

    reader, data = trained_recognizer()

    def plant(model, factor):  # tests/test_ctc_reading.py's culprit: conv1's channel 0, read back by conv2
        model.conv1.weight[0] *= factor
        model.conv1.bias[0] *= factor
        model.conv2.weight[:, 0] /= factor

    return _recognizer_rows("digit-string recognizer (zoo, 11 classes, blank last)", folder, cpu, reader, data, BLANK,
                            (1.0, 1000.0), plant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default="avx2", help="quantize.onnxruntime.cpu for every compile (default avx2)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| model | INT8 model | default check | value | floor | verdict | task on unseen data (FP32 -> INT8) | task kept |")
    print("|---|---|---|---:|---:|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        for name, bench in (("detector", text_detector), ("words", word_recognizer), ("digits", digit_recognizer)):
            folder = Path(temp) / name
            folder.mkdir()
            for row in bench(folder, args.cpu):
                print(row, flush=True)


if __name__ == "__main__":
    main()
