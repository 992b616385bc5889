"""`tao-qc evaluate` and `tao-qc inference`: run a (quantized) PyTorch artifact on data, as an
experiment file's `evaluate` / `inference` section says."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from tao_qc.commands.quantize import REPORT_NAME
from tao_qc.console import track
from tao_qc.data import load_labels
from tao_qc.errors import InputError
from tao_qc.evaluate.detection import (
    decode,
    input_size,
    load_annotations,
    load_decoder,
    map_against_annotations,
)
from tao_qc.fileio import atomic_path, atomic_write_text
from tao_qc.frontends.input_data import ALL_SAMPLES, open_pytorch_inputs
from tao_qc.frontends.loading import load_pytorch_model, parse_factory_kwargs
from tao_qc.frontends.quantizer import (
    PYTORCH_BACKENDS,
    artifact_name,
    as_inputs,
    load_quantized,
)
from tao_qc.spec import load_experiment

log = logging.getLogger("tao_qc.evaluate")

_COMMON = [
    click.option("-e", "--experiment", "experiment_file", required=True, type=click.Path(path_type=Path),
                 help="YAML file with `quantize` and `evaluate`/`inference` sections."),
    click.option("--model-factory", "factory", metavar="MODULE:CALLABLE",
                 help="Builds the architecture (default: the one recorded by `tao-qc quantize`)."),
    click.option("--factory-kwargs", metavar="JSON", help="Keyword arguments for the factory, as a JSON object."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _common(function):
    for option in reversed(_COMMON):
        function = option(function)
    return function


@click.command("evaluate")
@_common
def evaluate_command(experiment_file, factory, factory_kwargs, as_json):
    """Top-1 accuracy, or a detector's COCO mAP, of the model (or, with evaluate.is_quantized, its
    quantized artifact) on labelled data.

    \b
    Reads the experiment's `evaluate` section: is_quantized, checkpoint, data, labels, batch_size.
    Detection (quantize.compare.task: detection, or labels that are a COCO json): the outputs go
    through quantize.compare.decoder (default rtdetr) and are measured against the COCO json in
    evaluate.labels (or quantize.compare.annotations): mAP@[.5:.95], mAP@.5, AP per class.
    Examples:
      tao-qc evaluate -e experiment.yaml
      tao-qc evaluate -e experiment.yaml --model-factory mypkg.models:build --json
    """
    experiment, task = _task(experiment_file, "evaluate")
    compare = experiment.quantize.compare
    annotations = task.labels if task.labels and task.labels.lower().endswith(".json") else compare.annotations
    if compare.resolved_task == "detection" or (task.labels or "").lower().endswith(".json"):
        _evaluate_detection(experiment, task, annotations, factory, factory_kwargs, as_json)
        return
    if not task.labels:
        raise InputError("evaluate.labels: required to measure accuracy (a .npy of class indices)")
    model, source = _model_for(experiment, task, "evaluate", factory, factory_kwargs)
    outputs = _first(_run(model, experiment, task, "evaluate"))
    labels = load_labels(task.labels, key="evaluate.labels")
    if len(labels) != len(outputs):
        raise InputError(f"evaluate.labels: {len(labels)} labels for {len(outputs)} samples in evaluate.data")
    accuracy = float((outputs.argmax(axis=1) == labels).mean())
    result = {"model": source, "samples": int(len(labels)), "top1": accuracy}
    _write_result(task, result)
    click.echo(json.dumps(result, indent=2) if as_json else f"top-1 accuracy: {accuracy:.4f} ({len(labels)} samples, {source})")


def _evaluate_detection(experiment, task, annotations, factory, factory_kwargs, as_json) -> None:
    if not annotations:
        raise InputError("evaluate.labels: detection needs a COCO json (here or in quantize.compare.annotations)")
    truth = load_annotations(annotations, key="evaluate.labels" if task.labels else "quantize.compare.annotations")
    name = experiment.quantize.compare.decoder or "rtdetr"
    decoder = load_decoder(name)
    model, source = _model_for(experiment, task, "evaluate", factory, factory_kwargs)
    detections, sizes = [], []
    for outputs, feeds in _run(model, experiment, task, "evaluate", with_inputs=True):
        batch = decode(decoder, outputs, feeds, name)
        detections.extend(batch)
        sizes.extend([input_size(feeds)] * len(batch))
    found = map_against_annotations(truth, detections, sizes)
    names = truth.category_names
    result = {"model": source, "samples": len(detections), "annotations": truth.path, "decoder": name,
              "map": found.map, "map50": found.map50, "truth_boxes": found.truth_boxes,
              "per_class": [{"label": label, "name": names.get(label, f"class {label}"), "ap": ap, "ap50": ap50}
                            for label, (ap, ap50) in sorted(found.per_class.items())]}
    _write_result(task, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    show = lambda value: "-" if value is None else f"{value:.4f}"  # noqa: E731
    click.echo(f"mAP@[.5:.95] {show(found.map)}, mAP@.5 {show(found.map50)} ({len(detections)} images, "
               f"{found.truth_boxes} annotated boxes, {source})")
    for row in result["per_class"]:
        click.echo(f"  {row['name']}: AP@[.5:.95] {show(row['ap'])}, AP@.5 {show(row['ap50'])}")


def _write_result(task, result: dict) -> None:
    if task.results_dir:
        Path(task.results_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(task.results_dir) / "evaluation.json", json.dumps(result, indent=2))


@click.command("inference")
@_common
def inference_command(experiment_file, factory, factory_kwargs, as_json):
    """Run the model (or its quantized artifact) on data; write predictions.npy and outputs.npy.

    \b
    Reads the experiment's `inference` section: is_quantized, checkpoint, data, batch_size,
    results_dir (default: quantize.results_dir).
    Examples:
      tao-qc inference -e experiment.yaml
    """
    experiment, task = _task(experiment_file, "inference")
    folder = task.results_dir or experiment.quantize.results_dir
    if not folder:
        raise InputError("inference.results_dir: required (or set quantize.results_dir) to write the predictions")
    model, source = _model_for(experiment, task, "inference", factory, factory_kwargs)
    outputs = _first(_run(model, experiment, task, "inference"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    predictions = outputs.argmax(axis=1) if outputs.ndim == 2 else outputs
    for name, array in (("predictions.npy", predictions), ("outputs.npy", outputs)):
        with atomic_path(folder / name) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)
    result = {"model": source, "samples": int(len(outputs)), "predictions": str(folder / "predictions.npy"),
              "outputs": str(folder / "outputs.npy")}
    click.echo(json.dumps(result, indent=2) if as_json else f"wrote {folder / 'predictions.npy'} ({len(outputs)} samples, {source})")


def _task(experiment_file: Path, section: str):
    experiment = load_experiment(experiment_file)
    task = getattr(experiment, section)
    if task is None:
        raise InputError(f"{experiment_file}: no '{section}' section")
    if not task.data:
        raise InputError(f"{section}.data: required (a .npz named by input, a .npy, or an image folder)")
    return experiment, task


def _model_for(experiment, task, section: str, factory, factory_kwargs):
    """The model the task names: the quantized artifact, or the float checkpoint."""
    spec = experiment.quantize
    kwargs = parse_factory_kwargs(factory_kwargs) if factory_kwargs else None
    report_path = Path(spec.results_dir) / REPORT_NAME if spec.results_dir else None
    if (factory is None or kwargs is None) and report_path is not None and report_path.is_file():
        recorded = json.loads(report_path.read_text(encoding="utf-8"))
        factory = factory or recorded.get("model_factory")
        kwargs = kwargs if kwargs is not None else recorded.get("factory_kwargs") or {}
    if task.is_quantized:
        if not spec.results_dir:
            raise InputError(f"{section}.is_quantized: the artifact is found in quantize.results_dir, which is not set")
        backend = spec.resolve_backend(spec.model_path or "model.pth").backend
        if backend not in PYTORCH_BACKENDS:
            raise InputError(f"{section}.is_quantized: backend '{backend}' produces an ONNX model; evaluate it with `tao-qc compare`")
        artifact = Path(spec.results_dir) / artifact_name(backend)
        if not artifact.is_file():
            raise InputError(f"{section}.is_quantized: {artifact} does not exist (run `tao-qc quantize` first)")
        if factory is None:
            raise InputError(f"{section}: the artifact needs the architecture: pass --model-factory module:callable")
        return load_quantized(artifact, factory, kwargs, backend=backend), str(artifact)
    path = task.checkpoint or spec.model_path
    if not path:
        raise InputError(f"{section}.checkpoint: required when is_quantized is false (or set quantize.model_path)")
    return load_pytorch_model(path, factory, kwargs), str(path)


def _run(model, experiment, task, section: str, with_inputs: bool = False):
    """Every output of the model over the task's data, by name: a dict output keeps its keys, a
    tuple takes the model's `output_names` (RT-DETR's `labels, boxes, scores`), else `output{i}`.
    `with_inputs`: a list of (outputs, feeds) per batch instead of outputs concatenated."""
    import torch

    batches = open_pytorch_inputs(task.data, calibration=experiment.quantize.calibration, max_samples=ALL_SAMPLES,
                                  batch_size=task.batch_size, key=f"{section}.data")
    per_batch = []
    with torch.no_grad():
        for batch in track(batches, f"{section}: running the model"):
            result = model(*as_inputs(batch))
            if isinstance(result, dict):
                named = dict(result)
            else:
                values = list(result) if isinstance(result, (tuple, list)) else [result]
                names = list(getattr(model, "output_names", None) or [])
                names = names if len(names) == len(values) else [f"output{i}" for i in range(len(values))]
                named = dict(zip(names, values))
            # Integer outputs (RT-DETR's labels) stay integers; float ones are read as float32.
            arrays = {k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in named.items()}
            per_batch.append((arrays, batch))
    if with_inputs:
        return per_batch
    return {name: np.concatenate([outputs[name] for outputs, _ in per_batch]) for name in per_batch[0][0]}


def _first(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))
