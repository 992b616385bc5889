"""`tao-qc compile`: quantize an ONNX model through the pass pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tao_qc.driver import compile_model, raise_if_failed
from tao_qc.evaluate.checks import DEFAULT_MIN_COSINE
from tao_qc.evaluate.kernel_fidelity import fidelity_line
from tao_qc.frontends.input_data import parse_shape
from tao_qc.frontends.loading import parse_factory_kwargs
from tao_qc.pipeline import DUMP_MODES
from tao_qc.spec import QuantizeSpec, load_spec


@click.command("compile")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="YAML file with a `quantize` section (default: every field's default).")
@click.option("-o", "--output", "--results-dir", "output", type=click.Path(path_type=Path),
              help="Results folder (overrides quantize.results_dir; default ./<model stem>.tao-qc/).")
@click.option("--calibration-data", metavar="PATH", help="Overrides quantize.calibration.data (.npz, .npy, image folder, or 'random').")
@click.option("--device", help="Overrides quantize.device (cpu, cuda, cuda:N, auto).")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), help="Overrides quantize.target.")
@click.option("--dump-passes", "dump", is_flag=False, flag_value="after-all", default="after-failure", show_default=True,
              type=click.Choice(DUMP_MODES), metavar="[MODE]",
              help="Write each pass's graph, canonical text and diff to RESULTS/passes/: after-all (the flag alone), "
                   "after-change, or after-failure (the default: only a failing pass's input graph).")
@click.option("--dump-dir", type=click.Path(path_type=Path), help="Write pass dumps here instead of RESULTS/passes/.")
@click.option("--print-after", "print_after", multiple=True, metavar="PASS", help="Print that pass's canonical text to stdout (repeatable).")
@click.option("--no-compare", is_flag=True, help="Skip the FP32-vs-quantized comparison at the end.")
@click.option("--model-factory", metavar="MODULE:CALLABLE",
              help="PyTorch input only: builds the architecture a state_dict/checkpoint MODEL is loaded into.")
@click.option("--factory-kwargs", metavar="JSON", help="PyTorch input only: keyword arguments for the factory.")
@click.option("--input-shape", metavar="N,C,H,W",
              help="PyTorch input only: the input shape where the calibration data cannot tell it.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout.")
def compile_command(model, spec_file, output, calibration_data, device, target, dump, dump_dir, print_after, no_compare,
                    model_factory, factory_kwargs, input_shape, as_json):
    """Quantize the ONNX MODEL (default: the spec's model_path) with modelopt.onnx through the pass pipeline.

    \b
    Passes: load-and-check, fold-constants, fold-batchnorm, fold-conv-affine, remove-identity,
    match-layers, check-calibration, quantize-modelopt, [place-for-onnxruntime, integer-elementwise,
    space-to-depth-stem, fit-ort-integer-kernels], verify-quantization.
    Writes RESULTS/<stem>.int8.onnx (or .fp8.onnx), RESULTS/report.json and RESULTS/passes/.
    Exit code 0 on success, 1 when the FP32-vs-quantized comparison fails its checks, 2 on bad
    input (one-line error, nothing written).

    \b
    Examples:
      tao-qc compile model.onnx --spec q.yaml
      tao-qc compile model.onnx --spec q.yaml -o out/ --calibration-data calib.npz --device cpu
      tao-qc compile model.onnx --spec q.yaml --dump-passes after-change
      tao-qc compile model.onnx --spec q.yaml --print-after fold-batchnorm
      tao-qc compile model.pth --spec q.yaml --model-factory mypkg.models:build  # PyTorch, lowered to ONNX
    """
    spec = load_spec(spec_file) if spec_file else QuantizeSpec()
    if calibration_data is not None:
        spec.calibration.data = calibration_data if calibration_data == "random" else str(Path(calibration_data).resolve())
    if device is not None:
        spec.device = device
    if target is not None:
        spec.target = target
    pytorch = {}
    if model_factory or factory_kwargs or input_shape:
        pytorch = {"model_factory": model_factory, "factory_kwargs": parse_factory_kwargs(factory_kwargs),
                   "input_shape": parse_shape(input_shape)}
    result = compile_model(model, spec, results_dir=output, dump=dump, dump_dir=dump_dir, print_after=print_after,
                           compare=not no_compare, echo=click.echo, raise_on_mismatch=False, **pytorch)
    if as_json:
        click.echo(json.dumps(result.report, indent=2, default=str))
    else:
        counts = result.report["counts"]
        mode = result.report["quantize_mode"]
        if mode == "mixed":
            mode = ", ".join(f"{dtype} {n}" for dtype, n in counts.get("dtypes", {}).items() if dtype != "native")
            mode = f"quantized ({mode})"
        click.echo(f"{result.model_path}  ({counts['quantized']} of {counts['candidates']} Conv/Gemm/MatMul nodes "
                   f"{mode}, {counts['kept_float']} in float)", err=bool(print_after))
        for line in comparison_lines(result.report):
            click.echo(line, err=bool(print_after))
    raise_if_failed(result.report, result.spec)  # exit 1 for a failed check, after the result is shown


def comparison_lines(report: dict) -> list[str]:
    """A few lines a person reads first: agreement, accuracy, error, speed, where the report is."""
    lines = []
    comparison = report.get("comparison")
    if comparison:
        for output in comparison.get("outputs", []):
            parts = [f"cosine {output['cosine']:.5f}", f"max |err| {output['max_abs_error']:.3g}"]
            if output.get("min_cosine") is not None and output["min_cosine"] < DEFAULT_MIN_COSINE <= output["cosine"]:
                # Shown where one sample alone would read differently from the whole data set.
                parts.insert(1, f"lowest sample {output['min_cosine']:.5f}")
            if output.get("top1_agreement") is not None:
                parts.insert(0, f"top-1 agreement {output['top1_agreement']:.2%}")
            if output.get("position_top1_agreement") is not None:  # the measure its default check reads comes first
                parts.insert(0, f"top-1 agreement per position {output['position_top1_agreement']:.2%}")
            if output.get("mask_iou") is not None:
                parts.insert(0, f"IoU of the thresholded maps {output['mask_iou']:.4f}")
            if output.get("reference_top1") is not None:
                parts.append(f"top-1 accuracy {output['reference_top1']:.2%} FP32 -> {output['candidate_top1']:.2%} quantized")
            lines.append(f"  output {output['name']}: " + ", ".join(parts))
        detection = comparison.get("detection")
        if detection:
            lines.append("  " + detection_line(detection))
        verdict = "passed" if comparison.get("passed") else "FAILED: " + "; ".join(comparison.get("failures") or [])
        lines.append(f"  comparison on {comparison.get('runtime')} ({comparison.get('num_samples')} samples): {verdict}")
    fidelity = report.get("kernel_fidelity")
    if fidelity:
        lines.append(f"  kernel fidelity: {fidelity_line(fidelity)}")
    latency = report.get("latency")
    if latency and len(latency.get("rows", [])) >= 2:
        rows = [r for r in latency["rows"] if r.get("median_ms")]
        if len(rows) >= 2:
            cpu = (report.get("cpu") or {}).get("this_machine") or {}
            on = f" on {cpu['isa']}" if cpu.get("isa") and latency.get("runtime") == "onnxruntime" else ""
            lines.append(f"  latency at batch {rows[-1]['batch_size']}{on}: {rows[0]['median_ms']:.3f} ms FP32, "
                         f"{rows[-1]['median_ms']:.3f} ms quantized (speed {rows[-1]['ratio']:.2f}x FP32)")
    if comparison:
        lines.append(f"  report: {Path(report['output']).parent / 'report.html'}")
    return lines


def detection_line(section: dict) -> str:
    """mAP of the quantized model, against what, on how much."""
    def show(value):
        return "-" if value is None else f"{value:.4f}"

    if section.get("against") == "annotations":
        fp32 = section.get("fp32") or {}
        return (f"detections: mAP@[.5:.95] {show(fp32.get('map'))} FP32 -> {show(section.get('map'))} quantized, "
                f"mAP@.5 {show(fp32.get('map50'))} -> {show(section.get('map50'))} ({section.get('truth_boxes')} "
                f"annotated boxes on {section.get('images')} images)")
    return (f"detections: mAP@[.5:.95] {show(section.get('map'))}, mAP@.5 {show(section.get('map50'))} of the quantized "
            f"model against FP32's {section.get('truth_boxes')} boxes on {section.get('images')} images "
            f"(score >= {section.get('score_threshold'):g})")
