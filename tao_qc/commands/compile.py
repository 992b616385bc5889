"""`tao-qc compile`: quantize an ONNX model through the pass pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tao_qc.driver import compile_model, raise_if_failed
from tao_qc.frontends.input_data import parse_shape
from tao_qc.frontends.loading import parse_factory_kwargs
from tao_qc.pipeline import DUMP_MODES
from tao_qc.report.console import compile_summary_lines
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
    move-on-uint8, upsample-on-uint8, space-to-depth-stem, fit-ort-integer-kernels], verify-quantization.
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
        # The model written, then the summary in report.html's order (report.console).
        click.echo(str(result.model_path), err=bool(print_after))
        for line in compile_summary_lines(result.report):
            click.echo(line, err=bool(print_after))
    raise_if_failed(result.evaluation, result.spec)  # exit 1 for a failed check, after the result is shown
