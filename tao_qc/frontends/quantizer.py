"""`ModelQuantizer`: the Python API of in-framework quantization (SPEC.md), one face for the
torchao and modelopt.pytorch backends.

    quantizer = ModelQuantizer({"backend": "torchao", "device": "cpu",
                                "layers": [{"module_name": "Linear", "weights": {"dtype": "int8"}}]})
    model = quantizer.quantize_model(model, calibration_loader=None)
    quantizer.save_model(model, "results/")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tao_qc.errors import InputError
from tao_qc.fileio import atomic_path
from tao_qc.frontends.backend_interface import QuantBackend
from tao_qc.frontends.device import resolve_device
from tao_qc.frontends.loading import build_model, torch_load
from tao_qc.frontends.modelopt_backend import ModeloptBackend
from tao_qc.frontends.module_selection import select_modules
from tao_qc.frontends.torchao_backend import TorchaoBackend
from tao_qc.spec import QuantizeSpec, load_spec
from tao_qc.spec.selection import MatchResult

log = logging.getLogger("tao_qc.frontends")

PYTORCH_BACKENDS = ("torchao", "modelopt.pytorch")


def backend_class(name: str) -> type[QuantBackend]:
    if name == "torchao":
        return TorchaoBackend
    if name == "modelopt.pytorch":
        return ModeloptBackend
    raise InputError(
        f"quantize.backend: '{name}' does not quantize PyTorch models in-framework "
        f"(valid: {', '.join(PYTORCH_BACKENDS)}, modelopt; for ONNX models use `tao-qc compile`)"
    )


def artifact_name(backend: str) -> str:
    return backend_class(backend).artifact_name


class _PositionalBatches:
    """A user's data loader as tuples of positional model inputs (torch tensors).

    Items may be a tensor or array (the input), a tuple/list whose first element is the input
    (the rest, usually labels, is ignored; a tuple as first element means several inputs), or a
    mapping of input name to tensor/array (the order of the mapping is the order of the inputs).
    """

    def __init__(self, loader: Iterable[Any]):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for item in self.loader:
            yield as_inputs(item)


def as_inputs(item: Any) -> tuple[Any, ...]:
    import numpy as np
    import torch

    def tensor(value: Any):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(value))
        raise InputError(f"calibration data: expected tensors or numpy arrays in each batch, got {type(value).__name__}")

    if isinstance(item, Mapping):
        return tuple(tensor(v) for v in item.values())
    if isinstance(item, (tuple, list)):
        if not item:
            raise InputError("calibration data: an empty batch")
        first = item[0]
        return tuple(tensor(v) for v in first) if isinstance(first, (tuple, list)) else (tensor(first),)
    return (tensor(item),)


def _check_rewritable(model) -> None:
    """Both backends rewrite `nn.Linear` / `nn.Conv*d` modules in place; compiled forms have none."""
    import torch
    from torch import fx

    if isinstance(model, torch.jit.ScriptModule) or isinstance(model, fx.GraphModule):
        form = "a TorchScript model" if isinstance(model, torch.jit.ScriptModule) else "a torch.export / FX graph"
        raise InputError(
            f"{form} keeps no nn.Linear / nn.Conv2d modules to quantize in-framework; give the checkpoint "
            "with --model-factory module:callable, or lower it to ONNX and use `tao-qc compile`"
        )


class ModelQuantizer:
    """Quantize a PyTorch model with the backend the spec names (torchao or modelopt.pytorch)."""

    def __init__(self, cfg_like: QuantizeSpec | Mapping[str, Any] | str | Path | Any):
        spec = load_spec(cfg_like)
        if spec.backend == "modelopt":
            # This API takes PyTorch models, so the short form means modelopt.pytorch here
            # unless model_path names an ONNX file (then it is the wrong API, said below).
            spec = spec.resolve_backend(spec.model_path or "model.pth")
        self.spec = spec
        self.backend: QuantBackend = backend_class(spec.backend)(spec, resolve_device(spec.device))
        self.model = None
        self.selection: MatchResult | None = None
        self._quantized = False

    @property
    def device(self) -> str:
        return self.backend.device

    def prepare(self, model):
        """Select modules by the spec and set the backend up on `model`; returns the model to use."""
        _check_rewritable(model)
        self.selection = select_modules(model, self.spec, static=self.backend.static)
        for decision in self.selection.decisions:
            log.debug("%s (%s): %s", decision.unit.name, decision.unit.type, decision.reason)
        quantized = len(self.selection.quantized)
        log.info("%s: %d of %d compute modules selected for quantization", self.backend.name, quantized, len(self.selection.decisions))
        self.model = self.backend.prepare(model, self.selection)
        self._quantized = False
        return self.model

    def calibrate(self, model, dataloader: Iterable[Any]) -> None:
        """Run calibration batches through `model` (a no-op for torchao, which does not calibrate)."""
        if not self.backend.static:
            log.info("%s quantizes weights only: calibration data is not needed and is not read", self.backend.name)
            return
        if self.selection is None:
            raise InputError("calibrate() before prepare(): call prepare(model) first, or use quantize_model()")
        self.backend.calibrate(model, _PositionalBatches(dataloader))

    def quantize(self, model=None):
        """Quantize the prepared model (or `model`); returns the quantized model."""
        model = model if model is not None else self.model
        if model is None:
            raise InputError("quantize() needs a model: call prepare(model) first, or quantize(model)")
        if self.selection is None or model is not self.model:
            model = self.prepare(model)
        self.model = self.backend.quantize(model)
        self._quantized = True
        return self.model

    def quantize_model(self, model, calibration_loader: Iterable[Any] | None = None):
        """prepare, calibrate (when a loader is given), quantize."""
        model = self.prepare(model)
        if calibration_loader is not None:
            self.calibrate(model, calibration_loader)
        return self.quantize(model)

    def artifact_path(self, path: str | Path = "") -> Path:
        if not path:
            if not self.spec.results_dir:
                raise InputError("save_model: no path given and quantize.results_dir is not set")
            path = self.spec.results_dir
        path = Path(path)
        if path.suffix != ".pth" or path.is_dir():
            path = path / self.backend.artifact_name
        return path

    def save_model(self, model=None, path: str | Path = "") -> Path:
        """Write the artifact (a folder gets the backend's file name); returns its path."""
        model = model if model is not None else self.model
        if model is None or not self._quantized:
            raise InputError("save_model: nothing quantized yet (call quantize_model(model) first)")
        target = self.artifact_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            self.backend.save(model, tmp)
        log.info("wrote %s", target)
        return target


def backend_of_artifact(artifact: Any, path: Path) -> str:
    if isinstance(artifact, Mapping) and "modelopt_state" in artifact:
        return "modelopt.pytorch"
    if path.name == artifact_name("modelopt.pytorch"):
        raise InputError(f"{path}: named like a modelopt.pytorch artifact but holds no modelopt_state")
    return "torchao"


def load_quantized(
    path: str | Path,
    factory: str | Callable[..., Any],
    factory_kwargs: Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
):
    """A quantized model from an artifact: a fresh model from the factory with the artifact applied."""
    path = Path(path)
    artifact = torch_load(path, what="quantized artifact")
    backend = backend or backend_of_artifact(artifact, path)
    model = build_model(factory, factory_kwargs)
    implementation = backend_class(backend)(QuantizeSpec(backend=backend, device="cpu"), "cpu")
    return implementation.restore(model, artifact, str(path))
