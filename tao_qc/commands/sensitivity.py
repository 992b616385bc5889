"""`tao-qc sensitivity`: how much each quantizable node costs the accuracy metric."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tao_qc.driver import measure_sensitivity
from tao_qc.spec import QuantizeSpec, load_spec


@click.command("sensitivity")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="YAML file with a `quantize` section.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folder for sensitivity.json and sensitivity.html (default ./<model stem>.sensitivity/).")
@click.option("--calibration-data", metavar="PATH", help="Overrides quantize.calibration.data.")
@click.option("--json", "as_json", is_flag=True, help="Print sensitivity.json to stdout.")
def sensitivity_command(model: Path, spec_file: Path | None, output: Path | None, calibration_data: str | None,
                        as_json: bool) -> None:
    """Rank MODEL's quantizable nodes by what quantizing them costs the spec's accuracy metric.

    \b
    One calibration, then, on the accuracy data's samples where the fully quantized model strays
    furthest from FP32 (quantize.accuracy.ranking_samples): each node kept alone in float (its gain)
    and each node quantized alone (its damage), trials in parallel (quantize.accuracy.executor).
    The metric is quantize.accuracy.metric (default: the comparison's checks).

    \b
    Examples:
      tao-qc sensitivity model.onnx --spec q.yaml
      tao-qc sensitivity model.onnx --spec q.yaml -o sens/ --json
    """
    from rich.console import Console
    from rich.table import Table

    spec = load_spec(spec_file) if spec_file else QuantizeSpec()
    if calibration_data is not None:
        spec.calibration.data = calibration_data if calibration_data == "random" else str(Path(calibration_data).resolve())
    result, folder = measure_sensitivity(model, spec, output)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model.name}: {result['metric']} on {result['samples']} samples "
                        f"(all quantized {result['quantized_value']:.4g}, all float {result['float_value']:.4g})")
    for column in ("rank", "node", "type", "gain (float alone)", "damage (quantized alone)"):
        table.add_column(column, justify="left" if column in ("node", "type") else "right")
    for node in sorted(result["nodes"], key=lambda n: n["rank"]):
        table.add_row(str(node["rank"]), node["name"], node["type"], f"{node['gain']:+.4g}", f"{node['damage']:+.4g}")
    Console(width=160).print(table)
    click.echo(f"  {folder / 'sensitivity.html'}")
