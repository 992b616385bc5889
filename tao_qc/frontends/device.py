"""The `device` field: where in-framework quantization runs."""

from __future__ import annotations

import logging

from tao_qc.errors import InputError

log = logging.getLogger("tao_qc.device")


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when present; asking for CUDA where there is none is an error."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            log.info("quantize.device: auto: no CUDA device here, quantizing on CPU")
            return "cpu"
        return "cuda"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                f"quantize.device: '{device}' asked for, but no CUDA device is available here "
                "(valid here: cpu, or auto to use CUDA only where present)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"quantize.device: '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device
