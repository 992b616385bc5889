"""The small interface every in-framework backend implements; `ModelQuantizer` drives it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tao_qc.spec import QuantizeSpec
from tao_qc.spec.selection import MatchResult


class QuantBackend(ABC):
    name: str
    artifact_name: str
    # Static PTQ quantizes activations too and needs calibration data.
    static: bool

    def __init__(self, spec: QuantizeSpec, device: str):
        self.spec = spec
        self.device = device

    @abstractmethod
    def prepare(self, model, selection: MatchResult):
        """Check the selection against what the backend can do and set the model up; returns the model."""

    def calibrate(self, model, batches: Iterable[tuple[Any, ...]]) -> None:
        """Feed calibration batches (tuples of positional inputs); backends without calibration ignore them."""

    @abstractmethod
    def quantize(self, model):
        """Quantize the prepared (and calibrated) model; returns it."""

    @abstractmethod
    def save(self, model, path: Path) -> None:
        """Write the artifact to `path` (the caller makes the write atomic)."""

    @abstractmethod
    def restore(self, model, artifact: Any, source: str):
        """Apply a loaded artifact to a fresh float model of the same architecture; returns it."""
