"""`tao-qc quantize`: quantize a PyTorch model in-framework (torchao or modelopt.pytorch)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from tao_qc.errors import InputError
from tao_qc.fileio import atomic_write_text
from tao_qc.frontends.device import resolve_device
from tao_qc.frontends.input_data import open_pytorch_inputs, parse_shape
from tao_qc.frontends.loading import load_pytorch_model, parse_factory_kwargs
from tao_qc.frontends.quantizer import ModelQuantizer
from tao_qc.spec import load_spec

log = logging.getLogger("tao_qc.quantize")

REPORT_NAME = "quantize_report.json"


@click.command("quantize")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--spec", "spec_file", required=True, type=click.Path(path_type=Path), help="YAML file with a `quantize` section.")
@click.option("--model-factory", "factory", metavar="MODULE:CALLABLE", help="Builds the architecture a state_dict/checkpoint is loaded into.")
@click.option("--factory-kwargs", metavar="JSON", help="Keyword arguments for the factory, as a JSON object.")
@click.option("--calibration-data", metavar="PATH", help="Overrides quantize.calibration.data (.npz, .npy, image folder, or 'random').")
@click.option("--input-shape", metavar="N,C,H,W", help="Model input shape where the data cannot tell it ('random', image folders without calibration.size).")
@click.option("-o", "--results-dir", type=click.Path(path_type=Path), help="Overrides quantize.results_dir.")
@click.option("--device", help="Overrides quantize.device (cpu, cuda, cuda:N, auto).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def quantize_command(model, spec_file, factory, factory_kwargs, calibration_data, input_shape, results_dir, device, as_json):
    """Quantize the PyTorch MODEL (default: quantize.model_path) with torchao or modelopt.pytorch.

    \b
    MODEL is a state_dict/checkpoint (with --model-factory), a TorchScript file or a .pt2 program.
    The artifact goes to results_dir: quantized_model_torchao.pth or quantized_model_modelopt.pth,
    with quantize_report.json saying which rule decided each module.
    \b
    Examples:
      tao-qc quantize --spec q.yaml model.pth --model-factory tao_qc.zoo:SmallResidualCNN
      tao-qc quantize --spec q.yaml ckpt.pth --model-factory mypkg.models:build \\
          --factory-kwargs '{"num_classes": 10}' --calibration-data calib.npz -o results/
    Exit code 2, with one line naming what was wrong, on bad input.
    """
    spec = load_spec(spec_file)
    model_path = model or (Path(spec.model_path) if spec.model_path else None)
    if model_path is None:
        raise InputError("no model given (pass MODEL, or set quantize.model_path in the spec)")
    if str(model_path).lower().endswith(".onnx"):
        raise InputError(f"{model_path} is an ONNX model: `tao-qc quantize` is for PyTorch models (use `tao-qc compile {model_path} --spec {spec_file}`)")
    spec = spec.resolve_backend(model_path)
    if spec.backend not in ("torchao", "modelopt.pytorch"):
        raise InputError(f"quantize.backend: '{spec.backend}' is not an in-framework backend (valid here: torchao, modelopt.pytorch, modelopt)")
    if device:
        from pydantic import ValidationError

        try:
            spec.device = device
        except ValidationError:
            raise InputError(f"--device: {device!r} is not a device (valid: cpu, cuda, cuda:N, auto)") from None
    if results_dir:
        spec.results_dir = str(results_dir.resolve())
    if not spec.results_dir:
        raise InputError("no results folder (pass -o/--results-dir, or set quantize.results_dir)")
    kwargs = parse_factory_kwargs(factory_kwargs)
    shape = parse_shape(input_shape)
    resolve_device(spec.device)

    batches = None
    if spec.backend == "modelopt.pytorch":
        batches = _calibration_batches(spec, calibration_data, shape)
    elif calibration_data:
        log.info("torchao quantizes weights only: --calibration-data is not read")

    network = load_pytorch_model(model_path, factory, kwargs)
    quantizer = ModelQuantizer(spec)
    quantized = quantizer.quantize_model(network, batches)
    artifact = quantizer.save_model(quantized)
    report = {
        "backend": spec.backend,
        "model": str(model_path),
        "model_factory": factory if isinstance(factory, str) else None,
        "factory_kwargs": kwargs,
        "artifact": str(artifact),
        "calibration": batches.describe() if batches is not None else None,
        "quantized_modules": len(quantizer.selection.quantized),
        "decisions": [d.as_dict() for d in quantizer.selection.decisions],
        "spec": spec.normalized(),
    }
    atomic_write_text(Path(spec.results_dir) / REPORT_NAME, json.dumps(report, indent=2))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{spec.backend}: quantized {report['quantized_modules']} of {len(report['decisions'])} compute modules")
    for decision in quantizer.selection.decisions:
        click.echo(f"  {decision.unit.name} ({decision.unit.type}): {decision.reason}")
    click.echo(f"wrote {artifact}")


def _calibration_batches(spec, override, shape):
    data = override or spec.calibration.data
    key = "--calibration-data" if override else "quantize.calibration.data"
    if data is None:
        raise InputError(
            "modelopt.pytorch static PTQ needs calibration data: set quantize.calibration.data or pass --calibration-data "
            "(valid: a .npz named by input, a .npy, an image folder, or 'random' with --input-shape)"
        )
    batches = open_pytorch_inputs(data, calibration=spec.calibration, input_shape=shape, key=key)
    batches.validate()
    log.info("calibration data: %s", batches.describe())
    return batches
