"""Quantized compute nodes grouped by what decides their speed in ONNX Runtime's integer kernels.

Timing every node alone would cost a model build and a timing run per node; nodes of one class run
on the same kernel with similar shapes, so they win or lose together. The classes follow how ORT's
CPU provider runs them:

- depthwise and other grouped Convs run on a direct (not GEMM) kernel, where INT8 has little to
  gain over float and the Q/DQ around them costs as much as the Conv;
- a Conv with a short reduction (few input channels times kernel area, such as an RGB stem) or few
  output channels does too little work per element to pay for requantizing its output;
- pointwise (1x1) and spatial Convs, and Gemm/MatMul, run on the integer GEMM, where VNNI and AMX
  gain most and AVX2 least;
- a narrow stem (the Convs before the first one with `WIDE_CHANNELS` outputs, at the highest
  resolutions, YuNet's first five with 16 channels) mixes the two, and moving the quantization
  boundary behind it also saves the QuantizeLinear of the full-resolution input and its layout
  change: it is tried first, as one class. YuNet on 2 cores of an AMX Xeon, ORT's default
  spinning threads, batch 1: 0.94x FP32 all INT8, 1.05x with its stem in float, where no class of
  the others gains in float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx_ir as ir

from tao_qc.passes.keep_float import COMPUTE_OPS
from tao_qc.passes.qdq import dims_through_qdq

# A reduction this short (an RGB stem's 3x3x3 = 27, a space-to-depth stem's 2x2x12 = 48) or this
# few output channels leave the integer kernel too little work per output element.
SHORT_REDUCTION = 48
FEW_OUTPUT_CHANNELS = 16

# The stem ends at the first Conv with this many output channels.
WIDE_CHANNELS = 32
NARROW_STEM = "the narrow stem's Convs"

ORDER = (NARROW_STEM, "depthwise Convs", "grouped Convs", "Convs with little work per output", "pointwise Convs", "spatial Convs",
         "Gemms and MatMuls")


@dataclass
class UnitClass:
    label: str
    nodes: list[str] = field(default_factory=list)


def unit_classes(model: ir.Model, quantized: set[str]) -> list[UnitClass]:
    """The classes (in `ORDER`, empty ones left out) of the compute nodes named in `quantized`."""
    nodes = [n for n in model.graph if n.name in quantized and n.op_type in COMPUTE_OPS]
    stem = _narrow_stem(nodes)
    found: dict[str, UnitClass] = {label: UnitClass(label) for label in ORDER}
    for node in nodes:
        found[NARROW_STEM if node.name in stem else class_of(node)].nodes.append(node.name)
    return [unit for unit in found.values() if unit.nodes]


def _narrow_stem(nodes: list[ir.Node]) -> set[str]:
    """The Convs before the first with WIDE_CHANNELS outputs (graph order is topological), where
    there are two or more: a single one is tried with its kernel's class."""
    stem = []
    for node in nodes:
        shape = _weight_shape(node)
        if node.op_type != "Conv" or shape is None or shape[0] >= WIDE_CHANNELS:
            break
        stem.append(node.name)
    return set(stem) if len(stem) >= 2 else set()


def class_of(node: ir.Node) -> str:
    if node.op_type != "Conv":
        return "Gemms and MatMuls"
    group = node.attributes.get_int("group", 1)
    shape = _weight_shape(node)
    if group > 1:
        return "depthwise Convs" if shape is not None and shape[1] == 1 else "grouped Convs"
    if shape is None:
        return "spatial Convs"
    reduction = shape[1] * _area(shape)
    if reduction <= SHORT_REDUCTION or shape[0] < FEW_OUTPUT_CHANNELS:
        return "Convs with little work per output"
    return "pointwise Convs" if _area(shape) == 1 else "spatial Convs"


def _area(shape: tuple[int, ...]) -> int:
    return math.prod(shape[2:])


def _weight_shape(node: ir.Node) -> tuple[int, ...] | None:
    """The Conv's weight shape, through the DequantizeLinear a calibrated graph puts before it."""
    dims = dims_through_qdq(node.inputs[1] if len(node.inputs) > 1 else None)
    return dims if dims is not None and all(isinstance(d, int) for d in dims) else None
