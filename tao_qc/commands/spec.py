"""`tao-qc spec validate` and `tao-qc spec init`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from tao_qc.errors import InputError
from tao_qc.fileio import atomic_write_text
from tao_qc.spec import load_spec


@click.group("spec")
def spec_group() -> None:
    """Validate a spec, or write a commented starter spec."""


@spec_group.command("validate")
@click.argument("spec_file", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--model", "model", type=click.Path(path_type=Path), help="Model the spec is for (resolves backend 'modelopt').")
@click.option("--json", "as_json", is_flag=True, help="Print the normalized spec as JSON.")
def validate(spec_file: Path, model: Path | None, as_json: bool) -> None:
    """Check SPEC_FILE and print it normalized (defaults filled in, aliases resolved).

    \b
    Examples:
      tao-qc spec validate q.yaml
      tao-qc spec validate q.yaml --model resnet18.onnx --json
    Exit code 2, with one line naming the file, line, key and valid values, if the spec is invalid.
    """
    spec = load_spec(spec_file)
    if model is not None or spec.model_path:
        spec = spec.resolve_backend(model)
    data = {"quantize": spec.normalized()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@spec_group.command("init")
@click.argument("path", type=click.Path(path_type=Path), default="q.yaml")
@click.option("--backend", type=click.Choice(["modelopt", "modelopt.onnx", "modelopt.pytorch", "torchao"]), default="modelopt", show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True)
@click.option("--model", "model", type=str, default=None, help="Write this as model_path.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: Path, backend: str, target: str, model: str | None, force: bool) -> None:
    """Write a commented starter spec to PATH (default q.yaml; '-' for stdout).

    \b
    Examples:
      tao-qc spec init
      tao-qc spec init q.yaml --backend modelopt.onnx --target onnxruntime --model model.onnx
    """
    from importlib.resources import files

    template = files("tao_qc").joinpath("templates/spec.yaml").read_text(encoding="utf-8")
    text = template.format(
        path=path if str(path) != "-" else "q.yaml",
        backend=backend,
        mode="weight_only_ptq" if backend == "torchao" else "static_ptq",
        target=target,
        model_path_line=f"  model_path: {model}\n" if model else "  # model_path: model.onnx\n",
    )
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    if path.exists() and not force:
        raise InputError(f"{path} exists (use --force to overwrite it)")
    if path.parent and not path.parent.exists():
        raise InputError(f"folder does not exist: {path.parent}")
    atomic_write_text(path, text)
    click.echo(f"wrote {path}")
