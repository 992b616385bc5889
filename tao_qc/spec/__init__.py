"""The quantize spec: its typed schema and loading (`schema`), which nodes and modules a pattern
selects (`selection`), and the backend parameters a spec may pass through (`backend_params`).

`tao_qc.spec` is the spec's public face: everything inward receives these typed objects."""

from tao_qc.spec.schema import (
    AccuracySpec,
    CalibrationSpec,
    CompareSpec,
    CorrectionSpec,
    DtypeSpec,
    ExperimentSpec,
    LayerEntry,
    QuantizeSpec,
    ShapeProfile,
    TaskSpec,
    TensorRTSpec,
    did_you_mean,
    load_experiment,
    load_spec,
    warn_once,
)

__all__ = ["AccuracySpec", "CalibrationSpec", "CompareSpec", "CorrectionSpec", "DtypeSpec", "ExperimentSpec", "LayerEntry",
           "QuantizeSpec", "ShapeProfile", "TaskSpec", "TensorRTSpec", "did_you_mean", "load_experiment",
           "load_spec", "warn_once"]
