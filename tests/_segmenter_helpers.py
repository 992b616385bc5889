"""A second segmenter, unlike the text/paper one (`_text_map_helpers.TextOrPaper`, the DB-style
detector read per pixel): three classes (paper, a line of letters, a line of digits), a
depthwise-separable encoder with a dilated block, bilinear upsampling and a softmax head, trained
here for about two minutes on the zoo's pages (`text_pages(kinds=True)`) and cached by content.
The default check of its output is the mIoU of its label maps (issue 36); it was built after that
floor was set, to try it on a model it was not set on (bench/default_checks.py --only segmenter3).
`PageTextDetector`, the same network with a sigmoid map, trained as the DB-style detector is, does
the same for the text-regions floor (`--only detector2`).
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import torch
from torch import nn

from _frontends_helpers import cached_training, reset_weights
from _text_map_helpers import _train as train_map
from _text_map_helpers import text_pages


class PageSegmenter(nn.Module):
    """[N, 3, H, W] page -> [N, 3, H, W] class probabilities (H, W multiples of 4)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, stride=2, padding=1)
        self.depthwise1 = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.pointwise1 = nn.Conv2d(24, 48, 1)
        self.depthwise2 = nn.Conv2d(48, 48, 3, stride=2, padding=1, groups=48)
        self.pointwise2 = nn.Conv2d(48, 64, 1)
        self.depthwise3 = nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=64)
        self.pointwise3 = nn.Conv2d(64, 64, 1)
        self.fuse = nn.Conv2d(64 + 48, 48, 3, padding=1)
        self.head = nn.Conv2d(48, classes, 1)
        self.relu = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def features(self, x):
        half = self.relu(self.pointwise1(self.relu(self.depthwise1(self.relu(self.stem(x))))))
        quarter = self.relu(self.pointwise2(self.relu(self.depthwise2(half))))
        return half, quarter

    def forward(self, x):
        half, quarter = self.features(x)
        context = self.relu(self.pointwise3(self.relu(self.depthwise3(quarter))))
        fused = self.relu(self.fuse(torch.cat([self.up(context), half], 1)))
        return torch.softmax(self.up(self.head(fused)), dim=1)


class PageTextDetector(PageSegmenter):
    """The same network with a one-channel sigmoid head: a text detector's probability map,
    [N, 1, H, W], unlike the DB-style one of `_text_map_helpers` (no skip at full resolution,
    depthwise-separable, bilinear upsampling)."""

    def __init__(self):
        super().__init__(classes=1)

    def forward(self, x):
        half, quarter = self.features(x)
        context = self.relu(self.pointwise3(self.relu(self.depthwise3(quarter))))
        fused = self.relu(self.fuse(torch.cat([self.up(context), half], 1)))
        return torch.sigmoid(self.up(self.head(fused)))


# The text detector's trainer with another loss, not one trainer for both: each model's cache key
# holds its trainer's source, and a shared one would retrain (and re-key) the committed detector.
# (Comments inside the function would re-key this one: keep them above it.)
def _train(model: nn.Module, pages: np.ndarray, labels: np.ndarray, steps: int, seed: int) -> nn.Module:
    reset_weights(model, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(pages), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.nll_loss(torch.log(model(x[index]) + 1e-7), y[index]).backward()
        optimizer.step()
    return model.eval()


def trained_segmenter(steps: int = 900, seed: int = 0) -> nn.Module:
    pages, masks = text_pages(512, seed=41, kinds=True)
    labels = masks[:, 0].astype(np.int64)
    return cached_training(PageSegmenter(), (inspect.getsource(PageSegmenter), inspect.getsource(_train),
                                              repr((steps, seed, torch.__version__)), pages.tobytes(), labels.tobytes()),
                           lambda: _train(PageSegmenter(), pages, labels, steps, seed))


def trained_text_detector(steps: int = 900, seed: int = 0) -> nn.Module:
    pages, masks = text_pages(512, seed=41)
    return cached_training(PageTextDetector(), (inspect.getsource(PageTextDetector), inspect.getsource(PageSegmenter),
                                                 inspect.getsource(train_map), repr((steps, seed, torch.__version__)),
                                                 pages.tobytes(), masks.tobytes()),
                           lambda: train_map(PageTextDetector(), pages, masks, steps, seed))


def with_outlier_channel(model: PageSegmenter, factor: float, pages: np.ndarray) -> PageSegmenter:
    """A copy of `model` computing the same maps, whose second pointwise activation has one channel
    `factor` times its size: the channel active at the most pixels of `pages`. Its only reader is a
    depthwise Conv, whose filter on that channel undoes the factor."""
    planted = copy.deepcopy(model)
    with torch.no_grad():
        _, quarter = model.features(torch.from_numpy(pages))
        channel = int((quarter > 0).float().mean(dim=(0, 2, 3)).argmax())
        planted.pointwise2.weight[channel] *= factor
        planted.pointwise2.bias[channel] *= factor
        planted.depthwise3.weight[channel] /= factor
    return planted.eval()
