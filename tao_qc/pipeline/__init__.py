"""The pass pipeline: the Pass protocol and its context, the manager that runs passes in order, and
the instruments (timing, invariants between passes, dumps)."""

from tao_qc.pipeline.manager import (
    DUMP_MODES,
    PROTOBUF_LIMIT_BYTES,
    PROVENANCE_KEY,
    DumpInstrument,
    FixedPoint,
    Instrument,
    InvariantError,
    InvariantInstrument,
    Pass,
    PassContext,
    PassFailure,
    PassRecord,
    PassResult,
    Pipeline,
    PipelineResult,
    TimingInstrument,
    check_model_proto,
    constant_array,
    format_summary,
    interface_of,
    lift_constant_node,
    light_proto,
    light_proto_and_weights,
    mark_created,
    save_model,
    weight_bytes,
    weightless_proto,
)

__all__ = ["DUMP_MODES", "PROTOBUF_LIMIT_BYTES", "PROVENANCE_KEY", "DumpInstrument", "FixedPoint", "Instrument",
           "InvariantError", "InvariantInstrument", "Pass", "PassContext", "PassFailure", "PassRecord", "PassResult",
           "Pipeline", "PipelineResult", "TimingInstrument", "check_model_proto", "constant_array", "format_summary",
           "interface_of", "lift_constant_node", "light_proto", "light_proto_and_weights", "mark_created",
           "save_model", "weight_bytes", "weightless_proto"]
