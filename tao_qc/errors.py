"""The error types every tao-qc stage raises.

The CLI turns each into one line on stderr and an exit code; nothing else needs to know how.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ACCURACY = 1  # a comparison ran and failed its tolerances
EXIT_BAD_INPUT = 2  # the user's spec, model, data or paths are wrong
EXIT_INTERNAL = 3  # a bug or an unexpected library failure


class TaoQcError(Exception):
    """Base of all errors tao-qc reports to a user as one line."""

    exit_code = EXIT_INTERNAL


class InputError(TaoQcError):
    """Something the user handed us (model, data, path, flag) is unusable."""

    exit_code = EXIT_BAD_INPUT


class SpecError(InputError):
    """The `quantize` spec is invalid. `str()` is the full one-line message.

    `location` is `file:line:col` where known, `key` the dotted key path (`quantize.layers[1].weights.dtype`).
    """

    def __init__(self, message: str, *, key: str | None = None, location: str | None = None):
        self.key = key
        self.location = location
        self.detail = message
        parts = [p for p in (location, key) if p]
        super().__init__(": ".join(parts + [message]))


class AccuracyError(TaoQcError):
    """The quantized model failed the comparison's tolerances."""

    exit_code = EXIT_ACCURACY


class MissingDependencyError(InputError):
    """An optional library (TensorRT) the user asked for is not installed."""
