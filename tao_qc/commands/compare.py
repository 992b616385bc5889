"""`tao-qc compare`: an FP32 and a quantized model on the same inputs, through Polygraphy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from tao_qc.commands.inspect import cpu_facts, cpu_line
from tao_qc.errors import AccuracyError, InputError
from tao_qc.kernel_fidelity import fidelity_line

log = logging.getLogger("tao_qc.compare")


@click.command("compare")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="Where both models run (default: the spec's compare.runtime, else onnxruntime).")
@click.option("--data", type=str, default=None,
              help="Inputs: .npz named by input, .npy (one input), an image folder, or 'random'. "
                   "Default: the spec's compare.data, then calibration.data, then random (with a warning).")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Integer class labels (.npy/.npz), one per sample.")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Absolute tolerance (element-wise check).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Relative tolerance (element-wise check).")
@click.option("--min-top1-agreement", type=click.FloatRange(0, 1), default=None,
              help="Fraction of samples whose argmax must agree (classifier outputs).")
@click.option("--task", type=click.Choice(["auto", "classification", "detection", "dense"]), default=None,
              help="What the outputs are (default: the spec's compare.task, else auto: detection when a decoder is given).")
@click.option("--decoder", metavar="NAME", default=None,
              help="Detection: rtdetr, boxes_scores, or module:function (your post-processing: boxes per image).")
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="Detection: a COCO json, one image per sample in order (default: FP32's detections are the reference).")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detection: the confidence at which a box counts (FP32's reference boxes, the picture; default 0.5).")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Compare at most this many samples (default: the spec's calibration.max_samples for random data, else all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Samples per run (models with a fixed batch use theirs).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: physical cores).")
@click.option("--input-shapes", metavar="NAME:DIMS[,...]",
              help="Shapes of random inputs where no data is given and the model leaves sizes open, "
                   "e.g. x:1x3x640x640 (the batch first).")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None, help="A quantize spec whose compare/calibration sections give defaults.")
@click.option("--kernel-fidelity/--no-kernel-fidelity", default=None,
              help="Also run CANDIDATE with ONNX Runtime's optimizations off and check its integer kernels on this CPU "
                   "against the graph's own arithmetic (default: on for models compiled for target onnxruntime).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def compare_command(reference: Path, candidate: Path, runtime: str | None, data: str | None, labels: Path | None,
                    atol: float | None, rtol: float | None, min_top1_agreement: float | None, task: str | None,
                    decoder: str | None, annotations: Path | None, score_threshold: float | None, max_samples: int | None,
                    batch_size: int | None, threads: int | None, input_shapes: str | None, spec_file: Path | None,
                    kernel_fidelity: bool | None, as_json: bool) -> None:
    """Run REFERENCE (FP32) and CANDIDATE (quantized) on the same inputs and check the candidate.

    \b
    Checks (flags override the spec's compare section):
      --atol/--rtol          every element: |cand-ref| <= atol OR |cand-ref|/|ref| <= rtol
      --min-top1-agreement   classifier outputs ([N, C]) agree on argmax this often
      none given             classifiers: top-1 agreement >= 0.99; other outputs: cosine >= 0.99
                             over the whole data set
      --task detection       boxes from --decoder: mAP@.5 against FP32's boxes >= 0.9, or with
                             --annotations, mAP@[.5:.95] at most 0.01 below FP32's; AP per class
    Exit code 1 when a check fails, 2 on bad input.

    \b
    Examples:
      tao-qc compare model.onnx model.int8.onnx --data val.npz --labels val_labels.npy
      tao-qc compare model.onnx model.int8.onnx --data images/ --spec q.yaml --json
      tao-qc compare model.onnx model.int8.onnx --atol 1e-2 --rtol 1e-2
      tao-qc compare det.onnx det.int8.onnx --input-shapes x:1x3x640x640   # random data, open sizes
      tao-qc compare face.onnx face.int8.onnx --data photos/ --task detection --decoder boxes_scores
      tao-qc compare det.onnx det.int8.onnx --data val.npz --decoder mypkg.post:decode --annotations val.json
    """
    from rich.console import Console

    from tao_qc.compare import compare_models
    from tao_qc.runtimes.base import RuntimeSettings
    from tao_qc.spec import QuantizeSpec, load_spec

    spec = load_spec(spec_file) if spec_file else QuantizeSpec()
    settings = _compare_settings(spec, {"atol": atol, "rtol": rtol, "min_top1_agreement": min_top1_agreement, "task": task,
                                        "decoder": decoder, "score_threshold": score_threshold,
                                        "annotations": str(annotations.resolve()) if annotations else None})
    runtime = runtime or settings.runtime
    for path in (reference, candidate):
        if not path.is_file():
            raise InputError(f"{path} does not exist")

    from tao_qc.shapes import parse_input_shapes

    inputs, key = open_compare_inputs(reference, data, spec, max_samples=max_samples, batch_size=batch_size,
                                      shapes=parse_input_shapes(input_shapes))
    from tao_qc.shapes import shapes_of

    runtime_settings = RuntimeSettings(threads=threads, tensorrt=spec.tensorrt, fp16_baseline=spec.tensorrt.fp16_baseline,
                                       batch_sizes=(inputs.batch_size,), input_shapes=shapes_of(inputs.first()))
    label_array = None
    labels_path = labels or (Path(settings.labels) if settings.labels else None)
    if labels_path is not None:
        from tao_qc.data import load_labels

        label_array = load_labels(labels_path, key="--labels" if labels else "quantize.compare.labels")

    result = compare_models(reference, candidate, inputs, runtime=runtime, labels=label_array, settings=settings,
                            runtime_settings=runtime_settings, image_color=spec.calibration.color)
    cpu = cpu_facts(_metadata(candidate))
    fidelity = None
    if kernel_fidelity or (kernel_fidelity is None and cpu["compiled_for"] is not None and runtime == "onnxruntime"):
        from tao_qc.kernel_fidelity import check_kernel_fidelity

        fidelity = check_kernel_fidelity(reference, candidate, inputs, settings)
    failures = list(result.failures) + ([fidelity.reason] if fidelity is not None and not fidelity.passed else [])
    if cpu["problem"] and fidelity is None:
        log.warning(cpu["problem"])
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "cpu": cpu,
                               "kernel_fidelity": fidelity.to_dict() if fidelity else None}, indent=2))
    else:
        console = Console()
        console.print(result.render())
        console.print(f"cpu: {cpu_line(cpu)}")
        if fidelity is not None:
            console.print(f"kernel fidelity: {fidelity_line(fidelity.to_dict())}")
    if failures and settings.fail_on_mismatch:
        raise AccuracyError(f"{candidate.name} failed the comparison with {reference.name}: " + "; ".join(failures))


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - an unreadable model fails with its own message in the comparison
        return {}


def _compare_settings(spec, flags: dict):
    """The spec's compare section with the flags given on top, validated as one (a --decoder with
    --task dense is the same error as in a spec)."""
    from pydantic import ValidationError

    from tao_qc.spec import CompareSpec

    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return CompareSpec.model_validate({**spec.compare.model_dump(), **given})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        flag = f"--{where.replace('_', '-')}" if where in given else "--task/--decoder"
        raise InputError(f"{flag}: {error['msg']}") from None


def open_compare_inputs(model_path: Path, data: str | None, spec, *, max_samples: int | None = None,
                        batch_size: int | None = None, shapes: dict | None = None):
    """The comparison's inputs: `data`, else the spec's compare.data, calibration.data, else random
    (warned; `shapes` size it where the model leaves dimensions open)."""
    import onnx

    from tao_qc.data import model_inputs, open_inputs

    if data is not None:
        source, key = data, "--data"
    elif spec.compare.data:
        source, key = spec.compare.data, "quantize.compare.data"
    elif spec.calibration.data:
        source, key = spec.calibration.data, "quantize.calibration.data"
    else:
        source, key = "random", "--data"
        log.warning("no --data given: comparing on RANDOM inputs; the figures say little about real accuracy")
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise InputError(f"{model_path} is not a readable ONNX model: {exc}") from None
    limit = max_samples if max_samples is not None else (spec.calibration.max_samples if source == "random" else 1 << 62)
    inputs = open_inputs(source, model_inputs(proto), calibration=spec.calibration, max_samples=limit,
                         batch_size=batch_size or spec.calibration.batch_size, key=key, shapes=shapes)
    return inputs, key
