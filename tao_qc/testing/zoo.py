"""Reference architectures built in the repo: the fixed models of tests, golden dumps, benchmarks
and the demo. No downloads: weights are seeded random unless a test trains them.

`export_onnx` lowers any of them with `torch.onnx.export` (TorchScript exporter), whose node names
keep the module path (`/layer1/layer1.0/conv1/Conv`), so spec patterns select the same layers in
PyTorch and ONNX.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tao_qc.frontends.lower_to_onnx import export_onnx


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18's shape (BasicBlock x [2, 2, 2, 2], 64-512 channels) at any input size."""

    def __init__(self, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, width * 2, width * 4, width * 8]
        layers, cin = [], width
        for index, cout in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SmallResidualCNN(nn.Module):
    """A small CNN with BatchNorm and a residual Add: the smallest graph that exercises folding."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = BasicBlock(16, 16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6()
        )
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class MobileNetStyle(nn.Module):
    """MobileNet-v1-style depthwise-separable stack."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
        plan += [(512, 512, 1)] * 3 + [(512, 1024, 2), (1024, 1024, 1)]
        self.features = nn.Sequential(*(DepthwiseSeparable(cin, cout, s) for cin, cout, s in plan))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(self.stem(x))), 1))


class SqueezeExcite(nn.Module):
    """Channel attention: the pooled tensor through a 1x1 bottleneck gates its own channels."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class LCNetBlock(nn.Module):
    """PP-LCNet's block: depthwise kxk (BatchNorm, HardSwish), optional squeeze-excite, pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, squeeze_excite: bool):
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(cin, cin, kernel, stride, kernel // 2, groups=cin, bias=False),
                                       nn.BatchNorm2d(cin), nn.Hardswish())
        self.se = SqueezeExcite(cin) if squeeze_excite else nn.Identity()
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish())

    def forward(self, x):
        return self.pointwise(self.se(self.depthwise(x)))


class LCNetStyle(nn.Module):
    """PP-LCNet x1.0's shape (the backbone family of PaddleOCR's and PaddleClas' mobile models):
    HardSwish everywhere, 5x5 depthwise Convs late, squeeze-excite in the last two blocks, a 1x1
    Conv to 1280 features after the pooling."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        plan = [(16, 32, 3, 1, False), (32, 64, 3, 2, False), (64, 64, 3, 1, False), (64, 128, 3, 2, False),
                (128, 128, 3, 1, False), (128, 256, 3, 2, False)]
        plan += [(256, 256, 5, 1, False)] * 5 + [(256, 512, 5, 2, True), (512, 512, 5, 1, True)]
        self.blocks = nn.Sequential(*(LCNetBlock(*args) for args in plan))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last_conv = nn.Conv2d(512, 1280, 1)
        self.act = nn.Hardswish()
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.act(self.last_conv(self.pool(self.blocks(self.stem(x)))))
        return self.classifier(torch.flatten(x, 1))


class TransformerBlock(nn.Module):
    """One pre-norm encoder block written with explicit MatMul/Softmax/LayerNorm."""

    def __init__(self, dim: int = 128, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        x = x + self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A small transformer classifier over patch tokens (conv patch embedding + 2 blocks)."""

    def __init__(self, num_classes: int = 10, dim: int = 128, depth: int = 2, patch: int = 8, image: int = 32):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class FeaturePyramidStyle(nn.Module):
    """A mobile face detector's shape (YuNet's): depthwise-separable stages whose ReLU'd outputs feed
    both the next stage's MaxPool and a top-down feature pyramid, where each coarser map is
    upsampled (nearest, by 2) and added to the finer one; a 1x1 head per level."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = DepthwiseSeparable(16, width, 1)
        self.stage2 = DepthwiseSeparable(width, width, 1)
        self.stage3 = DepthwiseSeparable(width, width, 1)
        for stage in (self.stage1, self.stage2, self.stage3):  # YuNet's stages end in ReLU, not ReLU6
            stage.depthwise[2], stage.pointwise[2] = nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.lateral = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv2d(width, 6, 1) for _ in range(3))

    def forward(self, x):
        c1 = self.stage1(self.stem(x))
        c2 = self.stage2(self.pool(c1))
        c3 = self.stage3(self.pool(c2))
        p2 = self.lateral(c2 + nn.functional.interpolate(c3, scale_factor=2.0, mode="nearest"))
        p1 = c1 + nn.functional.interpolate(p2, scale_factor=2.0, mode="nearest")
        return tuple(head(p) for head, p in zip(self.heads, (p1, p2, c3)))


class ShuffleBlock(nn.Module):
    """A ShuffleNetV2 block as FastestDet writes it: shuffle the channels (Reshape, Transpose,
    Reshape, take the two halves), run one half through 1x1 -> depthwise 3x3 -> 1x1, concatenate."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
        return torch.cat((x[0], self.branch(x[1])), 1)


class ShuffleDetectorStyle(nn.Module):
    """FastestDet's shape, small: a stem, ShuffleNetV2 stages, a neck joining an average-pooled finer
    map, a map and an upsampled coarser one with a Concat, and a 1x1 head."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.stage1 = nn.Sequential(ShuffleBlock(width), ShuffleBlock(width))
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.stage2 = nn.Sequential(ShuffleBlock(width), ShuffleBlock(width))
        self.down2 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(3 * width, width, 1), nn.ReLU())
        self.head = nn.Conv2d(width, 8, 1)

    def forward(self, x):
        c1 = self.stage1(self.stem(x))
        c2 = self.stage2(self.down(c1))
        c3 = self.down2(c2)
        joined = torch.cat((nn.functional.avg_pool2d(c1, 3, 2, 1), c2,
                            nn.functional.interpolate(c3, scale_factor=2.0, mode="nearest")), 1)
        return self.head(self.neck(joined))



class ResidualExcite(nn.Module):
    """PP-OCR's RSE layer: a Conv whose output is added to its own squeeze-excited copy, x + SE(x)."""

    def __init__(self, inputs: int, outputs: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False)
        self.excite = SqueezeExcite(outputs)

    def forward(self, x):
        x = self.conv(x)
        return x + self.excite(x)


class TextDetectorNeckStyle(nn.Module):
    """A text detector's shape (PP-OCRv5's detector, DBNet-style): a HardSwish backbone, a feature
    pyramid of RSE layers whose top-down sums are upsampled (nearest) and added, each level's RSE
    output upsampled to the finest one and concatenated, and a head that upsamples the probability
    map back to the input's size with ConvTransposes."""

    def __init__(self, width: int = 16):
        super().__init__()
        def down(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.Hardswish())
        self.stages = nn.ModuleList([down(3, 16), down(16, 24), down(24, 32)])
        self.lateral = nn.ModuleList(ResidualExcite(c, width, 1) for c in (16, 24, 32))
        self.smooth = nn.ModuleList(ResidualExcite(width, width // 4, 3) for _ in range(3))
        # DBNet's head: 3x3 Conv, then two 2x2 stride-2 ConvTransposes back to the input's size.
        self.head = nn.Sequential(
            nn.Conv2d(3 * (width // 4), 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 1, 2, 2), nn.Sigmoid())

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        c1, c2, c3 = (lateral(f) for lateral, f in zip(self.lateral, features))
        p2 = c2 + nn.functional.interpolate(c3, scale_factor=2.0, mode="nearest")
        p1 = c1 + nn.functional.interpolate(p2, scale_factor=2.0, mode="nearest")
        s1, s2, s3 = (smooth(p) for smooth, p in zip(self.smooth, (p1, p2, c3)))
        joined = torch.cat((s1, nn.functional.interpolate(s2, scale_factor=2.0, mode="nearest"),
                            nn.functional.interpolate(s3, scale_factor=4.0, mode="nearest")), 1)
        return self.head(joined)


class PaddleHardSwish(nn.Module):
    """HardSwish as paddle2onnx writes it, `x * clip(x + 3, 0, 6) / 6`: Add, Clip, Mul and Div in ONNX."""

    def forward(self, x):
        return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def _conv_bn_act(cin: int, cout: int, kernel: int = 1, stride: int = 1, act: type[nn.Module] = nn.SiLU,
                 groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


def _conv_bn_hardswish(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return _conv_bn_act(cin, cout, kernel, stride, PaddleHardSwish, groups)


def _depthwise_separable(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(_conv_bn_hardswish(cin, cin, kernel, stride, groups=cin), _conv_bn_hardswish(cin, cout))


class PicoDetStyle(nn.Module):
    """PicoDet's shape, small, as paddle2onnx exports it: an LCNet-style backbone (depthwise 3x3 and
    5x5 + pointwise, every HardSwish written as Add/Clip/Mul/Div), a PAN-style neck (1x1 laterals, the
    coarser map upsampled and concatenated with the finer, a depthwise-separable block after each
    join) and a GFL-style head per level: class scores and box-side distributions (4 x 8 bins)."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = _conv_bn_hardswish(3, 16, 3, 2)
        self.c2 = nn.Sequential(_depthwise_separable(16, 32, 2), _depthwise_separable(32, 32))
        self.c3 = nn.Sequential(_depthwise_separable(32, 64, 2), _depthwise_separable(64, 64))
        self.c4 = nn.Sequential(_depthwise_separable(64, 128, 2, 5), _depthwise_separable(128, 128, 1, 5))
        self.c5 = nn.Sequential(_depthwise_separable(128, 256, 2, 5), _depthwise_separable(256, 256, 1, 5))
        self.laterals = nn.ModuleList(_conv_bn_hardswish(c, width) for c in (64, 128, 256))
        self.top_down = nn.ModuleList(_depthwise_separable(2 * width, width, 1, 5) for _ in range(2))
        self.bottom_up = nn.ModuleList(_depthwise_separable(width, width, 2, 5) for _ in range(2))
        self.joins = nn.ModuleList(_depthwise_separable(2 * width, width, 1, 5) for _ in range(2))
        self.heads = nn.ModuleList(nn.Sequential(_depthwise_separable(width, width, 1, 5), nn.Conv2d(width, classes + 32, 1))
                                   for _ in range(3))

    def forward(self, x):
        c3 = self.c3(self.c2(self.stem(x)))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        l3, l4, l5 = (lateral(c) for lateral, c in zip(self.laterals, (c3, c4, c5)))
        up = nn.functional.interpolate
        p4 = self.top_down[0](torch.cat((up(l5, scale_factor=2.0, mode="nearest"), l4), 1))
        p3 = self.top_down[1](torch.cat((up(p4, scale_factor=2.0, mode="nearest"), l3), 1))
        n4 = self.joins[0](torch.cat((self.bottom_up[0](p3), p4), 1))
        n5 = self.joins[1](torch.cat((self.bottom_up[1](n4), l5), 1))
        return tuple(head(p) for head, p in zip(self.heads, (p3, n4, n5)))



class _Bottleneck(nn.Module):
    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_act(channels, channels, 3, act=act), _conv_bn_act(channels, channels, 3, act=act))

    def forward(self, x):
        return x + self.convs(x)


class _C2f(nn.Module):
    """YOLOv8's C2f: a 1x1 Conv split in two halves, bottlenecks chained on the second, every
    intermediate concatenated into a last 1x1 Conv."""

    def __init__(self, cin: int, cout: int, blocks: int = 1, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.half = cout // 2
        self.enter = _conv_bn_act(cin, 2 * self.half, act=act)
        self.blocks = nn.ModuleList(_Bottleneck(self.half, act) for _ in range(blocks))
        self.leave = _conv_bn_act((2 + blocks) * self.half, cout, act=act)

    def forward(self, x):
        parts = list(self.enter(x).split(self.half, 1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return self.leave(torch.cat(parts, 1))


class _SPPF(nn.Module):
    """YOLOv5/v8's spatial pyramid pooling: three chained 5x5 max pools, concatenated."""

    def __init__(self, channels: int, act: type[nn.Module]):
        super().__init__()
        self.enter = _conv_bn_act(channels, channels // 2, act=act)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.leave = _conv_bn_act(2 * channels, channels, act=act)

    def forward(self, x):
        x = self.enter(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.leave(torch.cat((x, y1, y2, self.pool(y2)), 1))


class YOLOStyle(nn.Module):
    """YOLOv8's shape, small: a CSP backbone of C2f blocks and an SPPF, a PAN neck (upsampled and
    concatenated top-down, strided Convs bottom-up), and per level a head of box-side distributions
    (4 x 16 bins) and class scores. Every activation is `act`: SiLU, which torch exports as Sigmoid
    and Mul, or Mish (YOLOv4's), exported as Softplus, Tanh and Mul."""

    def __init__(self, classes: int = 10, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        def conv(cin, cout, kernel=1, stride=1):
            return _conv_bn_act(cin, cout, kernel, stride, act)

        def c2f(cin, cout, blocks=1):
            return _C2f(cin, cout, blocks, act)

        self.stem = conv(3, 16, 3, 2)
        self.c2 = nn.Sequential(conv(16, 32, 3, 2), c2f(32, 32))
        self.c3 = nn.Sequential(conv(32, 64, 3, 2), c2f(64, 64, 2))
        self.c4 = nn.Sequential(conv(64, 128, 3, 2), c2f(128, 128, 2))
        self.c5 = nn.Sequential(conv(128, 256, 3, 2), c2f(256, 256), _SPPF(256, act))
        self.top4, self.top3 = c2f(256 + 128, 128), c2f(128 + 64, 64)
        self.down3, self.out4 = conv(64, 64, 3, 2), c2f(64 + 128, 128)
        self.down4, self.out5 = conv(128, 128, 3, 2), c2f(128 + 256, 256)
        self.boxes = nn.ModuleList(nn.Sequential(conv(c, 64, 3), conv(64, 64, 3), nn.Conv2d(64, 4 * 16, 1)) for c in (64, 128, 256))
        self.scores = nn.ModuleList(nn.Sequential(conv(c, 64, 3), conv(64, 64, 3), nn.Conv2d(64, classes, 1)) for c in (64, 128, 256))
        # PyTorch's default init shrinks each Conv's output variance about threefold: after 40 Convs
        # the heads' outputs would be their biases, whatever the image. He init keeps the signal.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x):
        c3 = self.c3(self.c2(self.stem(x)))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        up = nn.functional.interpolate
        t4 = self.top4(torch.cat((up(c5, scale_factor=2.0, mode="nearest"), c4), 1))
        p3 = self.top3(torch.cat((up(t4, scale_factor=2.0, mode="nearest"), c3), 1))
        p4 = self.out4(torch.cat((self.down3(p3), t4), 1))
        p5 = self.out5(torch.cat((self.down4(p4), c5), 1))
        return tuple(torch.cat((box(p), score(p)), 1) for box, score, p in zip(self.boxes, self.scores, (p3, p4, p5)))


class _Excite(nn.Module):
    """Squeeze-excite with its own activations: the pooled map through a 1x1 bottleneck gates the map's channels."""

    def __init__(self, channels: int, squeezed: int, inner: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), inner(),
                                     nn.Conv2d(squeezed, channels, 1), gate())

    def forward(self, x):
        return x * self.squeeze(x)


class _MBConv(nn.Module):
    """EfficientNet's inverted residual: 1x1 expand, depthwise kxk, squeeze-excite gated by a Sigmoid
    (SiLU inside), 1x1 project; the input added back where the shape allows."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        layers = [_conv_bn_act(cin, mid)] if expand != 1 else []
        layers += [_conv_bn_act(mid, mid, kernel, stride, groups=mid), _Excite(mid, max(8, cin // 4), nn.SiLU, nn.Sigmoid),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNetStyle(nn.Module):
    """EfficientNet-B0's shape: MBConv stages with SiLU (`x * Sigmoid(x)` in ONNX) and squeeze-excite
    everywhere, a 1x1 Conv to 1280 features before the pooling."""

    BATCHNORM_FROM_INPUTS = True
    PLAN = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
            (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]  # expand, channels, repeats, first stride, kernel

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, channels = [_conv_bn_act(3, 32, 3, 2)], 32
        for expand, cout, repeats, stride, kernel in self.PLAN:
            for i in range(repeats):
                layers.append(_MBConv(channels, cout, expand, kernel, stride if i == 0 else 1))
                channels = cout
        self.features = nn.Sequential(*layers, _conv_bn_act(channels, 1280))
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class MobileNetV3Style(nn.Module):
    """MobileNetV3-Large's shape: inverted residuals with ReLU early and HardSwish (one ONNX op) late,
    squeeze-excite gated by HardSigmoid in some blocks, a HardSwish head."""

    BATCHNORM_FROM_INPUTS = True
    PLAN = [(3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
            (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
            (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
            (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
            (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1)]
    # kernel, expanded channels, out channels, squeeze-excite, HardSwish (else ReLU), stride

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, channels = [_conv_bn_act(3, 16, 3, 2, nn.Hardswish)], 16
        for kernel, mid, cout, excite, hardswish, stride in self.PLAN:
            act = nn.Hardswish if hardswish else nn.ReLU
            block = [_conv_bn_act(channels, mid, act=act)] if mid != channels else []
            block.append(_conv_bn_act(mid, mid, kernel, stride, act, groups=mid))
            if excite:
                block.append(_Excite(mid, mid // 4, nn.ReLU, nn.Hardsigmoid))
            block += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            layers.append(_Residual(nn.Sequential(*block)) if stride == 1 and channels == cout else nn.Sequential(*block))
            channels = cout
        self.features = nn.Sequential(*layers, _conv_bn_act(channels, 960, act=nn.Hardswish))
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class _Residual(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.project = nn.Linear(4 * channels, channels)
        self.layer_scale = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x):
        y = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        y = self.project(self.act(self.expand(y))) * self.layer_scale
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStyle(nn.Module):
    """A ConvNeXt's shape, narrowed: a 4x4 patchify stem, blocks of depthwise 7x7, LayerNorm over
    channels (channels-last, as ConvNeXt writes it), a 4x MLP with GELU in its Erf form, layer scale."""

    def __init__(self, num_classes: int = 1000, dims: tuple[int, ...] = (48, 96, 192, 384),
                 depths: tuple[int, ...] = (2, 2, 4, 2)):
        super().__init__()
        layers = [nn.Conv2d(3, dims[0], 4, 4)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                layers.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
            layers += [_ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dims[-1])
        self.classifier = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.classifier(self.norm(self.features(x).mean((2, 3))))


# name -> (constructor, input shape at batch 1)
ZOO = {
    "resnet18": (lambda: ResNet18(), (1, 3, 224, 224)),
    "small_cnn": (lambda: SmallResidualCNN(), (1, 3, 32, 32)),
    "mobilenet": (lambda: MobileNetStyle(), (1, 3, 224, 224)),
    "lcnet": (lambda: LCNetStyle(), (1, 3, 224, 224)),
    "transformer_block": (lambda: TransformerBlock(), (1, 16, 128)),
    "tiny_vit": (lambda: TinyViT(), (1, 3, 32, 32)),
    "rtdetr": (lambda: RTDETRStyle(), (1, 3, 64, 64)),
    "feature_pyramid": (lambda: FeaturePyramidStyle(), (1, 3, 64, 64)),
    "shuffle_detector": (lambda: ShuffleDetectorStyle(), (1, 3, 64, 64)),
    "text_detector": (lambda: TextDetectorNeckStyle(), (1, 3, 64, 64)),
    "picodet": (lambda: PicoDetStyle(), (1, 3, 320, 320)),
    "yolo": (lambda: YOLOStyle(), (1, 3, 320, 320)),
    "yolo_mish": (lambda: YOLOStyle(act=nn.Mish), (1, 3, 320, 320)),
    "efficientnet": (lambda: EfficientNetStyle(), (1, 3, 224, 224)),
    "mobilenetv3": (lambda: MobileNetV3Style(), (1, 3, 224, 224)),
    "convnext": (lambda: ConvNeXtStyle(), (1, 3, 224, 224)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo model in eval mode with deterministic weights and non-trivial BatchNorm statistics."""
    constructor, shape = ZOO[name]
    torch.manual_seed(seed)
    model = constructor()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    if getattr(model, "BATCHNORM_FROM_INPUTS", False):
        _batchnorm_from_inputs(model, shape, seed)
    return model.eval()


def _batchnorm_from_inputs(model: nn.Module, shape: tuple[int, ...], seed: int, batches: int = 4) -> None:
    """Each BatchNorm's statistics measured on random inputs, as training leaves them. Set at random,
    a deep network's signal fades (PyTorch's default Conv init shrinks it about threefold a layer: a
    MobileNetV3's logits do not depend on the image at all) or, with He init, grows out of any range a
    trained model has; normalized, each channel enters the next layer near unit variance."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, *shape[1:], generator=generator))
    for norm in norms:
        norm.momentum = 0.1


def input_shape(name: str, batch: int = 1) -> tuple[int, ...]:
    shape = ZOO[name][1]
    return (batch, *shape[1:])


def export_zoo(name: str, path: str | Path, *, batch: int = 1, dynamic_batch: bool = False, seed: int = 0) -> Path:
    model = build(name, seed)
    example = torch.randn(*input_shape(name, batch))
    return export_onnx(model, example, path, dynamic_batch=dynamic_batch)


# ---------------------------------------------------------------------------------------------
# RT-DETR's shape, small: CNN backbone -> hybrid encoder (AIFI + CCFM) -> query selection ->
# transformer decoder with iterative box refinement -> labels / boxes / scores, as RT-DETR's deploy
# model exports them. _Attention is plain multi-head (explicit Linear + MatMul, so every projection
# is a quantizable Linear/MatMul), where RT-DETR's decoder uses deformable attention.


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return _conv_bn_act(cin, cout, kernel, stride, nn.ReLU)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, key, value):
        b, nq, d = query.shape
        nk, h = key.shape[1], self.heads
        q = self.q_proj(query).reshape(b, nq, h, d // h).transpose(1, 2)
        k = self.k_proj(key).reshape(b, nk, h, d // h).transpose(1, 2)
        v = self.v_proj(value).reshape(b, nk, h, d // h).transpose(1, 2)
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        return self.out_proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, nq, d))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int, layers: int):
        super().__init__()
        sizes = [dim] + [hidden] * (layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class _EncoderLayer(nn.Module):
    """AIFI: self-attention over the coarsest level's tokens, with fixed 2-D sine positions."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = _Attention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = _MLP(dim, dim * 2, dim, 2)

    def forward(self, x, pos):
        x = self.norm1(x + self.attn(x + pos, x + pos, x))
        return self.norm2(x + self.ffn(x))


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn, self.cross_attn = _Attention(dim, heads), _Attention(dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = _MLP(dim, dim * 2, dim, 2)

    def forward(self, target, query_pos, memory, memory_pos):
        q = target + query_pos
        target = self.norm1(target + self.self_attn(q, q, target))
        target = self.norm2(target + self.cross_attn(target + query_pos, memory + memory_pos, memory))
        return self.norm3(target + self.ffn(target))


def _sine_positions(height: int, width: int, dim: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_x, out_y = xs.reshape(-1, 1) * omega, ys.reshape(-1, 1) * omega
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)[None]


def _inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class RTDETRStyle(nn.Module):
    """A small RT-DETR: outputs `labels` [N, Q] (int64), `boxes` [N, Q, 4] (xyxy, normalized to the
    image) and `scores` [N, Q], the top Q (class, query) pairs by sigmoid score.

    `forward_train` returns what the losses need: per decoder layer and for the selected encoder
    proposals, class logits [N, Q, C] and boxes [N, Q, 4] (cxcywh, normalized).
    """

    output_names = ("labels", "boxes", "scores")

    def __init__(self, num_classes: int = 3, image: int = 64, dim: int = 64, queries: int = 10, decoder_layers: int = 2,
                 heads: int = 4):
        super().__init__()
        self.num_classes, self.queries = num_classes, queries
        self.stem = nn.Sequential(_conv_bn(3, 16, 3, 2), _conv_bn(16, 32, 3, 2))
        self.stage3, self.stage4, self.stage5 = _conv_bn(32, 64, 3, 2), _conv_bn(64, 96, 3, 2), _conv_bn(96, 128, 3, 2)
        self.input_proj = nn.ModuleList(_conv_bn(c, dim, 1) for c in (64, 96, 128))
        self.aifi = _EncoderLayer(dim, heads)
        self.lateral = nn.ModuleList(_conv_bn(dim, dim, 1) for _ in range(2))
        self.fpn = nn.ModuleList(_conv_bn(2 * dim, dim) for _ in range(2))
        self.downsample = nn.ModuleList(_conv_bn(dim, dim, 3, 2) for _ in range(2))
        self.pan = nn.ModuleList(_conv_bn(2 * dim, dim) for _ in range(2))
        self.enc_output = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.enc_score_head = nn.Linear(dim, num_classes)
        self.enc_bbox_head = _MLP(dim, dim, 4, 3)
        self.query_pos_head = _MLP(4, dim * 2, dim, 2)
        self.decoder = nn.ModuleList(_DecoderLayer(dim, heads) for _ in range(decoder_layers))
        self.dec_score_head = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(decoder_layers))
        self.dec_bbox_head = nn.ModuleList(_MLP(dim, dim, 4, 3) for _ in range(decoder_layers))
        sizes = [image // 8, image // 16, image // 32]
        self.register_buffer("aifi_pos", _sine_positions(sizes[2], sizes[2], dim), persistent=False)
        self.register_buffer("memory_pos", torch.cat([_sine_positions(s, s, dim) for s in sizes], dim=1), persistent=False)
        anchors = []
        for level, size in enumerate(sizes):
            ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            centers = torch.stack([(xs.reshape(-1) + 0.5) / size, (ys.reshape(-1) + 0.5) / size], dim=1)
            anchors.append(torch.cat([centers, torch.full_like(centers, 0.1 * 2.0**level)], dim=1))
        self.register_buffer("anchors", _inverse_sigmoid(torch.cat(anchors)), persistent=False)
        nn.init.constant_(self.enc_score_head.bias, -4.0)  # a prior of few objects, as RT-DETR initializes
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, -4.0)

    def _encode(self, x):
        c3 = self.stage3(self.stem(x))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        s3, s4, s5 = (proj(c) for proj, c in zip(self.input_proj, (c3, c4, c5)))
        b, d, h, w = s5.shape
        s5 = self.aifi(s5.flatten(2).transpose(1, 2), self.aifi_pos).transpose(1, 2).reshape(b, d, h, w)
        # CCFM: top-down, then bottom-up fusion across the three scales.
        l5 = self.lateral[0](s5)
        f4 = self.fpn[0](torch.cat([nn.functional.interpolate(l5, scale_factor=2.0, mode="nearest"), s4], dim=1))
        l4 = self.lateral[1](f4)
        p3 = self.fpn[1](torch.cat([nn.functional.interpolate(l4, scale_factor=2.0, mode="nearest"), s3], dim=1))
        p4 = self.pan[0](torch.cat([self.downsample[0](p3), l4], dim=1))
        p5 = self.pan[1](torch.cat([self.downsample[1](p4), l5], dim=1))
        return torch.cat([p.flatten(2).transpose(1, 2) for p in (p3, p4, p5)], dim=1)

    def forward_train(self, x):
        memory = self._encode(x)
        output_memory = self.enc_output(memory)
        enc_logits = self.enc_score_head(output_memory)
        enc_boxes_unact = self.enc_bbox_head(output_memory) + self.anchors
        # Query selection: the Q tokens the encoder scores highest seed the decoder.
        top = torch.topk(enc_logits.max(dim=-1).values, self.queries, dim=1).indices
        enc_top_logits = torch.gather(enc_logits, 1, top[..., None].expand(-1, -1, self.num_classes))
        ref_unact = torch.gather(enc_boxes_unact, 1, top[..., None].expand(-1, -1, 4))
        target = torch.gather(output_memory, 1, top[..., None].expand(-1, -1, output_memory.shape[-1])).detach()
        reference = ref_unact.sigmoid().detach()
        logits, boxes = [], []
        for layer, score_head, bbox_head in zip(self.decoder, self.dec_score_head, self.dec_bbox_head):
            target = layer(target, self.query_pos_head(reference), memory, self.memory_pos)
            refined = (bbox_head(target) + _inverse_sigmoid(reference)).sigmoid()
            logits.append(score_head(target))
            boxes.append(refined)
            reference = refined.detach()
        return {"logits": logits, "boxes": boxes, "enc_logits": enc_top_logits, "enc_boxes": ref_unact.sigmoid()}

    def forward(self, x):
        out = self.forward_train(x)
        logits, boxes = out["logits"][-1], out["boxes"][-1]
        scores = logits.sigmoid().flatten(1)
        top_scores, index = torch.topk(scores, self.queries, dim=1)
        labels = index % self.num_classes
        query = torch.div(index, self.num_classes, rounding_mode="floor")
        cxcywh = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))
        cx, cy, w, h = cxcywh.unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return labels, xyxy, top_scores


def with_constant_node_weights(source: str | Path, path: str | Path) -> Path:
    """A copy of an ONNX model with every initializer stored as a Constant node instead, the form
    some exporters (older paddle2onnx) write: the same graph and numbers, no initializers."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    graph = model.graph
    constants = [helper.make_node("Constant", [], [tensor.name], name=f"{tensor.name}_Constant", value=tensor)
                 for tensor in graph.initializer]
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    nodes = constants + list(graph.node)
    del graph.initializer[:], graph.node[:], graph.input[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    onnx.save(model, str(path))
    return Path(path)
