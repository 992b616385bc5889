"""Do the default checks' floors separate INT8 models that keep the task from those that lose it?
(issue 36). One command:

    python bench/default_checks.py [--cpu avx2|avx512_vnni|...] [--only detector,detector2,words,digits,segmenter,segmenter3,raw]

For each zoo model trained here (tests/_text_map_helpers.py, tests/_ctc_helpers.py; weights in
tests/trained/, as the tests load them), several INT8 models from one FP32 model: max and percentile
ranges, and max ranges where one ReLU channel carries rare outliers (the channel scaled up by a
factor, its consumer's weights scaled down by the same factor: FP32 computes the same). Each is
compiled with fallback off; the table gives its default check (value, floor, verdict, on the
comparison data) beside its task result on unseen data, FP32's and INT8's:
- text detectors (the DB-style one, and a second built after its floor was set): ICDAR's H-mean of
  the lines found against the true lines (text_regions' matching);
- recognizers: character error rate against the true text;
- the text detector read as a text/paper segmenter: the text pixels' IoU with the true text;
- a three-class page segmenter: the mIoU of its label maps against the true ones;
- `raw`: ../shared/models' three detectors with no decoder given (the default checks read their raw
  outputs): mAP@.5 of their decoders' boxes against FP32's.
"Task kept": INT8 within a point of FP32's task figure (for the detectors: mAP@.5 against FP32's
boxes at least 0.9, the detection check's floor). A floor is right where the verdict and "task
kept" agree on every row.
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
from tao_qc.evaluate.detection import DEFAULT_MIN_MAP50_VS_FP32  # noqa: E402
from tao_qc.evaluate.results import check_name  # noqa: E402
from tao_qc.testing import zoo  # noqa: E402
from tao_qc.testing.corpus import character_error_rate  # noqa: E402

TASK_POINT = 0.01  # "within a point" of FP32's task figure
ICDAR = text_regions.ICDAR_MATCH_IOU  # lines found against the true boxes: ICDAR's rule


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # UltraFace lists its initializers as inputs: a warning per weight
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    session = _session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _compile(source: Path, folder: Path, algorithm: str, cpu: str) -> tuple[dict, Path]:
    """The INT8 model's default checks, as one: every check passes, the one nearest its floor shown
    (where an output has several, as a detector read without its decoder has)."""
    spec = {"quantize": {"target": "onnxruntime", "algorithm": algorithm, "onnxruntime": {"cpu": cpu, "speed": "off"},
                         "calibration": {"data": str(folder / "cal.npz"), "batch_size": 8},
                         "compare": {"data": str(folder / "held.npz")}, "accuracy": {"fallback": "off"}}}
    results = folder / f"{source.stem}-{algorithm}"
    try:
        compile_model(source, spec, results_dir=results)
    except AccuracyError:
        pass  # the verdict is in report.json
    checks = json.loads((results / "report.json").read_text())["comparison"]["checks"]
    nearest = min(checks, key=lambda check: check["value"] - check["threshold"])
    return {**nearest, "passed": all(check["passed"] for check in checks), "of": len(checks)}, \
        results / f"{source.stem}.int8.onnx"


def _cer(probabilities: np.ndarray, texts: list[list[int]], blank: int) -> float:
    return character_error_rate(ctc_reading.greedy_decode(probabilities, blank), texts)


def _row(model: str, change: str, check: dict, fp32_task: float, int8_task: float, task: str, lower_is_better: bool,
         task_floor: float | None = None):
    """`task_floor`: the task is kept at or above it (a measure against FP32's own result, where
    FP32 scores 1 by definition), instead of within a point of FP32's figure."""
    if task_floor is not None:
        kept = int8_task >= task_floor
    else:
        kept = int8_task <= fp32_task + TASK_POINT if lower_is_better else int8_task >= fp32_task - TASK_POINT
    verdict = "pass" if check["passed"] else "fail"
    name = check_name(check["metric"]) + (f" (nearest of {check['of']})" if check.get("of", 1) > 1 else "")
    return (f"| {model} | {change} | {name} | {check['value']:.3f} | {check['threshold']:g} | "
            f"{verdict} | {task} {fp32_task:.3f} -> {int8_task:.3f} | {'yes' if kept else 'no'} |"
            + ("" if kept == check["passed"] else " **disagree**"))


def _pages(folder: Path, kinds: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The zoo's pages (`_text_map_helpers.text_pages`): 16 to calibrate on and 16 to compare on,
    saved for `_compile`; returned, the calibration pages and 64 unseen ones with their true masks."""
    from _text_map_helpers import text_pages

    calibration, _ = text_pages(16, seed=31, kinds=kinds)
    held, _ = text_pages(16, seed=32, kinds=kinds)
    unseen, truth = text_pages(64, seed=33, kinds=kinds)
    np.savez(folder / "cal.npz", input=calibration)
    np.savez(folder / "held.npz", input=held)
    return calibration, unseen, truth


def _with_outliers(model, plant, factors: tuple[float, ...], calibration: np.ndarray) -> list[tuple[str, object]]:
    """(label, model) for each factor: `model` itself at 1, else `plant(model, factor, calibration)`."""
    return [(f", outlier {factor:g}x" if factor > 1 else "", plant(model, factor, calibration) if factor > 1 else model)
            for factor in factors]


def _page_rows(name: str, folder: Path, cpu: str, variants: list[tuple[str, object]], calibration: np.ndarray,
               unseen: np.ndarray, task, task_name: str) -> list[str]:
    """Each variant exported, compiled with max and clipped ranges, and its task (higher is better)
    on the unseen pages beside its default check."""
    rows = []
    for index, (planted, model) in enumerate(variants):
        source = folder / f"model_{index}.onnx"
        zoo.export_onnx(model, torch.from_numpy(calibration[:1]), source, dynamic_batch=True)
        fp32_task = task(_run(source, unseen))
        for algorithm in ("max", "percentile"):
            check, compiled = _compile(source, folder, algorithm, cpu)
            rows.append(_row(name, f"{algorithm} ranges{planted}", check, fp32_task, task(_run(compiled, unseen)),
                             task_name, lower_is_better=False))
    return rows


def _lines_found(truth: np.ndarray):
    """The task of a text detector: its regions against the true lines, ICDAR's H-mean at IoU 0.5."""
    return lambda maps: text_regions.region_agreement(truth, maps, ICDAR).h_mean


def text_detector(folder: Path, cpu: str) -> list[str]:
    from _text_map_helpers import trained_detector, with_outlier_channel

    calibration, unseen, truth = _pages(folder)
    variants = _with_outliers(trained_detector(), with_outlier_channel, (1.0, 30.0, 50.0, 70.0, 100.0), calibration)
    return _page_rows("text detector (zoo, DB-style)", folder, cpu, variants, calibration, unseen,
                      _lines_found(truth), "lines found")


def page_text_detector(folder: Path, cpu: str) -> list[str]:
    """A second detector of probability maps, built after the text-regions floor was set
    (tests/_segmenter_helpers.py: PageTextDetector), as `text_detector` measures the first."""
    from _segmenter_helpers import trained_text_detector, with_outlier_channel

    calibration, unseen, truth = _pages(folder)
    variants = _with_outliers(trained_text_detector(), with_outlier_channel, (1.0, 100.0, 1000.0, 3000.0, 10000.0),
                              calibration)
    return _page_rows("page text detector (zoo, depthwise, bilinear)", folder, cpu, variants, calibration, unseen,
                      _lines_found(truth), "lines found")


def text_segmenter(folder: Path, cpu: str) -> list[str]:
    """The zoo's text detector read as a two-class segmenter (per pixel: paper, text), whose default
    check is the mIoU of its label maps against FP32's; the task: the text pixels' IoU with the true
    text boxes.
    Outliers in the context layer, as `text_detector`'s, and in three activations at once
    (`with_outliers_everywhere`)."""
    from _text_map_helpers import TextOrPaper, trained_detector, with_outlier_channel, with_outliers_everywhere

    calibration, unseen, truth = _pages(folder)

    def text_iou(classes: np.ndarray) -> float:
        text, true = classes.argmax(axis=1) == 1, truth[:, 0] > 0.5
        return float((text & true).sum() / max(1, (text | true).sum()))

    detector = trained_detector()
    variants = _with_outliers(detector, with_outlier_channel, (1.0, 50.0, 70.0, 100.0), calibration)
    variants += [(f", three outliers {factor:g}x", with_outliers_everywhere(detector, factor, calibration))
                 for factor in (10.0, 30.0)]
    variants = [(planted, TextOrPaper(model).eval()) for planted, model in variants]
    return _page_rows("text/paper segmenter (zoo detector, 2 classes)", folder, cpu, variants, calibration, unseen,
                      text_iou, "text IoU vs truth")


def page_segmenter(folder: Path, cpu: str) -> list[str]:
    """A second segmenter, built after the label-map floor was set on the text/paper one: three
    classes (paper, a line of letters, a line of digits; tests/_segmenter_helpers.py), an outlier
    channel planted in its second pointwise activation. The task: mIoU of its label maps against the
    true ones on 64 unseen pages."""
    from _segmenter_helpers import trained_segmenter, with_outlier_channel

    from tao_qc.evaluate.measures import label_map_iou

    calibration, unseen, truth = _pages(folder, kinds=True)
    true_scores = np.moveaxis(np.eye(3, dtype=np.float32)[truth[:, 0].astype(np.int64)], -1, 1)
    variants = _with_outliers(trained_segmenter(), with_outlier_channel, (1.0, 30.0, 100.0, 300.0), calibration)
    return _page_rows("page segmenter (zoo, 3 classes)", folder, cpu, variants, calibration, unseen,
                      lambda classes: label_map_iou(true_scores, classes, 1)[0], "mIoU vs truth")


# The shared detectors, each with its own decoder and score floor (its demo's or application's).
RAW_DETECTORS = {
    "ultraface_rfb320": ("boxes_scores", 0.7),
    "yunet_n_320": ("tao_qc.corpus:decode_yunet", 0.5),
    "fastestdet": ("_detection_helpers:decode_fastestdet", 0.4),
}


def raw_detectors(folder: Path, cpu: str) -> list[str]:
    """The shared detectors compiled as a user does before giving a decoder: the default checks read
    their raw outputs (a cosine for values, top-1 per position for UltraFace's face/background
    scores). The task: the boxes their decoders find, mAP@.5 against FP32's on unseen photos
    (`corpus.photo_sets`' test set), kept at the detection check's own floor, 0.9."""
    from tao_qc.evaluate import detection
    from tao_qc.spec import CompareSpec
    from tao_qc.testing import corpus

    rows = []
    for name, (decoder_name, score) in RAW_DETECTORS.items():
        work = folder / name
        sets = corpus.photo_sets(name, work)
        np.savez(work / "cal.npz", input=sets["calibration"])
        np.savez(work / "held.npz", input=sets["held"])
        unseen = sets["test"]
        settings = CompareSpec(task="detection", decoder=decoder_name, score_threshold=score)
        decoder = detection.load_decoder(decoder_name)

        def boxes(path: Path) -> list:
            session = _session(path)
            names = [o.name for o in session.get_outputs()]
            return [found for x in unseen for found in detection.decode(
                decoder, dict(zip(names, session.run(names, {"input": x[None]}))), {"input": x[None]})]

        source = corpus.shared_models_dir() / f"{name}.onnx"
        truth = boxes(source)
        sizes = [tuple(unseen.shape[2:][::-1])] * len(unseen)
        for algorithm in ("max", "percentile"):
            check, compiled = _compile(source, work, algorithm, cpu)
            found = detection.map_against_reference(truth, boxes(compiled), sizes, *detection.thresholds(settings))
            rows.append(_row(f"{name} (raw outputs)", f"{algorithm} ranges", check, 1.0, float(found.map50 or 0.0),
                             "mAP@.5 vs FP32", lower_is_better=False, task_floor=DEFAULT_MIN_MAP50_VS_FP32))
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


BENCHES = {"detector": text_detector, "detector2": page_text_detector, "words": word_recognizer,
           "digits": digit_recognizer, "segmenter": text_segmenter, "segmenter3": page_segmenter, "raw": raw_detectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default="avx2", help="quantize.onnxruntime.cpu for every compile (default avx2)")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(BENCHES) + " (default: all)")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHES)
    if unknown := set(chosen) - set(BENCHES):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (valid: {', '.join(BENCHES)})")
    torch.set_num_threads(2)
    print("| model | INT8 model | default check | value | floor | verdict | task on unseen data (FP32 -> INT8) | task kept |")
    print("|---|---|---|---:|---:|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        for name in chosen:
            bench = BENCHES[name]
            folder = Path(temp) / name
            folder.mkdir()
            for row in bench(folder, args.cpu):
                print(row, flush=True)


if __name__ == "__main__":
    main()
