"""Accuracy-driven fallback on real models: task metric, nodes kept float, speed, and what it costs.

    .venv/bin/python bench/accuracy.py [--models ppocrv5_rec,yunet_n_320] [--targets onnxruntime,tensorrt]
                                       [--steps ranges,corrections,float] [--peers nncf,quark]

For each model of ../shared/models and each target, two compiles from the same spec: `fallback: off`
(plain INT8) and `fallback: auto`, and with the onnxruntime target the peers below. One table, a
row per quantizer: the task metric on data neither calibration nor the search saw, nodes INT8,
speed against FP32 on ONNX Runtime's CPU provider (interleaved rounds over every row's model in one
process: 2 threads, intra-op spinning off, at the batch given), and compile wall time; fallback's note gives the nodes its
search kept float and whether it met its target.

- PP-OCRv5 recognizer: the user's own lines as they would split them: 64 to calibrate, 64 held
  back as accuracy data (`accuracy.metric: tao_qc.corpus:text_accuracy`, 1 - CER, at most 0.01 below
  FP32: CER within 1 point), CER reported on the other 72. Speed at batch 8.
- YuNet: calibrated on its 4 photos and the 3 other photos of ../shared/models/images; the target
  is the default comparison (cosine >= 0.99 per output, over the data set) on the 4 photos, which
  are also the accuracy data (the default when no accuracy.data is given; 4 photos are all there
  is). Its batch is fixed at 1. Below the table: the faces its own post-processing
  (`tao_qc.corpus:decode_yunet`) finds against FP32's, and the lowest per-sample output cosine.
- FastestDet, a mobile detector: its 8 photos to calibrate, the same scenes flipped and cropped as
  accuracy data (`accuracy: {metric: map, min: 0.9}`: mAP@.5 against FP32's boxes), darkened,
  brightened and flipped-and-darkened to test (mAP@.5 against FP32's boxes at the application's
  score floor, 0.4, decoded by its own post-processing, tests/_detection_helpers.py, on PYTHONPATH as
  a user's module would be). Batch 1.

`--steps` sets `accuracy.steps` of the fallback compile (default: the spec's default, clip then
float); `--corrections adaround,bias` sets its `calibration.corrections` (weight corrections in
calibration itself, so that every step after them starts from corrected weights). Every run prints
the machine first (CPU model, instruction sets, threads, library versions), and per row the time of
each accuracy phase and the peak memory of the compile (summed over its process tree: trial workers
and modelopt's child included).

TensorRT's speed cannot be measured on a CPU: its rows time the TensorRT-placed graph on ONNX Runtime
only to show it runs; the accuracy columns are what the goal is about there.

ONNX Runtime's own quantizer (bench/placement.py's recipe) joins every onnxruntime row, from the same
calibration data; it runs in tao-qc's environment.

Peers (`--peers`, default: those installed in .venv-peers, `make bench-peers-setup`; '' for none),
with the onnxruntime target's rows, from the same FP32 model and the same data:
- NNCF `nncf.quantize` (its defaults) and `nncf.quantize_with_accuracy_control` (the spec's task
  metric, accuracy data, labels and max_drop: what tao-qc's fallback gets);
- AMD Quark's ONNX quantizer, plain and with AdaQuant (bench/peers/quark_peer.py says why AdaQuant).
Each runs in a subprocess with .venv-peers' python (bench/peers/*.py), never in tao-qc's
environment (the peers bring plain onnxruntime; tao-qc has onnxruntime-gpu); the model it writes
is measured here exactly like tao-qc's: the same task metric function, the same interleaved timing.
A peer that is not installed or fails leaves one line in its row saying why, and the bench goes on.
"Nodes INT8" is read from each graph alike (tao_qc.ir.graph_facts: Conv/Gemm/MatMul whose activation
and weight both arrive through DequantizeLinear); compile time is wall time of its own process, as a
user runs it (`tao-qc compile`, and each peer's script), process start and imports included.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))  # placement.py's ORT quantizer recipe

THREADS = 2
ROUNDS = 10
TIMED_PER_ROUND = 2
PEERS_PYTHON = HERE.parent / ".venv-peers" / "bin" / "python"
# (peer, label, script under bench/peers, mode): the rows each peer adds. A peer counts as installed
# when its distribution is found in the peers' virtualenv.
PEER_ROWS = [
    ("nncf", "NNCF quantize", "nncf_peer.py", "quantize"),
    ("nncf", "NNCF accuracy control", "nncf_peer.py", "accuracy-control"),
    ("quark", "Quark plain", "quark_peer.py", "plain"),
    ("quark", "Quark AdaQuant", "quark_peer.py", "adaquant"),
]
PEER_DISTRIBUTIONS = {"nncf": "nncf", "quark": "amd-quark"}


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # As bench/placement.py: the models take turns, and a session's spinning threads would take cores
    # from the one timed next (YuNet, the same model timed twice in one run: 0.88x and 1.04x with ORT's
    # default spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measuring_session(path: Path):
    """The session tao-qc's own comparison builds (tao_qc/runtimes/onnxruntime.py): for a graph made for
    TensorRT it leaves off the ORT optimizers that misread fp16 scales and rounds fp16
    QuantizeLinear as ONNX defines it, so the task metric is the graph's, not ORT's CPU quirks'."""
    from tao_qc.runtimes.base import RuntimeSettings
    from tao_qc.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime().build(Path(path), RuntimeSettings(threads=THREADS, device="cpu")).session


def speeds(models: dict[str, Path], feed: np.ndarray) -> dict[str, float]:
    """FP32 median / variant median, from interleaved rounds (machine drift hits every variant alike)."""
    sessions = {label: session(path) for label, path in models.items()}
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: feed})
    for _ in range(ROUNDS):
        for label, s in sessions.items():
            name = s.get_inputs()[0].name
            s.run(None, {name: feed})
            for _ in range(TIMED_PER_ROUND):
                start = time.perf_counter()
                s.run(None, {name: feed})
                times[label].append(time.perf_counter() - start)
    medians = {label: float(np.median(t)) for label, t in times.items()}
    return {label: medians["fp32"] / median for label, median in medians.items()}


# ---------------------------------------------------------------------------------------------


def recognizer(work: Path) -> dict:
    from tao_qc.testing import corpus

    lines = corpus.text_lines()
    calibration, held, test = lines.split(64)[0], *lines.split(128)[0].split(64)[1:], lines.split(128)[1]
    np.savez(work / "calibration.npz", x=corpus.recognizer_input(calibration.files))
    np.savez(work / "held.npz", x=corpus.recognizer_input(held.files))
    np.save(work / "held_texts.npy", np.array(held.texts))
    test_x = corpus.recognizer_input(test.files)
    np.savez(work / "test.npz", x=test_x)
    np.save(work / "test_texts.npy", np.array(test.texts))
    characters = corpus.characters_from_metadata(__import__("onnx").load(str(corpus.shared_models_dir() / "ppocrv5_rec.onnx"),
                                                                         load_external_data=False))

    def cer(path: Path) -> float:
        s = measuring_session(path)
        out = np.concatenate([s.run(None, {"x": test_x[i:i + 8]})[0] for i in range(0, len(test_x), 8)])
        return corpus.character_error_rate(corpus.ctc_greedy_decode(out, characters), test.texts)

    spec = {"calibration": {"data": "calibration.npz", "batch_size": 8},
            "compare": {"data": "test.npz", "labels": "test_texts.npy"},
            "accuracy": {"data": "held.npz", "labels": "held_texts.npy", "metric": "tao_qc.corpus:text_accuracy",
                         "max_drop": 0.01, "max_float_fraction": 0.5}}
    return {"name": "ppocrv5_rec", "spec": spec, "metric": ("CER", cer), "feed": test_x[:8], "batch": 8}


def face_detector(work: Path) -> dict:
    from tao_qc.testing import corpus
    from tao_qc.evaluate import detection
    from tao_qc.accuracy.metrics import cosine, per_sample_cosine

    photos = corpus.photos("yunet_n_320")
    others = np.concatenate([_resized_photos(name) for name in ("kitten_224.png", "fish.png", "mushroom.png")])
    np.savez(work / "calibration.npz", input=np.concatenate([photos, others]))
    np.savez(work / "test.npz", input=photos)
    fp32 = corpus.shared_models_dir() / "yunet_n_320.onnx"

    @functools.cache  # FP32's outputs serve every variant's cosine and faces; each variant's, both
    def outputs(path: Path) -> dict[str, np.ndarray]:
        s = measuring_session(path)
        names = [o.name for o in s.get_outputs()]
        runs = [s.run(names, {"input": p[None]}) for p in photos]
        return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(names)}

    def lowest_cosine(path: Path) -> float:
        return cosine(outputs(fp32), outputs(path))

    def faces_and_samples(path: Path) -> str:
        """The faces its own post-processing finds, matched to FP32's at IoU 0.5, and the lowest
        per-sample output cosine (what the default check read before it weighed samples by signal)."""
        ref, got = outputs(fp32), outputs(path)
        inputs = {"input": photos}
        threshold = detection.DEFAULT_SCORE_THRESHOLD
        want = [d.above(threshold) for d in corpus.decode_yunet(ref, inputs)]
        found = [d.above(threshold) for d in corpus.decode_yunet(got, inputs)]
        # match_f1 is 2 x matched / (FP32's boxes + the boxes found): the count of matched faces back from it.
        matched = sum(round(detection.match_f1(w, f) * (len(w) + len(f)) / 2) for w, f in zip(want, found))
        worst = min(float(per_sample_cosine(ref[n], got[n]).min()) for n in ref)
        return (f"{matched} of FP32's {sum(len(w) for w in want)} faces found ({sum(len(f) for f in found)} boxes), "
                f"lowest per-sample cosine {worst:.4f}")

    spec = {"calibration": {"data": "calibration.npz"}, "compare": {"data": "test.npz"}, "accuracy": {}}
    return {"name": "yunet_n_320", "spec": spec, "metric": ("lowest output cosine", lowest_cosine), "feed": photos[:1],
            "batch": 1, "detail": faces_and_samples}


FASTESTDET_THRESHOLD = 0.4  # the application's own score floor (tests/_detection_helpers.py's decoder, its tests)


def mobile_detector(work: Path) -> dict:
    """FastestDet, a trained mobile detector (ShuffleNetV2 backbone, one 22x22 head), with the
    application's own decoder, on ../shared/models' 8 photos (`corpus.photo_sets`: calibration on
    them as they are, the accuracy data flipped and cropped, the test darkened and brightened)."""
    from tao_qc.evaluate import detection
    from tao_qc.testing import corpus

    shared = corpus.shared_models_dir()
    fp32 = shared / "fastestdet.onnx"
    arrays = corpus.photo_sets("fastestdet", work)
    for name, array in arrays.items():
        np.savez(work / f"{name}.npz", input=array)
    test_x = arrays["test"]
    sys.path.insert(0, str(HERE.parent / "tests"))
    from _detection_helpers import decode_fastestdet

    @functools.cache
    def boxes(path: Path) -> list:
        s = measuring_session(path)
        return [d for x in test_x for d in detection.decode(decode_fastestdet, dict(zip(
            [o.name for o in s.get_outputs()], s.run(None, {"input": x[None]}))), {"input": x[None]})]

    def map_against_fp32(path: Path) -> detection.MapResult:
        sizes = [tuple(test_x.shape[2:][::-1])] * len(test_x)
        return detection.map_against_reference(boxes(fp32), boxes(path), sizes, FASTESTDET_THRESHOLD, FASTESTDET_THRESHOLD)

    def map50(path: Path) -> float:
        return float(map_against_fp32(path).map50 or 0.0)

    def detail(path: Path) -> str:
        result = map_against_fp32(path)
        return (f"mAP@[.5:.95] {result.map:.4f} against FP32's {result.truth_boxes} boxes at score "
                f"{FASTESTDET_THRESHOLD} on {result.images} images ({result.predicted_boxes} boxes)")

    spec = {"calibration": {"data": "calibration.npz"},
            "compare": {"data": "test.npz", "decoder": "_detection_helpers:decode_fastestdet",
                        "score_threshold": FASTESTDET_THRESHOLD},
            "accuracy": {"data": "held.npz", "metric": "map", "min": 0.9}}
    return {"name": "fastestdet", "spec": spec, "metric": ("mAP@.5 vs FP32", map50), "feed": test_x[:1], "batch": 1,
            "detail": detail, "pythonpath": str(HERE.parent / "tests")}


def _resized_photos(name: str) -> np.ndarray:
    from PIL import Image

    from tao_qc.testing import corpus

    with Image.open(corpus.shared_models_dir() / "images" / name) as image:
        pixels = np.asarray(image.convert("RGB").resize((320, 320)), dtype=np.float32)[:, :, ::-1]
    return pixels.transpose(2, 0, 1)[None].copy()


MODELS = {"ppocrv5_rec": recognizer, "yunet_n_320": face_detector, "fastestdet": mobile_detector}


def compile_once(source: Path, section: dict, work: Path, name: str,
                 pythonpath: str | None = None) -> tuple[Path, dict, float, float]:
    """`tao-qc compile` as a user runs it (its own process), with `section` as the spec file's quantize
    section (relative paths: `work`): the model, report.json, wall seconds and the peak memory in GB of
    the compile's whole process tree (trial workers and modelopt's child included). `pythonpath`: where
    the user's own decoder or metric module lies, as they would export PYTHONPATH."""
    import yaml

    spec = work / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({"quantize": section}))
    command = [str(Path(sys.executable).with_name("tao-qc")), "-q", "compile", str(source), "--spec", str(spec),
               "-o", str(work / name)]
    log = work / f"{name}.stderr.txt"  # a file, not a pipe: a pipe nobody reads until the end can fill and stall it
    started = time.perf_counter()
    with log.open("w") as stderr:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        peak = peak_tree_memory(process)
    seconds = time.perf_counter() - started
    if process.returncode not in (0, 1):  # 1: a missed target, whose results are still written
        raise SystemExit(f"tao-qc compile of {source.name} ({name}) exited {process.returncode}: "
                         f"{log.read_text().strip()[-2000:]}")
    report = json.loads((work / name / "report.json").read_text())
    return Path(report["output"]), report, seconds, peak


def peak_tree_memory(process: subprocess.Popen, interval: float = 0.2) -> float:
    """Wait for `process`, sampling the resident memory of it and all its descendants; the largest sum, in GB."""
    import psutil

    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        total = 0
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.NoSuchProcess:  # a worker that ended between the listing and the reading
                pass
        peak = max(peak, total)
        time.sleep(interval)
    process.wait()
    return peak / 1e9


def peer_versions(python: Path) -> dict[str, str]:
    """The peers installed in the peers' virtualenv, {peer: version} ({} when there is no such venv)."""
    if not python.is_file():
        return {}
    code = ("import importlib.metadata as m, json\n"
            "found = {}\n"
            f"for key, dist in {dict(PEER_DISTRIBUTIONS, onnxruntime='onnxruntime')!r}.items():\n"
            "    try:\n"
            "        found[key] = m.version(dist)\n"
            "    except m.PackageNotFoundError:\n"
            "        pass\n"
            "print(json.dumps(found))")
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def run_peer(python: Path, script: str, mode: str, source: Path, case: dict, work: Path, slug: str,
             timeout: float) -> tuple[Path | None, dict]:
    """One peer in its own process with the peers' python: the FP32 model and the case's calibration
    data in (and for accuracy control the accuracy data, labels, metric and max_drop of the spec),
    its quantized model out. Returns (model or None, its result: seconds, settings, or `error`, one
    line). Its output goes to a log that outlives the bench's temporary folder."""
    logs = Path(tempfile.gettempdir()) / "bench-accuracy-peers"
    logs.mkdir(exist_ok=True)
    log = logs / f"{case['name']}-{slug}.log"
    output, result_file = work / f"{slug}.onnx", work / f"{slug}.json"
    spec = case["spec"]
    command = [str(python), str(HERE / "peers" / script), "--mode", mode, "--model", str(source),
               "--calibration", str(work / spec["calibration"]["data"]), "--output", str(output),
               "--result", str(result_file)]
    accuracy = spec.get("accuracy") or {}
    if mode == "accuracy-control":
        if not accuracy.get("metric"):
            return None, {"error": "the spec names no task metric (accuracy.metric), which accuracy control needs"}
        command += ["--accuracy-data", str(work / accuracy["data"]), "--labels", str(work / accuracy["labels"]),
                    "--metric", accuracy["metric"], "--max-drop", str(accuracy["max_drop"])]
    started = time.perf_counter()
    try:
        with log.open("w") as sink:
            # In the temporary folder: Quark leaves files in its working directory (quantized_info.csv).
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, cwd=work)
    except subprocess.TimeoutExpired:
        return None, {"error": f"did not finish within {timeout:.0f} s (log {log})", "wall_s": round(timeout, 1)}
    wall = round(time.perf_counter() - started, 1)
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        tail = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        result = {"error": f"exit {done.returncode}: {tail[-1][:200] if tail else 'no output'}"}
    result["wall_s"], result["log"] = wall, str(log)
    if "error" in result or not output.is_file():
        result.setdefault("error", "no model written")
        return None, result
    return output, result


def ort_quantizer(source: Path, work: Path) -> dict:
    """ONNX Runtime's own quantizer on the same calibration data (bench/placement.py's recipe: QDQ,
    per-channel int8 weights, uint8 activations, MinMax), in its own process as placement runs it.
    A row: its model and wall time, or why it has none."""
    import onnxruntime

    from placement import ort_quantize

    target = work / "ort-quantizer.onnx"
    row = {"quantizer": f"ORT quantize_static ({onnxruntime.__version__})"}
    started = time.perf_counter()
    try:
        ort_quantize(source, target, work / "calibration.npz")
    except RuntimeError as error:
        return {**row, "wall_s": time.perf_counter() - started, "error": str(error)[:160]}
    row["wall_s"] = time.perf_counter() - started
    try:
        session(target)
    except Exception as error:  # noqa: BLE001 - whatever ORT's loader raises is the row's result
        return {**row, "error": str(error).split("\n")[0][:160]}
    return {**row, "path": target}


def int8_nodes(path: Path, fp32: Path) -> str:
    """Compute nodes the graph runs in INT8 of the FP32 model's compute nodes, read from the graph
    alone (the same reading for every row, whoever quantized it)."""
    import onnx

    from tao_qc.ir.graph_facts import quantization_summary

    quantized = quantization_summary(onnx.load(str(path), load_external_data=False))["compute"]["quantized"]
    total = quantization_summary(onnx.load(str(fp32), load_external_data=False))["compute"]["total"]
    return f"{quantized} of {total}"


def machine() -> dict:
    """What a figure depends on: the CPU, its instruction sets, threads, library versions."""
    import platform

    from tao_qc.report.build import library_versions

    flags, model = set(), platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), model)
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    versions = library_versions()
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    import os

    return {"cpu": model, "instruction_sets": [f for f in wanted if f in flags], "cores": os.cpu_count(),
            "threads": THREADS, "python": platform.python_version(), "versions": versions}


def phases(report: dict, seconds: float) -> dict:
    """Seconds per phase of a compile: calibration (the modelopt call and the calibrating passes),
    each accuracy step, the float search, the rest (finishing, comparison, latency)."""
    timings = report.get("timings") or {}
    accuracy = report.get("accuracy") or {}
    out = {"modelopt": timings.get("quantize-modelopt", 0.0)}
    for name in ("choose-ranges", "correct-bias", "round-weights", "clip-ranges"):
        if timings.get(name):
            out[name] = timings[name]
    for step in accuracy.get("steps") or []:
        out[f"step {step['step']}"] = step.get("seconds")
    search = accuracy.get("search") or {}
    if search.get("seconds") is not None:
        out["float search"] = search["seconds"]
    out["total"] = round(seconds, 1)
    return {k: round(float(v), 1) for k, v in out.items() if v is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default="onnxruntime,tensorrt")
    parser.add_argument("--steps", default=None, help="accuracy.steps of the fallback compile, comma-separated")
    parser.add_argument("--corrections", default=None,
                        help="calibration.corrections of the fallback compile, comma-separated (adaround,bias): "
                             "weight corrections in calibration itself, before any accuracy step")
    parser.add_argument("--peers", default=None,
                        help=f"peers to measure with the onnxruntime rows, of {','.join(PEER_DISTRIBUTIONS)} "
                             "(default: those installed in the peers' venv; '' for none)")
    parser.add_argument("--peers-python", default=os.environ.get("TAO_QC_PEERS_PYTHON", str(PEERS_PYTHON)),
                        help="the python of the peers' virtualenv (make bench-peers-setup)")
    parser.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds one peer run may take")
    args = parser.parse_args()
    from tao_qc.testing import corpus

    peers_python = Path(args.peers_python)
    installed = peer_versions(peers_python)
    if args.peers is None:
        wanted = [p for p in PEER_DISTRIBUTIONS if p in installed]
    else:
        wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = sorted(set(wanted) - set(PEER_DISTRIBUTIONS))
        if unknown:
            parser.error(f"unknown peers {unknown}: choose from {','.join(PEER_DISTRIBUTIONS)}")
    env = machine()
    env["peers"] = {"python": str(peers_python), "versions": installed}
    print(json.dumps({"machine": env}), flush=True)

    rows = []
    for name in args.models.split(","):
        for target in args.targets.split(","):
            with tempfile.TemporaryDirectory(prefix=f"bench-accuracy-{name}-") as folder:
                work = Path(folder)
                case = MODELS[name](work)
                source = corpus.shared_models_dir() / f"{name}.onnx"
                section = {**case["spec"], "target": target}
                plain_section = {**section, "accuracy": {**section["accuracy"], "fallback": "off"}}
                plain, _, plain_s, _ = compile_once(source, plain_section, work, "plain", case.get("pythonpath"))
                if args.steps:
                    section = {**section, "accuracy": {**section["accuracy"], "steps": args.steps.split(",")}}
                if args.corrections:
                    section = {**section, "calibration": {**section["calibration"],
                                                          "corrections": args.corrections.split(",")}}
                fallback, report, fallback_s, peak = compile_once(source, section, work, "fallback", case.get("pythonpath"))
                # The peers quantize for ONNX Runtime's CPU provider: they join the onnxruntime rows,
                # from the same model and data, and are timed in the same interleaved rounds.
                peers = []
                for peer, label, script, mode in PEER_ROWS if target == "onnxruntime" else []:
                    if peer not in wanted:
                        continue
                    if peer not in installed:
                        peers.append({"quantizer": label, "error": f"not installed in {peers_python.parent.parent} "
                                                                   "(make bench-peers-setup)"})
                        continue
                    slug = f"{peer}-{mode}"
                    path, result = run_peer(peers_python, script, mode, source, case, work, slug, args.peer_timeout)
                    peers.append({"quantizer": f"{label} ({installed[peer]})", "path": path, **result})
                    print(json.dumps({"model": name, "peer": label, **{k: v for k, v in result.items()}}), flush=True)
                if target == "onnxruntime":
                    peers.insert(0, ort_quantizer(source, work))
                label, measure = case["metric"]
                timed = {"fp32": source, "plain": plain, "fallback": fallback}
                timed.update({p["quantizer"]: p["path"] for p in peers if p.get("path")})
                speed = speeds(timed, case["feed"])
                accuracy = report.get("accuracy") or {}
                kept = [k["name"] for k in (accuracy.get("search") or {}).get("kept_float") or []]
                counts = report["counts"]
                rows.append({
                    "model": name, "target": target, "metric": label, "fp32": measure(source), "plain": measure(plain),
                    "fallback": measure(fallback), "kept_float": len(kept), "quantized": counts["quantized"],
                    "candidates": counts["candidates"], "clipped": bool(accuracy.get("clipping")),
                    "int8_plain": int8_nodes(plain, source), "int8_fallback": int8_nodes(fallback, source),
                    "speed_plain": speed["plain"], "speed_fallback": speed["fallback"], "batch": case["batch"],
                    "cost": fallback_s / plain_s, "reached": accuracy.get("reached"), "plain_s": round(plain_s, 1),
                    "compile_s": round(fallback_s, 1), "phases": phases(report, fallback_s), "peak_gb": round(peak, 2),
                    "steps": [{k: st.get(k) for k in ("step", "before", "value", "met", "kept")} for st in accuracy.get("steps") or []],
                })
                for p in peers:
                    if p.get("path"):
                        p.update(value=measure(p["path"]), int8=int8_nodes(p["path"], source), speed=speed[p["quantizer"]])
                    p.pop("path", None)
                rows[-1]["peers"] = peers
                if "detail" in case:
                    rows[-1]["detail"] = {"plain": case["detail"](plain), "fallback": case["detail"](fallback)}
                print(json.dumps(rows[-1]), flush=True)
    print()
    print("| model | target | quantizer | metric | value | nodes INT8 | speed vs FP32 | compile time | note |")
    print("|---|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        fmt = (lambda v: f"{100 * v:.1f}%") if r["metric"] == "CER" else (lambda v: f"{v:.4f}")
        head = f"| {r['model']} | {r['target']} |"
        print(f"{head} FP32 | {r['metric']} | {fmt(r['fp32'])} | | 1.00x | | |")
        print(f"{head} tao-qc, fallback off | {r['metric']} | {fmt(r['plain'])} | {r['int8_plain']} | "
              f"{r['speed_plain']:.2f}x | {r['plain_s']:.0f} s | |")
        print(f"{head} tao-qc, fallback | {r['metric']} | {fmt(r['fallback'])} | {r['int8_fallback']} | "
              f"{r['speed_fallback']:.2f}x | {r['compile_s']:.0f} s | {r['kept_float']} kept float by the search; "
              f"target {'met' if r['reached'] else 'missed'} |")
        for p in r.get("peers") or []:
            seconds = p.get("wall_s")
            took = f"{seconds:.0f} s" if seconds is not None else ""
            if "error" in p:
                print(f"{head} {p['quantizer']} | {r['metric']} | | | | {took} | {p['error']} |")
            else:
                print(f"{head} {p['quantizer']} | {r['metric']} | {fmt(p['value'])} | {p['int8']} | "
                      f"{p['speed']:.2f}x | {took} | |")
    for r in rows:
        for variant, text in (r.get("detail") or {}).items():
            print(f"\n{r['model']}, {r['target']}, {variant} INT8: {text}", end="")
    print()
    for r in rows:
        print(f"\n{r['model']}, {r['target']}: fallback compile {r['compile_s']} s ({r['cost']:.1f}x the plain one), "
              f"peak memory {r['peak_gb']} GB (its process tree), phases {r['phases']}, steps {r['steps']}", end="")
        for p in r.get("peers") or []:
            if p.get("settings"):
                print(f"\n{r['model']}, {p['quantizer']}: {p['settings']}, its own seconds {p.get('seconds')}", end="")
    print(f"\n\nMachine: {env['cpu']} ({', '.join(env['instruction_sets'])}), {env['cores']} cores; "
          f"versions {env['versions']}; peers' venv {installed or 'none'}")
    print(f"\nSpeed: ONNX Runtime CPU, {THREADS} threads, intra-op spinning off, median of {ROUNDS} interleaved rounds, batch 8 (YuNet and FastestDet: 1, "
          "their fixed batch); the TensorRT rows run the TensorRT-placed graph on ONNX Runtime. Nodes INT8: Conv, Gemm "
          "and MatMul nodes whose activation and weight both arrive through DequantizeLinear, of the FP32 model's.")


if __name__ == "__main__":
    main()
