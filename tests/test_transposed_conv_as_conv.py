"""transposed-conv-as-conv: an upsampling ConvTranspose (kernel = stride) as a 1x1 Conv and a
DepthToSpace, with the per-channel steps after it folded in; the same outputs to float rounding."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tao_qc.passes import calibrating_passes
from tao_qc.passes.transposed_conv_as_conv import TransposedConvAsConv
from tao_qc.spec import load_spec


class Upsampler(nn.Module):
    """A DBNet head's tail: ConvTranspose -> BatchNorm -> ReLU -> ConvTranspose (-> scale) -> Sigmoid."""

    def __init__(self, block: int = 2, padding: int = 0, groups: int = 1, output_padding: int = 0, scale: bool = False):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 6, block, block, padding=padding, groups=groups, output_padding=output_padding)
        self.norm = nn.BatchNorm2d(6)
        self.last = nn.ConvTranspose2d(6, 2, block, block, bias=False)
        self.scale = scale

    def forward(self, x):
        y = self.last(torch.relu(self.norm(self.up(x))))
        return torch.sigmoid(y * torch.tensor([0.5, 2.0]).reshape(1, 2, 1, 1) if self.scale else y)


def export(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)
        module.norm.running_mean.uniform_(-0.5, 0.5)
        module.norm.running_var.uniform_(0.5, 2.0)
    torch.onnx.export(module.eval(), torch.randn(1, 8, 5, 7), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, do_constant_folding=False)
    return path


def run(model: ir.Model | Path, x: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("block", [2, 3])
@pytest.mark.parametrize("scale", [False, True])
def test_upsampling_convtranspose_becomes_a_conv_and_a_depth_to_space(block, scale, tmp_path):
    path = export(Upsampler(block, scale=scale), tmp_path / "head.onnx")
    model = ir.load(path)
    result = TransposedConvAsConv().run(model, None)
    assert result.stats == {"transposed_convs_rewritten": 2, "steps_folded": 2 if scale else 1}
    ops = [n.op_type for n in result.model.graph]
    # The BatchNorm (and the scale) folded in, the ReLU before the first DepthToSpace, next to its Conv.
    assert ops == ["Conv", "Relu", "DepthToSpace", "Conv", "DepthToSpace", "Sigmoid"]
    assert result.model.graph.node(0).name == "/up/ConvTranspose"  # the layer's name, for the spec and reports
    for shape in [(1, 8, 5, 7), (2, 8, 3, 4)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run(result.model, x), run(path, x), atol=2e-6)


@pytest.mark.parametrize("settings", [{"padding": 1, "block": 3}, {"groups": 2}, {"output_padding": 1, "block": 3}])
def test_overlapping_or_grouped_convtransposes_stay(settings, tmp_path):
    model = ir.load(export(Upsampler(**settings), tmp_path / "head.onnx"))
    result = TransposedConvAsConv().run(model, None)
    assert result.stats["transposed_convs_rewritten"] == 1  # the last one only
    assert Counter(n.op_type for n in result.model.graph)["ConvTranspose"] == 1


def test_only_onnxruntime_gets_the_rewrite():
    """TensorRT has integer ConvTranspose kernels: its graph keeps them."""
    def canonicalizing(target: str) -> list[str]:
        spec = load_spec({"quantize": {"backend": "modelopt.onnx", "target": target}})
        fixed_point = next(p for p in calibrating_passes(spec) if p.name == "canonicalize")
        return [p.name for p in fixed_point.passes]

    assert "transposed-conv-as-conv" in canonicalizing("onnxruntime")
    assert "transposed-conv-as-conv" not in canonicalizing("tensorrt")
