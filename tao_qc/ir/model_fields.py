"""What a model carries besides its computation, kept from the user's file to the quantized one.

Runtime clients read more than the graph: an OCR recognizer keeps its character list in
`metadata_props["character"]`, classifiers their labels, exporters a custom-domain opset (`Paddle`)
and local functions. Quantization must not touch any of it. `ModelFields` is taken from the graph
`load-and-check` read; the pipeline checks every later pass's result against it (a pass that drops a
field fails, named), and a pass that builds a new model from another tool's output (modelopt's)
puts the fields back with `restore`.

tao-qc records itself in the fields a quantizer owns (producer name and version) and in
`metadata_props` keys of its own (`tao_qc.*`), so no key of the user's is overwritten; the
exporter's producer is kept under `tao_qc.source_producer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from tao_qc.spec import QuantizeSpec, cpu

OWN_KEY_PREFIX = "tao_qc."
SOURCE_PRODUCER_KEY = "tao_qc.source_producer"
SPEC_HASH_KEY = "tao_qc.spec_sha256"
VERSION_KEY = "tao_qc.version"
PRODUCER = "tao-qc"


@dataclass(frozen=True)
class ModelFields:
    doc_string: str | None
    model_version: int | None
    domain: str | None
    producer_name: str | None
    producer_version: str | None
    metadata: dict[str, str]
    graph_name: str | None
    graph_doc_string: str | None
    graph_metadata: dict[str, str]
    value_docs: dict[str, str]  # graph input/output name -> doc string (only those that have one)
    opsets: dict[str, int]
    functions: tuple[tuple[str, str, str], ...] = field(default=())  # (domain, name, overload)

    @classmethod
    def of(cls, model: ir.Model) -> ModelFields:
        graph = model.graph
        return cls(
            doc_string=model.doc_string or None,
            model_version=model.model_version or None,
            domain=model.domain or None,
            producer_name=model.producer_name or None,
            producer_version=model.producer_version or None,
            metadata=dict(model.metadata_props),
            graph_name=graph.name or None,
            graph_doc_string=graph.doc_string or None,
            graph_metadata=dict(graph.metadata_props),
            value_docs={v.name: v.doc_string for v in (*graph.inputs, *graph.outputs) if v.name and v.doc_string},
            opsets=_opsets(model),
            functions=tuple(sorted(model.functions)),
        )

    def restore(self, model: ir.Model, functions_from: ir.Model | None = None) -> None:
        """Put every field back on `model` (built from another tool's output), keeping what that tool
        added: opsets only ever rise, and the user's metadata keys win over anything written there.
        `functions_from`: the model the local functions are copied from where `model` lost them."""
        for name in ("doc_string", "model_version", "domain", "producer_name", "producer_version"):
            value = getattr(self, name)
            if value is not None:
                setattr(model, name, value)
        model.metadata_props.update(self.metadata)
        graph = model.graph
        if self.graph_name is not None:
            graph.name = self.graph_name
        if self.graph_doc_string is not None:
            graph.doc_string = self.graph_doc_string
        graph.metadata_props.update(self.graph_metadata)
        for value in (*graph.inputs, *graph.outputs):
            if value.name in self.value_docs:
                value.doc_string = self.value_docs[value.name]
        for domain, version in self.opsets.items():
            current = model.opset_imports.get(domain)
            if current is None or current < version:
                model.opset_imports[domain] = version
        if functions_from is not None:
            for key, function in functions_from.functions.items():
                if key in set(self.functions) and key not in model.functions:
                    model.functions[key] = function

    def lost_in(self, model: ir.Model) -> list[str]:
        """What `model` no longer carries of these fields, one phrase each (empty: nothing lost)."""
        lost = []
        for name in ("doc_string", "model_version", "domain"):
            if getattr(self, name) is not None and getattr(model, name) != getattr(self, name):
                lost.append(f"model {name}")
        changed = sorted(key for key, value in self.metadata.items() if model.metadata_props.get(key) != value)
        if changed:
            lost.append(f"metadata_props {', '.join(repr(k) for k in changed)}")
        graph = model.graph
        if self.graph_name is not None and graph.name != self.graph_name:
            lost.append("graph name")
        if self.graph_doc_string is not None and graph.doc_string != self.graph_doc_string:
            lost.append("graph doc_string")
        if any(graph.metadata_props.get(k) != v for k, v in self.graph_metadata.items()):
            lost.append("graph metadata_props")
        docs = {v.name: v.doc_string for v in (*graph.inputs, *graph.outputs)}
        missing_docs = sorted(name for name, doc in self.value_docs.items() if docs.get(name) != doc)
        if missing_docs:
            lost.append(f"doc strings of {', '.join(missing_docs)}")
        opsets = _opsets(model)
        lowered = sorted(d or "ai.onnx" for d, v in self.opsets.items() if opsets.get(d, -1) < v)
        if lowered:
            lost.append(f"opset imports {', '.join(lowered)} (missing or downgraded)")
        gone = sorted(f"{d}:{n}" for d, n, _ in set(self.functions) - set(model.functions))
        if gone:
            lost.append(f"local functions {', '.join(gone)}")
        return lost


def _opsets(model: ir.Model) -> dict[str, int]:
    return {("" if domain == "ai.onnx" else domain): int(version) for domain, version in model.opset_imports.items()}


def spec_digest(spec: QuantizeSpec) -> str:
    """sha256 of the normalized spec (sorted keys): which settings made a model, in one string."""
    return hashlib.sha256(json.dumps(spec.normalized(), sort_keys=True).encode("utf-8")).hexdigest()


def stamp(model: ir.Model, spec: QuantizeSpec, version: str) -> None:
    """Record tao-qc as the producer, keeping the exporter's producer under a key of our own."""
    source = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    if source and model.producer_name != PRODUCER:
        model.metadata_props.setdefault(SOURCE_PRODUCER_KEY, source)
    model.producer_name, model.producer_version = PRODUCER, version
    model.metadata_props[VERSION_KEY] = version
    model.metadata_props[SPEC_HASH_KEY] = spec_digest(spec)
    if getattr(spec, "target", None) == "onnxruntime":
        # The instruction set its integer weights were made for: a model for a VNNI CPU computes
        # wrong integers on AVX2 without VNNI, and `tao-qc compare`/`inspect` say so from this key.
        model.metadata_props[cpu.METADATA_KEY] = cpu.resolve(spec.onnxruntime.cpu).isa
