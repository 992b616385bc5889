"""The pass pipeline: the Pass protocol and its context (`base`), the manager that runs passes in
order (`manager`), and the instruments (`instruments`: timing, invariants between passes, dumps).
The protobuf/IR helpers passes share live in `tao_qc.ir.protos`."""

from tao_qc.ir.protos import (
    PROTOBUF_LIMIT_BYTES,
    InvariantError,
    check_model_proto,
    constant_array,
    lift_constant_node,
    light_proto,
    light_proto_and_weights,
    save_model,
    weight_bytes,
    weightless_proto,
)
from tao_qc.pipeline.base import (
    PROVENANCE_KEY,
    FixedPoint,
    Instrument,
    Pass,
    PassContext,
    PassFailure,
    PassRecord,
    PassResult,
    mark_created,
)
from tao_qc.pipeline.instruments import (
    DUMP_MODES,
    DumpInstrument,
    InvariantInstrument,
    TimingInstrument,
    format_summary,
    interface_of,
)
from tao_qc.pipeline.manager import Pipeline, PipelineResult

__all__ = ["DUMP_MODES", "PROTOBUF_LIMIT_BYTES", "PROVENANCE_KEY", "DumpInstrument", "FixedPoint", "Instrument",
           "InvariantError", "InvariantInstrument", "Pass", "PassContext", "PassFailure", "PassRecord", "PassResult",
           "Pipeline", "PipelineResult", "TimingInstrument", "check_model_proto", "constant_array", "format_summary",
           "interface_of", "lift_constant_node", "light_proto", "light_proto_and_weights", "mark_created",
           "save_model", "weight_bytes", "weightless_proto"]
