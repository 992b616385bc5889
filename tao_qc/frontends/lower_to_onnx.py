"""Lowering a PyTorch model to ONNX for the pass pipeline.

The TorchScript exporter (`dynamo=False`) names nodes by module scope (`/layer1/layer1.0/conv1/Conv`),
so the spec's patterns select the same layers after lowering. A modelopt.pytorch-quantized model
lowers to a Q/DQ graph: ModelOpt's quantizers export as QuantizeLinear/DequantizeLinear pairs
(int8) or TensorRT's TRT_FP8QuantizeLinear/TRT_FP8DequantizeLinear custom ops (fp8, TensorRT only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tao_qc.errors import InputError
from tao_qc.fileio import atomic_path
from tao_qc.frontends.input_data import infer_inputs
from tao_qc.frontends.loading import load_pytorch_model

log = logging.getLogger("tao_qc.frontends.lower")


def _has_modelopt_quantizers(model) -> bool:
    return any(type(m).__name__ in ("TensorQuantizer", "SequentialQuantizer") for m in model.modules())


def _has_tensor_subclass_weights(model) -> bool:
    return any(type(t).__module__.startswith("torchao") for p in model.parameters() for t in (p, p.data))


def lower_to_onnx(
    model,
    example_inputs,
    path: str | Path,
    *,
    quantized: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = 17,
) -> Path:
    """Export `model` (FP32, or modelopt.pytorch-quantized with `quantized=True`) to `path`.

    `example_inputs` is a tensor or a tuple of tensors with the shapes the graph is traced with.
    Returns the path; the file is written atomically.
    """
    import torch

    if _has_tensor_subclass_weights(model):
        raise InputError(
            "a torchao-quantized model cannot be lowered to ONNX (its weights are torchao tensor subclasses); "
            "lower the FP32 model and quantize it with `tao-qc compile`, or quantize with modelopt.pytorch"
        )
    has_quantizers = _has_modelopt_quantizers(model)
    if quantized and not has_quantizers:
        raise InputError("lower_to_onnx(quantized=True): the model has no ModelOpt quantizers (quantize it with modelopt.pytorch first)")
    if has_quantizers and not quantized:
        log.info("the model carries ModelOpt quantizers: lowering it as a Q/DQ graph")
    examples = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    path = Path(path)
    if path.suffix != ".onnx":
        raise InputError(f"lower_to_onnx: output path {path} must end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            with torch.no_grad():
                export_onnx(
                    model.eval(),
                    examples,
                    tmp_onnx,
                    input_names=list(input_names) if input_names else None,
                    output_names=list(output_names) if output_names else None,
                    dynamic_batch=dynamic_batch,
                    opset=opset,
                )
            tmp_onnx.replace(tmp)
        finally:
            tmp_onnx.unlink(missing_ok=True)
    log.info("lowered %s to %s", type(model).__name__, path)
    return path


def example_inputs_from_data(
    data: str | Path | None,
    *,
    calibration=None,
    input_shape: Sequence[int] | None = None,
    key: str = "quantize.calibration.data",
):
    """(input names, example tensors at batch 1) for tracing, from the data the model will see.

    The shapes and names come from the data (`.npz` array names become the ONNX input names, so
    the same file calibrates the lowered graph); `input_shape` stands in for 'random' or missing data.
    """
    import numpy as np
    import torch

    if data is None:
        if not input_shape:
            raise InputError(f"{key}: lowering a PyTorch model needs its input shape: give calibration data or --input-shape N,C,H,W")
        return ["input"], (torch.zeros(1, *input_shape[1:]),)
    inputs = infer_inputs(data, calibration=calibration, input_shape=input_shape, key=key)
    tensors = tuple(torch.zeros((1, *info.shape[1:]), dtype=torch.from_numpy(np.zeros(0, info.dtype)).dtype) for info in inputs)
    return [info.name for info in inputs], tensors


def lower_pytorch_file(
    model_path: str | Path,
    output: str | Path,
    *,
    factory=None,
    factory_kwargs=None,
    data: str | Path | None = None,
    calibration=None,
    input_shape: Sequence[int] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Load a user's PyTorch model and lower its FP32 graph to `output` for the ONNX pipeline."""
    model = load_pytorch_model(model_path, factory, factory_kwargs)
    names, examples = example_inputs_from_data(data, calibration=calibration, input_shape=input_shape)
    # A model that names its outputs (RT-DETR's labels, boxes, scores) keeps those names in the graph,
    # where detection decoders look for them.
    return lower_to_onnx(model, examples, output, input_names=names, dynamic_batch=dynamic_batch,
                         output_names=getattr(model, "output_names", None))


def export_onnx(
    model: Any,
    example: Any,
    path: str | Path,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = 17,
) -> Path:
    """Export with the TorchScript exporter (module-path node names), BatchNorm left unfolded."""
    import torch

    path = Path(path)
    examples = example if isinstance(example, tuple) else (example,)
    input_names = input_names or (["input"] if len(examples) == 1 else [f"input{i}" for i in range(len(examples))])
    output_names = output_names or ["output"]
    dynamic_axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
    torch.onnx.export(
        model.eval(),
        examples,
        str(path),
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_axes=dynamic_axes,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        dynamo=False,
    )
    return path
