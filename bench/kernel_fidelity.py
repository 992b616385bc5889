"""Kernel fidelity by CPU: INT8 models compiled for each instruction set, run through ONNX Runtime's
integer kernels on this CPU and, with --emulate, on an emulated CPU without VNNI.

For each model (the two MNIST CNNs of ../shared/models on 400 held-out digits, calibrated on 100
others; the UltraFace demo on its four photos; any tao_qc.testing.zoo model by name, seeded random
weights, calibrated on 32 random inputs and measured on 16 others), `tao-qc compile` with target onnxruntime twice: for
this machine's instruction set (`quantize.onnxruntime.cpu: auto`) and for `avx2` (7-bit weights).
Each compiled model is then measured with tao_qc.evaluate.kernel_fidelity on the measuring CPU: its task
result against FP32 through ORT's fused kernels and through the graph's own Q/DQ arithmetic (ORT's
optimizations off), the kernels' error relative to the quantization error, and the check's verdict.

    .venv/bin/python bench/kernel_fidelity.py [--models cnn_mnist_pytorch,mnist_cntk,ultraface]
                                              [--emulate EPYC-Rome]

The zoo's deep models show how far kernels that only round differently stray from the graph on
models the check's bar was not set on (`--models convnext,efficientnet,mobilenetv3,resnet18,yolo`).

--emulate runs the measuring half under `qemu-x86_64 -cpu MODEL` (Debian's qemu-user; TCG emulates
AVX2 and FMA but no AVX-512, so ORT's MLAS takes its AVX2 kernels, the ones a Zen 2 EPYC or a
Haswell Xeon runs). Emulation gives the integers those CPUs compute, not their speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "models"
sys.path.insert(0, str(REPO / "tests"))

MODELS = ("cnn_mnist_pytorch", "mnist_cntk", "ultraface")
ZOO_CALIBRATION, ZOO_EVALUATION = 32, 16


def _digits_data(name: str, work: Path) -> tuple[Path, Path]:
    from _compile_helpers import digits

    images, _ = digits()
    images = images / np.float32(1.0 if name == "mnist_cntk" else 255.0)
    key = "Input3" if name == "mnist_cntk" else "0"
    calibration, evaluation = work / f"{name}.calibration.npz", work / f"{name}.evaluation.npz"
    np.savez(calibration, **{key: images[:100]})
    np.savez(evaluation, **{key: images[400:800]})
    return calibration, evaluation


def _zoo_model(name: str, work: Path) -> tuple[Path, Path, Path]:
    from tao_qc.testing import zoo

    source = zoo.export_zoo(name, work / f"{name}.onnx", dynamic_batch=True)
    rng = np.random.default_rng(0)
    shape = zoo.input_shape(name, ZOO_CALIBRATION + ZOO_EVALUATION)
    inputs = rng.standard_normal(shape).astype(np.float32)
    calibration, evaluation = work / f"{name}.calibration.npz", work / f"{name}.evaluation.npz"
    np.savez(calibration, input=inputs[:ZOO_CALIBRATION])
    np.savez(evaluation, input=inputs[ZOO_CALIBRATION:])
    return source, calibration, evaluation


def compile_all(models: list[str], work: Path) -> list[dict]:
    from tao_qc.driver import compile_model
    from tao_qc.spec.cpu import this_machine
    from tao_qc.spec import load_spec
    from tao_qc.testing import zoo

    compiled = []
    for name in models:
        if name == "ultraface":
            source = REPO / "examples" / "ultraface" / "model.onnx"
            base = load_spec(REPO / "examples" / "ultraface" / "q.yaml").model_dump(exclude_unset=True)
            evaluation = None
        elif name in zoo.ZOO:
            source, calibration, evaluation = _zoo_model(name, work)
            base = {"target": "onnxruntime", "calibration": {"data": str(calibration)}}
        else:
            source = SHARED / f"{name}.onnx"
            calibration, evaluation = _digits_data(name, work)
            base = {"target": "onnxruntime", "calibration": {"data": str(calibration)}}
        for cpu in ("auto", "avx2"):
            spec = {"quantize": {**base, "device": "cpu", "onnxruntime": {"cpu": cpu}}}
            out = work / f"{name}-{cpu}"
            result = compile_model(source, spec, results_dir=out, compare=False)
            compiled.append({"model": name, "fp32": str(source), "quantized": str(result.model_path),
                             "compiled_for": this_machine().isa if cpu == "auto" else cpu,
                             "evaluation": str(evaluation) if evaluation else None,
                             "spec": str(REPO / "examples" / "ultraface" / "q.yaml") if name == "ultraface" else None})
    return compiled


def measure(compiled: list[dict]) -> list[dict]:
    """Each compiled model's kernel fidelity on the CPU running this (maybe emulated)."""
    import onnx

    from tao_qc.spec.cpu import this_machine
    from tao_qc.data import model_inputs, open_inputs
    from tao_qc.evaluate.kernel_fidelity import check_kernel_fidelity
    from tao_qc.spec import load_spec

    rows = []
    for entry in compiled:
        spec = load_spec(entry["spec"]) if entry["spec"] else load_spec({"quantize": {"backend": "modelopt.onnx"}})
        inputs = model_inputs(onnx.load(entry["fp32"], load_external_data=False))
        data = entry["evaluation"] or spec.calibration.data
        batches = open_inputs(data, inputs, calibration=spec.calibration, max_samples=sys.maxsize, key="evaluation data")
        result = check_kernel_fidelity(entry["fp32"], entry["quantized"], batches, spec.compare)
        main = min(result.outputs, key=lambda o: (o.task_measure == "cosine", o.task_kernels or 0.0))
        rows.append({**entry, "measured_on": this_machine().isa, "cpu_model": this_machine().model_name,
                     "samples": result.samples, "measure": main.task_measure, "kernels": main.task_kernels,
                     "graph": main.task_graph, "ratio": max(o.kernel_error_ratio for o in result.outputs),
                     "passed": result.passed})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | compiled for | measured on | samples | measure (vs FP32) | ORT's kernels | graph's arithmetic "
             "| kernel error / quantization error | fidelity check |",
             "|---|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        measure = {"top1_agreement": "top-1 agreement", "map": "mAP@[.5:.95]", "cosine": "cosine"}[r["measure"]]
        lines.append(f"| {r['model']} | {r['compiled_for']} | {r['measured_on']} ({r['cpu_model']}) | {r['samples']} | "
                     f"{measure} | {r['kernels']:.4f} | {r['graph']:.4f} | {r['ratio']:.3f} | "
                     f"{'passed' if r['passed'] else 'failed'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--emulate", metavar="QEMU_CPU", help="also measure under qemu-x86_64 -cpu QEMU_CPU (e.g. EPYC-Rome)")
    parser.add_argument("--measure", metavar="JSON", help=argparse.SUPPRESS)  # the measuring half, in the emulator
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(Path(args.measure).read_text()))))
        return
    models = [m for m in args.models.split(",") if m]
    if any(m in ("cnn_mnist_pytorch", "mnist_cntk") for m in models) and not SHARED.is_dir():
        sys.exit(f"needs the MNIST models in {SHARED}")
    qemu = shutil.which("qemu-x86_64")
    if args.emulate and qemu is None:
        sys.exit("--emulate needs qemu-x86_64 (apt-get install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="kernel-fidelity-") as tmp:
        work = Path(tmp)
        compiled = compile_all(models, work)
        rows = measure(compiled)
        if args.emulate:
            (work / "compiled.json").write_text(json.dumps(compiled))
            run = subprocess.run([qemu, "-cpu", args.emulate, sys.executable, __file__, "--measure", str(work / "compiled.json")],
                                 capture_output=True, text=True, check=True)
            rows += json.loads(run.stdout.strip().splitlines()[-1])
    print(table(rows))


if __name__ == "__main__":
    main()
