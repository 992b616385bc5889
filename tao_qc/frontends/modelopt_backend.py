"""modelopt.pytorch static PTQ: fake-quantized weights and activations, per-module dtypes,
max or entropy calibration, and an artifact that restores the quantizers on a fresh model."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tao_qc.console import track
from tao_qc.errors import InputError
from tao_qc.frontends.backend_interface import QuantBackend
from tao_qc.frontends.loading import (  # noqa: F401
    _quiet_stdout,
    load_state_dict_checked,
    restore_modelopt_artifact,
)
from tao_qc.spec.selection import MatchResult

log = logging.getLogger("tao_qc.frontends.modelopt")

# ModelOpt's quantizer formats: integer bit width, or (exponent, mantissa) bits for fp8.
_FORMATS = {"int8": 8, "fp8_e4m3fn": (4, 3), "fp8_e5m2": (5, 2)}
_CALIBRATION = {"minmax": "max", "entropy": "entropy"}


def _escape(name: str) -> str:
    """A module name as a literal ModelOpt wildcard (it matches with fnmatch)."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _check_format(dtype: str, role: str, modules: list[str]) -> None:
    """Ask ModelOpt's own config validator whether it can do static per-tensor `dtype`."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from pydantic import ValidationError

    where = f"{role} of {', '.join(modules[:4])}{' and more' if len(modules) > 4 else ''}"
    if dtype not in _FORMATS:
        raise InputError(f"backend modelopt.pytorch cannot quantize {where} to {dtype!r} (valid: int8, fp8_e4m3fn, native)")
    try:
        QuantizerAttributeConfig(num_bits=_FORMATS[dtype], axis=None)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError(
            f"backend modelopt.pytorch cannot quantize {where} to {dtype}: ModelOpt says '{reason}' "
            "(valid for static PTQ: int8, fp8_e4m3fn, native)"
        ) from None


def _attributes(dtype: str, *, weight: bool, entropy: bool) -> dict[str, Any]:
    bits = _FORMATS[dtype]
    attributes: dict[str, Any] = {"num_bits": bits, "axis": 0 if weight and dtype == "int8" else None}
    if entropy and not weight and dtype == "int8":
        attributes["calibrator"] = "histogram"
    return attributes


def build_config(selection: MatchResult, algorithm: str, backend_kwargs: dict[str, Any]) -> dict[str, Any]:
    """ModelOpt's config dict for the spec's decisions; `backend_kwargs` merged on top.

    Every module the spec leaves in float gets an explicit `{"enable": False}` entry, so the
    config reads as the decisions do. A user's `quant_cfg` list is appended (ModelOpt applies
    entries in order, later ones win); any other user key replaces ours.
    """
    entropy = algorithm == "entropy"
    quant_cfg: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    by_format: dict[tuple[str, str], list[str]] = {}
    fp8_entropy = []
    for decision in selection.decisions:
        name = _escape(decision.unit.name)
        if not decision.quantized:
            quant_cfg.append({"quantizer_name": f"{name}.*", "enable": False})
            continue
        if decision.weights != "native":
            by_format.setdefault((decision.weights, "weights"), []).append(decision.unit.name)
            quant_cfg.append({"quantizer_name": f"{name}.weight_quantizer",
                              "cfg": _attributes(decision.weights, weight=True, entropy=entropy)})
        if decision.activations != "native":
            by_format.setdefault((decision.activations, "activations"), []).append(decision.unit.name)
            if entropy and decision.activations != "int8":
                fp8_entropy.append(decision.unit.name)
            quant_cfg.append({"quantizer_name": f"{name}.input_quantizer",
                              "cfg": _attributes(decision.activations, weight=False, entropy=entropy)})
    for (dtype, role), modules in by_format.items():
        _check_format(dtype, role, modules)
    if fp8_entropy:
        log.warning(
            "algorithm entropy: ModelOpt's entropy calibrator handles integer formats only; the fp8 activations of %s "
            "are calibrated with max", ", ".join(fp8_entropy)
        )
    config: dict[str, Any] = {"quant_cfg": quant_cfg, "algorithm": "max"}
    for key, value in copy.deepcopy(backend_kwargs).items():
        if key == "quant_cfg" and isinstance(value, list):
            config["quant_cfg"] = quant_cfg + value
        else:
            config[key] = value
    return config


class ModeloptBackend(QuantBackend):
    name = "modelopt.pytorch"
    artifact_name = "quantized_model_modelopt.pth"
    static = True

    def __init__(self, spec, device):
        super().__init__(spec, device)
        self.config: dict[str, Any] = {}
        self.calibrated = False

    def prepare(self, model, selection: MatchResult):
        import modelopt.torch.quantization as mtq

        self.config = build_config(selection, self.spec.calibration_algorithm, self.spec.backend_kwargs)
        model = model.to(self.device).eval()
        # Insert the quantizers now and calibrate in `calibrate`: ModelQuantizer's API separates the two.
        insert_only = {**self.config, "algorithm": None}
        try:
            with _quiet_stdout():
                return mtq.quantize(model, insert_only, forward_loop=None)
        except Exception as exc:  # noqa: BLE001 - ModelOpt's config validation raises pydantic and assertion errors
            first = str(exc).strip().splitlines()
            raise InputError(f"quantize.backend_kwargs: ModelOpt rejected the config: {type(exc).__name__}: {' '.join(first[:3])}") from None

    def calibrate(self, model, batches: Iterable[tuple[Any, ...]]) -> None:
        import torch

        def forward_loop(module) -> None:
            with torch.no_grad():
                for inputs in track(batches, "calibrating (modelopt.pytorch)"):
                    module(*(t.to(self.device) for t in inputs))

        algorithm = self.config.get("algorithm")
        with _quiet_stdout():
            if algorithm == "max" and self.spec.calibration_algorithm == "entropy":
                self._calibrate_entropy(model, forward_loop)
            else:
                import modelopt.torch.quantization as mtq

                mtq.calibrate(model, algorithm=algorithm, forward_loop=forward_loop)
        self.calibrated = True

    @staticmethod
    def _calibrate_entropy(model, forward_loop) -> None:
        # ModelOpt 0.47's `max` algorithm finishes every calibrator with compute_amax() and no
        # method, which its HistogramCalibrator refuses; its own building blocks with an explicit
        # method per calibrator do the entropy calibration it documents.
        from modelopt.torch.quantization.calib import HistogramCalibrator
        from modelopt.torch.quantization.model_calib import enable_stats_collection
        from modelopt.torch.quantization.nn import TensorQuantizer

        enable_stats_collection(model)
        forward_loop(model)
        for _, quantizer in model.named_modules():
            if not isinstance(quantizer, TensorQuantizer) or quantizer._disabled:
                continue
            calibrator = getattr(quantizer, "_calibrator", None)
            if calibrator is not None and not quantizer._dynamic:
                if isinstance(calibrator, HistogramCalibrator):
                    quantizer.load_calib_amax("entropy", strict=False)
                else:
                    quantizer.load_calib_amax(strict=False)
            quantizer.enable_quant()
            quantizer.disable_calib()

    def quantize(self, model):
        if not self.calibrated:
            raise InputError(
                "modelopt.pytorch static PTQ needs calibration data (set quantize.calibration.data, pass "
                "--calibration-data, or call calibrate(model, loader) / quantize_model(model, calibration_loader))"
            )
        return model.eval()

    def save(self, model, path: Path) -> None:
        import modelopt.torch.opt as mto
        import torch

        torch.save({"model_state_dict": model.state_dict(), "modelopt_state": mto.modelopt_state(model)}, path)

    def restore(self, model, artifact: Any, source: str):
        return restore_modelopt_artifact(model, artifact, source)
