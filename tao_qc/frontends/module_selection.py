"""Which modules of a PyTorch model the spec selects, through the one pattern matcher."""

from __future__ import annotations

from tao_qc.spec import QuantizeSpec
from tao_qc.spec.selection import MatchResult, Unit, decide


def module_units(model) -> list[Unit]:
    """Every named submodule as a pattern unit: qualified name and class name."""
    return [Unit(name, type(module).__name__) for name, module in model.named_modules() if name]


def select_modules(model, spec: QuantizeSpec, *, static: bool, warn: bool = True) -> MatchResult:
    return decide(module_units(model), spec.layers, spec.skip_names, static=static, warn=warn)
