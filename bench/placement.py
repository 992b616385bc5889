"""Q/DQ placement benchmark: which INT8 graph is fast on ONNX Runtime's CPU provider?

For each model built in the repo (tao_qc.zoo), in one run on this machine:
  fp32              the exported model
  tao-qc onnxruntime  `tao-qc compile` with target: onnxruntime (modelopt ranges, ORT-fusable placement)
  tao-qc tensorrt     `tao-qc compile` with target: tensorrt (modelopt's own placement, unchanged)
  ort quantize_static ONNX Runtime's quantizer (quant_pre_process, then QDQ, per-channel, U8S8; reduce_range on CPUs
                      without VNNI, where its U8S8 kernels saturate 8-bit weights), in a separate process
                      because importing modelopt patches onnxruntime.quantization in-process
and prints one table: speed vs FP32 at batch 1 and 8 (median latency, 2 intra-op threads, sessions
timed in interleaved rounds so drift hits all alike; see measure()), the spread of the batch-8 ratio over
those rounds, size on disk, top-1 agreement with FP32.

    .venv/bin/python bench/placement.py [--models resnet18,mobilenet,lcnet,tiny_vit,picodet,yolo,yolo_mish,efficientnet,mobilenetv3,convnext] [--rounds 12] [--profile]
                                        [--real ultraface_rfb320,fastestdet,yunet_n_320]
                                        [--ocr ppocrv5_rec,ppocrv5_det]

A second table does the same for the trained third-party detectors in ../shared/models
(TAO_QC_SHARED_MODELS overrides; --real '' skips them), calibrated on their own photos: their batch
is fixed at 1, and they have no classes, so it gives the lowest cosine similarity to FP32 over their
outputs instead of top-1 agreement. ONNX Runtime's quantizer writes per-channel DequantizeLinear
nodes that opsets below 13 do not allow; where the model it writes does not load, the row says so.

A third table holds PP-OCRv5's recognizer and detector from ../shared/models with their task
metrics (bench/ocr.py): the recognizer on batches of 8 real text lines (calibrated on 32 lines,
character error rate on 136 others, and the share of its 40 steps per line whose best class
matches FP32's), the detector on 640x640 pages composed from those lines at batch 1 (calibrated on
6 pages; on 4 others the text-pixel intersection over union with FP32's map, threshold 0.3).

Writes the tables to bench/results/placement.md as well. --profile adds, per model, where the batch-8
time goes in each variant (ONNX Runtime's own profiler: milliseconds per kernel type, and the
slowest nodes), to see which kernels a placement change moves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CALIBRATION_SAMPLES = 32
# Random nets on random inputs put many samples near a tie between their top two classes: at 64
# samples one flip is 1.6 points (tiny_vit: 95.3% vs 96.9% on 64, 97.2% vs 97.1% on 1024).
AGREEMENT_SAMPLES = 512
THREADS = 2
TIMED_PER_ROUND = 2

ORT_QUANTIZER = textwrap.dedent(
    """
    import sys, numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    source, target, calib, reduce_range = sys.argv[1:5]
    # ORT's documented recipe: pre-process (shape inference, BatchNorm folding) first. Its symbolic
    # shape inference fails on some transformer exports; then quantize the model as it is.
    # Its symbolic shape inference fails on PaddleOCR exports: then pre-process without it.
    try:
        try:
            quant_pre_process(source, target + ".pre.onnx")
        except Exception as error:
            print(f"quant_pre_process failed ({type(error).__name__}); again without symbolic shapes", file=sys.stderr)
            quant_pre_process(source, target + ".pre.onnx", skip_symbolic_shape=True)
        source = target + ".pre.onnx"
    except Exception as error:
        print(f"quant_pre_process failed ({type(error).__name__}); quantizing without it", file=sys.stderr)
    data = np.load(calib)
    name = data.files[0]
    batches = iter([{name: data[name][i:i + 1]} for i in range(len(data[name]))])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    # reduce_range (7-bit weights): ORT's own remedy on CPUs whose U8S8 kernels saturate (no VNNI),
    # as tao-qc does there; off elsewhere, as tao-qc.
    quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range == "1")
    """
)


def _reduce_range() -> str:
    from tao_qc.spec.cpu import this_machine

    return "1" if this_machine().pairs_saturate else "0"


def ort_quantize(fp32: Path, target: Path, calibration: Path) -> None:
    """ONNX Runtime's quantizer (ORT_QUANTIZER) from `fp32` into `target`, calibrated on the first array
    of `calibration` (an .npz), in its own process; a failure raises RuntimeError with its last line."""
    # cwd: ORT's symbolic shape inference leaves sym_shape_infer_temp.onnx and its weights in the
    # current folder.
    run = subprocess.run([sys.executable, "-c", ORT_QUANTIZER, str(fp32), str(target), str(calibration), _reduce_range()],
                         capture_output=True, text=True, cwd=target.parent)
    if run.returncode:
        raise RuntimeError((run.stderr.strip().splitlines() or ["no message"])[-1])


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # The bench holds several sessions in one process and alternates between them; a session's
    # intra-op threads keep spinning for a while after its run and steal the 2 cores from the next
    # session's run (batch 1 INT8 medians came out 2x their solo times). Without spinning, the
    # interleaved medians match each model timed alone. The same setting for every variant.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def build_variants(name: str, work: Path) -> dict[str, Path]:
    from tao_qc.testing import zoo
    from tao_qc.driver import compile_model

    fp32 = zoo.export_zoo(name, work / f"{name}.onnx", dynamic_batch=True)
    shape = zoo.input_shape(name)
    calib = np.random.default_rng(0).standard_normal((CALIBRATION_SAMPLES, *shape[1:])).astype(np.float32)
    np.savez(work / "calib.npz", input=calib)
    variants = {"fp32": fp32}
    for target in ("onnxruntime", "tensorrt"):
        spec = {"quantize": {"backend": "modelopt.onnx", "target": target, "device": "cpu",
                             "calibration": {"data": str(work / "calib.npz"), "max_samples": CALIBRATION_SAMPLES}}}
        result = compile_model(fp32, spec, results_dir=work / target, compare=False)
        variants[f"tao-qc {target}"] = result.model_path
    target = work / f"{name}.ort-quantizer.onnx"
    ort_quantize(fp32, target, work / "calib.npz")
    variants["ort quantize_static"] = target
    return variants


def quantize_both_ways(name: str, fp32: Path, work: Path) -> tuple[dict[str, Path], Exception | None]:
    """fp32, tao-qc onnxruntime and, where it loads, ORT's quantizer, all from work/calib.npz; the
    peer's failure is a result (its row says why), returned rather than raised."""
    from tao_qc.driver import compile_model

    spec = {"quantize": {"backend": "modelopt.onnx", "target": "onnxruntime", "device": "cpu",
                         "calibration": {"data": str(work / "calib.npz")}}}
    variants = {"fp32": fp32, "tao-qc onnxruntime": compile_model(fp32, spec, results_dir=work / "onnxruntime", compare=False).model_path}
    target = work / f"{name}.ort-quantizer.onnx"
    try:
        ort_quantize(fp32, target, work / "calib.npz")
        session(target)
    except Exception as error:  # noqa: BLE001 - whatever ORT's quantizer or loader raises
        return variants, error
    variants["ort quantize_static"] = target
    return variants, None


# Preprocessing each detector was trained with (../shared/models/README.md), in tao-qc's terms.
REAL_MODELS = {
    "ultraface_rfb320": {"color": "rgb", "mean": [127.0], "std": [128.0]},
    "fastestdet": {"color": "rgb", "mean": [0.0], "std": [255.0]},
    "yunet_n_320": {"color": "bgr", "mean": [0.0], "std": [1.0]},
}


def shared_models() -> Path:
    return Path(os.environ.get("TAO_QC_SHARED_MODELS", HERE.parent.parent / "shared" / "models"))


def build_real_variants(name: str, work: Path) -> tuple[dict[str, Path], dict[str, str], np.ndarray]:
    """fp32, tao-qc onnxruntime and ORT's quantizer for a shared model, all calibrated on the same
    preprocessed photos. Returns the variants, the ones that failed (why), and the photos."""
    import onnx

    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.spec import CalibrationSpec

    fp32 = shared_models() / f"{name}.onnx"
    calibration = CalibrationSpec(data=str(shared_models() / name), **REAL_MODELS[name])
    [info] = model_inputs(onnx.load(fp32, load_external_data=False))
    photos = np.concatenate([batch[info.name] for batch in open_inputs(calibration.data, [info], calibration=calibration)])
    np.savez(work / "calib.npz", **{info.name: photos})
    variants, error = quantize_both_ways(name, fp32, work)
    failed = {}
    if error is not None:
        why = str(error).split("\n")[0]
        why = why.rsplit("Error ", 1)[-1] if "Error " in why else why  # ORT's reason, without the temp path
        opset = next((o.version for o in onnx.load(fp32, load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), "?")
        failed["ort quantize_static"] = f"{why[:120]} (model opset {opset})"
    return variants, failed, photos


def measure_real(variants: dict[str, Path], photos: np.ndarray, rounds: int) -> dict[str, dict]:
    """Median batch-1 latency (interleaved rounds, as measure()) and the lowest output cosine to FP32."""
    from tao_qc.evaluate.latency import summarize

    sessions = {label: session(path) for label, path in variants.items()}

    def feed(s, x: np.ndarray) -> dict[str, np.ndarray]:
        return {s.get_inputs()[0].name: x}

    results = {label: {"size_mb": path.stat().st_size / 2**20} for label, path in variants.items()}
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds * 4):  # batch 1 of a small detector: a few ms a run
        for label, s in sessions.items():
            s.run(None, feed(s, photos[:1]))
            for _ in range(TIMED_PER_ROUND):
                start = time.perf_counter()
                s.run(None, feed(s, photos[:1]))
                times[label].append(time.perf_counter() - start)
    reference = [sessions["fp32"].run(None, feed(sessions["fp32"], photos[i : i + 1])) for i in range(len(photos))]
    for label, s in sessions.items():
        results[label]["b1_ms"] = summarize(times[label], 1).median_ms
        cosines = []
        for i, expected in enumerate(reference):
            for got, want in zip(s.run(None, feed(s, photos[i : i + 1])), expected):
                got, want = got.ravel().astype(np.float64), want.ravel().astype(np.float64)
                cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) or 1.0)))
        results[label]["cosine"] = min(cosines)
    return results


OCR_MODELS = ("ppocrv5_rec", "ppocrv5_det")
OCR_BATCH = {"ppocrv5_rec": 8, "ppocrv5_det": 1}


def ocr_data(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(calibration inputs, evaluation inputs, the evaluation lines' text for the recognizer)."""
    import ocr
    from tao_qc.testing.corpus import recognizer_input, text_lines

    folder = shared_models() / "ppocrv5" / "lines"
    if name == "ppocrv5_rec":
        lines = text_lines(folder)
        return recognizer_input(lines.files[:32]), recognizer_input(lines.files[64:]), lines.texts[64:]
    return ocr.pages(folder, 6, seed=0), ocr.pages(folder, 4, seed=1), None


def build_ocr_variants(name: str, work: Path, calibration: np.ndarray) -> tuple[dict[str, Path], dict[str, str]]:
    """fp32, tao-qc onnxruntime and ORT's quantizer of a PP-OCRv5 model, calibrated on the same arrays."""
    fp32 = shared_models() / f"{name}.onnx"
    np.savez(work / "calib.npz", x=calibration)
    variants, error = quantize_both_ways(name, fp32, work)
    failed = {}
    if error is not None:
        failed["ort quantize_static"] = str(error).split("\n")[0][:120]
    return variants, failed


def measure_ocr(name: str, variants: dict[str, Path], inputs: np.ndarray, texts: list[str] | None, rounds: int) -> dict[str, dict]:
    """Median latency at the model's batch (interleaved rounds, as measure()) and its task metric."""
    import ocr
    import onnx
    from tao_qc.evaluate.latency import summarize
    from tao_qc.testing.corpus import character_error_rate, characters_from_metadata, ctc_greedy_decode

    batch = OCR_BATCH[name]
    sessions = {label: session(path) for label, path in variants.items()}
    results: dict[str, dict] = {label: {"size_mb": path.stat().st_size / 2**20} for label, path in variants.items()}
    x = inputs[:batch]
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for s in sessions.values():
        s.run(None, {"x": x})
    for _ in range(rounds):
        for label, s in sessions.items():
            s.run(None, {"x": x})
            for _ in range(TIMED_PER_ROUND):
                start = time.perf_counter()
                s.run(None, {"x": x})
                times[label].append(time.perf_counter() - start)
    fp32_rounds = round_means(times["fp32"])
    outputs = {label: [s.run(None, {"x": inputs[i:i + batch]})[0] for i in range(0, len(inputs), batch)]
               for label, s in sessions.items()}
    classes = characters_from_metadata(onnx.load(str(variants["fp32"]), load_external_data=False)) if texts is not None else None
    for label in sessions:
        r = results[label]
        r["ms"] = summarize(times[label], batch).median_ms
        r["speed_quartiles"] = [float(q) for q in np.percentile(fp32_rounds / round_means(times[label]), [25, 75])]
        if texts is not None:
            probabilities = np.concatenate(outputs[label])
            r["cer"] = character_error_rate(ctc_greedy_decode(probabilities, classes), texts)
            r["steps_agreeing"] = float((probabilities.argmax(-1) == np.concatenate(outputs["fp32"]).argmax(-1)).mean())
        else:
            r["text_iou"] = float(np.mean([ocr.text_map_agreement(got, want)
                                           for got, want in zip(outputs[label], outputs["fp32"])]))
    return results


def round_means(times: list[float]) -> np.ndarray:
    """Mean time of each round's TIMED_PER_ROUND runs, in the order the rounds ran."""
    return np.asarray(times).reshape(-1, TIMED_PER_ROUND).mean(axis=1)


def measure(variants: dict[str, Path], shape: tuple[int, ...], rounds: int) -> dict[str, dict]:
    """Median latency per variant at batch 1 and 8, timed in interleaved rounds (drift hits all alike).

    Each round gives every session one untimed run (caches, the previous session's threads winding
    down), then TIMED_PER_ROUND timed runs. tao_qc.evaluate.latency's measure_latency times one model at a
    time, so it cannot interleave; its statistics are reused.
    """
    from tao_qc.evaluate.latency import summarize

    sessions = {label: session(path) for label, path in variants.items()}
    rng = np.random.default_rng(1)
    results: dict[str, dict] = {label: {"size_mb": path.stat().st_size / 2**20} for label, path in variants.items()}
    for batch in (1, 8):
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        times: dict[str, list[float]] = {label: [] for label in sessions}
        for label, s in sessions.items():  # warm-up
            for _ in range(3):
                s.run(None, {s.get_inputs()[0].name: x})
        for _ in range(rounds):
            for label, s in sessions.items():
                feed = {s.get_inputs()[0].name: x}
                s.run(None, feed)
                for _ in range(TIMED_PER_ROUND):
                    start = time.perf_counter()
                    s.run(None, feed)
                    times[label].append(time.perf_counter() - start)
        fp32_rounds = round_means(times["fp32"])
        for label in sessions:
            stats = summarize(times[label], batch)
            results[label][f"b{batch}_ms"] = stats.median_ms
            results[label][f"b{batch}_p90_ms"] = stats.p90_ms
            # Each round times every variant within a few hundred ms, so a round's FP32/variant ratio
            # is paired: its spread over rounds shows how far one run's ratio can be trusted.
            paired = fp32_rounds / round_means(times[label])
            results[label][f"b{batch}_speed_quartiles"] = [float(q) for q in np.percentile(paired, [25, 75])]
    x = rng.standard_normal((AGREEMENT_SAMPLES, *shape[1:])).astype(np.float32)
    reference = None
    for label, s in sessions.items():
        name = s.get_inputs()[0].name
        out = np.concatenate([s.run(None, {name: x[i : i + 8]})[0] for i in range(0, len(x), 8)])
        out = out.reshape(len(x), -1)
        reference = out if reference is None else reference
        results[label]["agreement"] = float((out.argmax(1) == reference.argmax(1)).mean())
    return results


def profile(variants: dict[str, Path], shape: tuple[int, ...], runs: int = 10) -> str:
    """Per variant, ORT's profiler over `runs` batch-8 runs: ms per kernel type and the 3 slowest nodes."""
    from collections import defaultdict

    import onnxruntime as ort

    x = np.random.default_rng(2).standard_normal((8, *shape[1:])).astype(np.float32)
    lines = []
    for label, path in variants.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = THREADS, 1, 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "tao-qc-bench-profile")
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        for _ in range(3):
            s.run(None, feed)
        for _ in range(runs):
            s.run(None, feed)
        trace = Path(s.end_profiling())
        by_op: dict[str, float] = defaultdict(float)
        by_node: dict[str, float] = defaultdict(float)
        for event in json.loads(trace.read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                ms = event["dur"] / (runs + 3) / 1000
                by_op[event["args"]["op_name"]] += ms
                by_node[event["name"].removesuffix("_kernel_time")] += ms
        trace.unlink()
        ops = ", ".join(f"{op} {ms:.2f}" for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]) if ms >= 0.01)
        slowest = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(by_node.items(), key=lambda kv: -kv[1])[:3])
        lines += [f"  {label}: {sum(by_op.values()):.1f} ms in kernels: {ops}", f"    slowest nodes: {slowest}"]
    return "\n".join(lines)


def why_slower(name: str, variant: Path, speed: float, batch: int) -> str | None:
    """For a tao-qc model this bench measured slower than FP32: what its compile said about it
    (report.json's `speed` section, timed in the compile's own interleaved rounds)."""
    if speed >= 1.0:
        return None
    section = json.loads((variant.parent / "report.json").read_text()).get("speed") or {}
    measured = ", ".join(f"{r:.2f}x at batch {b}" for b, r in (section.get("final_vs_fp32") or {}).items())
    if section.get("why_slower"):
        return f"{name} ({speed:.2f}x at batch {batch} here): compile measured {measured} and says: {section['why_slower']}"
    return f"{name} ({speed:.2f}x at batch {batch} here): compile measured {measured}, within its noise of FP32's speed, so it warned of nothing"


def machine() -> str:
    """The CPU (its model and the instruction set ORT's integer kernels run on: the speed-ups hold for
    that one), cores, threads and versions."""
    import onnxruntime

    from tao_qc.spec.cpu import this_machine

    cpu = this_machine()
    return (f"{cpu.model_name or 'unknown CPU'} ({cpu.isa}), {os.cpu_count()} cores, {THREADS} intra-op threads, "
            f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet,lcnet,tiny_vit,picodet,yolo,yolo_mish,efficientnet,mobilenetv3,convnext")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--profile", action="store_true", help="also print where the batch-8 time goes per variant")
    parser.add_argument("--real", default=",".join(REAL_MODELS), help="shared detectors to add ('' for none)")
    parser.add_argument("--ocr", default=",".join(OCR_MODELS), help="PP-OCRv5 models to add ('' for none)")
    args = parser.parse_args()
    real = [name for name in args.real.split(",") if name]
    zoo_models = [name for name in args.models.split(",") if name]
    ocr_models = [name for name in args.ocr.split(",") if name]
    if [name for name in ocr_models if name not in OCR_MODELS]:
        parser.error(f"--ocr: valid models are {', '.join(OCR_MODELS)}")
    unknown = [name for name in real if name not in REAL_MODELS]
    if unknown:
        parser.error(f"--real: unknown model(s) {', '.join(unknown)} (valid: {', '.join(REAL_MODELS)})")
    if (real or ocr_models) and not shared_models().is_dir():
        parser.error(f"--real/--ocr: shared models not found at {shared_models()} (set TAO_QC_SHARED_MODELS, or --real '' --ocr '')")

    from tao_qc.testing import zoo
    from tao_qc.console import setup_logging

    setup_logging(-1)
    rows, real_rows, ocr_rows, profiles, slower = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="tao-qc-bench-") as tmp:
        for name in ocr_models:
            work = Path(tmp) / name
            work.mkdir()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            calibration, inputs, texts = ocr_data(name)
            variants, failed = build_ocr_variants(name, work, calibration)
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            results = measure_ocr(name, variants, inputs, texts, args.rounds)
            for label, r in results.items():
                ocr_rows.append({"model": name, "variant": label, "batch": OCR_BATCH[name], "speed": results["fp32"]["ms"] / r["ms"],
                                 "ms": r["ms"], "speed_quartiles": r["speed_quartiles"], "size_mb": r["size_mb"],
                                 **{k: r[k] for k in ("cer", "steps_agreeing", "text_iou") if k in r}})
            for label, why in failed.items():
                ocr_rows.append({"model": name, "variant": label, "failed": why})
            slower.append(why_slower(name, variants["tao-qc onnxruntime"],
                                     results["fp32"]["ms"] / results["tao-qc onnxruntime"]["ms"], OCR_BATCH[name]))
        for name in real:
            work = Path(tmp) / name
            work.mkdir()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            variants, failed, photos = build_real_variants(name, work)
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            results = measure_real(variants, photos, args.rounds)
            for label, r in results.items():
                real_rows.append({"model": name, "variant": label, "speed_b1": results["fp32"]["b1_ms"] / r["b1_ms"],
                                  "b1_ms": r["b1_ms"], "size_mb": r["size_mb"], "cosine": r["cosine"], "samples": len(photos)})
            for label, why in failed.items():
                real_rows.append({"model": name, "variant": label, "failed": why})
            slower.append(why_slower(name, variants["tao-qc onnxruntime"],
                                     results["fp32"]["b1_ms"] / results["tao-qc onnxruntime"]["b1_ms"], 1))
        for name in zoo_models:
            work = Path(tmp) / name
            work.mkdir()
            print(f"building {name} ...", file=sys.stderr, flush=True)
            variants = build_variants(name, work)
            print(f"timing {name} ...", file=sys.stderr, flush=True)
            results = measure(variants, zoo.input_shape(name), args.rounds)
            if args.profile:
                profiles.append(f"{name}, batch 8 (ORT profiler, ms per run):\n{profile(variants, zoo.input_shape(name))}")
            base = results["fp32"]
            ours = results["tao-qc onnxruntime"]
            slower.append(why_slower(name, variants["tao-qc onnxruntime"], min(base["b1_ms"] / ours["b1_ms"], base["b8_ms"] / ours["b8_ms"]),
                                     1 if base["b1_ms"] / ours["b1_ms"] < base["b8_ms"] / ours["b8_ms"] else 8))
            for label, r in results.items():
                rows.append({"model": name, "variant": label, "speed_b1": base["b1_ms"] / r["b1_ms"],
                             "speed_b8": base["b8_ms"] / r["b8_ms"], "b8_ms": r["b8_ms"],
                             "speed_b8_quartiles": r["b8_speed_quartiles"],
                             "size_mb": r["size_mb"], "agreement": r["agreement"]})
    header = ("| model | variant | speed vs FP32, batch 1 | speed vs FP32, batch 8 | batch 8, middle half of rounds "
              "| batch 8 median (ms) | size (MB) | top-1 agreement with FP32 |")
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        low, high = r["speed_b8_quartiles"]
        lines.append(f"| {r['model']} | {r['variant']} | {r['speed_b1']:.2f}x | {r['speed_b8']:.2f}x | {low:.2f}-{high:.2f}x | "
                     f"{r['b8_ms']:.1f} | {r['size_mb']:.1f} | {r['agreement']:.1%} |")
    if real_rows:
        lines += ["", "| model (trained, ../shared/models) | variant | speed vs FP32, batch 1 | batch 1 median (ms) "
                      "| size (MB) | lowest output cosine vs FP32 |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in real_rows:
            if "failed" in r:
                lines.append(f"| {r['model']} | {r['variant']} | - | - | - | its model does not load in ORT: {r['failed']} |")
            else:
                lines.append(f"| {r['model']} | {r['variant']} | {r['speed_b1']:.2f}x | {r['b1_ms']:.2f} | {r['size_mb']:.1f} | "
                             f"{r['cosine']:.4f} (on {r['samples']} photos) |")
    if ocr_rows:
        lines += ["", "| PP-OCRv5 (../shared/models) | variant | batch | speed vs FP32 | middle half of rounds | median (ms) "
                      "| size (MB) | task metric |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in ocr_rows:
            if "failed" in r:
                lines.append(f"| {r['model']} | {r['variant']} | - | - | - | - | - | failed: {r['failed']} |")
                continue
            if "cer" in r:
                metric = f"CER {r['cer']:.1%}, steps agreeing with FP32 {r['steps_agreeing']:.1%}"
            else:
                metric = f"text-pixel IoU with FP32 {r['text_iou']:.3f}"
            low, high = r["speed_quartiles"]
            lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['speed']:.2f}x | {low:.2f}-{high:.2f}x | "
                         f"{r['ms']:.1f} | {r['size_mb']:.1f} | {metric} |")
    slower = [line for line in slower if line]
    if slower:
        lines += ["", "tao-qc models slower than FP32 in this run, and what their compile said:"]
        lines += [f"- {line}" for line in slower]
    table = "\n".join(lines)
    note = (f"Measured in one run on {machine()}, intra-op spinning off for every session. "
            f"Speed = FP32 median latency / variant median latency; the middle half of rounds is the 25th-75th "
            f"percentile of the per-round ratio (FP32 and the variant timed in the same round of {TIMED_PER_ROUND} runs each); "
            f"top-1 agreement on {AGREEMENT_SAMPLES} fixed random inputs; calibration on {CALIBRATION_SAMPLES} random samples "
            f"(the trained detectors: on their own photos, the same preprocessed arrays for every variant; PP-OCRv5: "
            f"on 32 text lines or 6 pages, evaluated on 136 other lines or 4 other pages); "
            f"1-minute load average at the end {os.getloadavg()[0]:.2f} (other work on the machine slows all variants alike).")
    print(table)
    print()
    print(note)
    for block in profiles:
        print()
        print(block)
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "placement.md").write_text(f"{table}\n\n{note}\n")
    (results_dir / "placement.json").write_text(json.dumps({"rows": rows, "real_rows": real_rows, "ocr_rows": ocr_rows,
                                                            "machine": machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
