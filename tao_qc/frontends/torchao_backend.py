"""torchao weight-only PTQ: int8 or fp8 weights on the Linear layers the spec selects.

torchao's weight-only tensor subclasses implement `linear` on CPU and GPU; their `convolution`
is missing (int8) or needs GPU-only kernels (fp8), so a selected convolution stays in float with
a warning that names it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from tao_qc.errors import InputError
from tao_qc.frontends.backend_interface import QuantBackend
from tao_qc.frontends.loading import extract_state_dict, load_state_dict_checked
from tao_qc.spec.selection import MatchResult

log = logging.getLogger("tao_qc.frontends.torchao")

SUPPORTED_DTYPES = ("int8", "fp8_e4m3fn", "fp8_e5m2")
SUPPORTED_TYPES = ("Linear",)


def weight_config(dtype: str, module_names: list[str]):
    """The torchao config for one weight dtype."""
    import torch
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    if dtype == "int8":
        return Int8WeightOnlyConfig()
    if dtype in ("fp8_e4m3fn", "fp8_e5m2"):
        torch_dtype = torch.float8_e4m3fn if dtype == "fp8_e4m3fn" else torch.float8_e5m2
        try:
            return Float8WeightOnlyConfig(weight_dtype=torch_dtype)
        except (TypeError, ValueError, AssertionError) as exc:
            raise InputError(
                f"backend torchao cannot quantize weights to {dtype} ({exc}); modules: {', '.join(module_names[:4])}"
            ) from None
    raise InputError(
        f"backend torchao cannot quantize weights to {dtype!r} (modules: {', '.join(module_names[:4])}; "
        f"valid: {', '.join(SUPPORTED_DTYPES)}, native)"
    )


class TorchaoBackend(QuantBackend):
    name = "torchao"
    artifact_name = "quantized_model_torchao.pth"
    static = False

    def __init__(self, spec, device):
        super().__init__(spec, device)
        self.groups: dict[str, list[str]] = {}

    def prepare(self, model, selection: MatchResult):
        groups: dict[str, list[str]] = defaultdict(list)
        left_in_float = []
        for decision in selection.quantized:
            if decision.weights == "native":
                continue  # only activations asked for: torchao has nothing to do (spec warned)
            if decision.unit.type not in SUPPORTED_TYPES:
                left_in_float.append(f"{decision.unit.name} ({decision.unit.type})")
                continue
            groups[decision.weights].append(decision.unit.name)
        if left_in_float:
            log.warning(
                "torchao weight-only quantization supports only %s here: left in float: %s",
                ", ".join(SUPPORTED_TYPES),
                ", ".join(left_in_float),
            )
        for dtype, names in groups.items():
            weight_config(dtype, names)  # an unsupported dtype fails now, before any work
        if not groups:
            log.warning("torchao: no module selected for quantization; the artifact will be the float model")
        self.groups = dict(groups)
        return model.to(self.device)

    def quantize(self, model):
        from torchao.quantization import quantize_

        for dtype, names in self.groups.items():
            selected = frozenset(names)
            arguments: dict[str, Any] = {
                "config": weight_config(dtype, names),
                "filter_fn": lambda module, fqn, selected=selected: fqn in selected,
                "device": self.device,
            }
            arguments.update(self.spec.backend_kwargs)
            log.info("torchao: %s weights on %d module(s): %s", dtype, len(names), ", ".join(names))
            quantize_(model, **arguments)
        return model

    def save(self, model, path: Path) -> None:
        import torch

        torch.save(model.state_dict(), path)

    def restore(self, model, artifact: Any, source: str):
        state_dict = extract_state_dict(artifact, source)
        if state_dict is None:
            raise InputError(f"{source}: not a torchao artifact (expected the quantized state_dict)")
        # assign=True puts torchao's tensor subclasses in place of the float parameters, which
        # rebuilds the quantized structure without re-running quantize_.
        load_state_dict_checked(model, state_dict, source, assign=True)
        return model.eval()
