"""`tao-qc bench`: latency and throughput of one or more models, same settings, ratios against the first."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tao_qc.console import progress
from tao_qc.errors import InputError
from tao_qc.evaluate.latency import bench_models
from tao_qc.ir.shapes import parse_input_shapes
from tao_qc.runtimes.base import RuntimeSettings


def _batch_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--batch: {value!r} is not a comma-separated list of batch sizes (e.g. 1,8)") from None
    if not sizes or any(size < 1 for size in sizes):
        raise InputError(f"--batch: {value!r} needs positive batch sizes (e.g. 1,8)")
    return sizes


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch", "batch", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Intra-op threads (onnxruntime).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True,
              help="onnxruntime: cpu, cuda, or cuda where present.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs first.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per model and batch size.")
@click.option("--input-shapes", metavar="NAME:DIMS[,...]",
              help="Sizes the models leave open, e.g. x:1x3x640x640 (the batch dimension is replaced by each --batch).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON on stdout.")
def bench_command(models: tuple[Path, ...], batch: str, threads: int, runtime: str, device: str, warmup: int, runs: int,
                  input_shapes: str | None, as_json: bool) -> None:
    """Time MODELS with the same settings; the ratio column is the first model's median over each model's
    (above 1: faster than the first).

    \b
    A model whose batch dimension is fixed (e.g. 1) is not timed at other batch sizes: the row says
    "skipped" (rewriting a fixed batch is unsound where the graph bakes it into Reshape shapes).
    On TensorRT inputs are copied to the GPU once, so the timed loop holds no host transfers.

    \b
    Examples:
      tao-qc bench model.onnx model.int8.onnx
      tao-qc bench model.onnx model.int8.onnx --batch 1,8 --threads 2 --json
      tao-qc bench det.onnx det.int8.onnx --input-shapes x:1x3x640x640 --batch 1,8
    """
    from rich.console import Console

    sizes = _batch_sizes(batch)
    shapes = parse_input_shapes(input_shapes)
    for path in models:
        if not path.is_file():
            raise InputError(f"{path} does not exist")
    settings = RuntimeSettings(threads=threads, device=device, batch_sizes=tuple(sizes), input_shapes=shapes)
    with progress("timing", total=len(models) * len(sizes)) as bar:
        table = bench_models(list(models), sizes, runtime=runtime, settings=settings, warmup=warmup, runs=runs,
                             on_progress=bar.advance, shapes=shapes)
    if as_json:
        click.echo(json.dumps(table.to_dict(), indent=2))
    else:
        Console().print(table.render())
