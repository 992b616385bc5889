"""A second text detector of probability maps, unlike PP-OCRv5's: a small DB-style network (conv
encoder, nearest upsampling, skip concatenations, a sigmoid map) trained here for about a minute on
pages of random words in Pillow's own font, and cached by content (`_frontends_helpers.cached_state`).

`with_outlier_channel` gives it rare outlier activations, one way a detector's max ranges lose text
that clipped ranges keep (issue 36's held-out detector did; why, we could not see): one channel of
one activation carrying rare values far above the rest. The change is exact in FP32 (a ReLU channel
scaled up, its consumer's weights scaled down by the same factor), so FP32's maps are the same,
and only the calibration's ranges see it: max ranges spend the whole grid on a few pixels and
lose the other channels' detail, ranges clipped at a percentile keep it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _frontends_helpers import cached_training, reset_weights

PAGE = 96
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


class TextMapDetector(nn.Module):
    """[N, 3, H, W] page -> [N, 1, H, W] text probability (H, W multiples of 4)."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(3, 16, 3, padding=1)
        self.enc2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.enc3 = nn.Conv2d(32, 48, 3, stride=2, padding=1)
        self.context = nn.Conv2d(48, 48, 3, padding=2, dilation=2)
        self.dec2 = nn.Conv2d(48 + 32, 32, 3, padding=1)
        self.dec1 = nn.Conv2d(32 + 16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 1, 1)
        self.relu = nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        e1 = self.relu(self.enc1(x))
        e2 = self.relu(self.enc2(e1))
        e3 = self.relu(self.context(self.relu(self.enc3(e2))))
        d2 = self.relu(self.dec2(torch.cat([self.up(e3), e2], 1)))
        d1 = self.relu(self.dec1(torch.cat([self.up(d2), e1], 1)))
        return torch.sigmoid(self.head(d1))


def text_pages(count: int, seed: int, size: int = PAGE, kinds: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`count` pages float32[count, 3, size, size] in [-1, 1] (dark words on light paper, a little
    noise) and their text masks float32[count, 1, size, size] (each line's inked box). `kinds`: each
    line all letters (1 in the mask) or all digits (2); without it the pages are what they always
    were (the same draws), so the detector's training data keeps its key."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    pages = np.empty((count, 3, size, size), np.float32)
    masks = np.zeros((count, 1, size, size), np.float32)
    for index in range(count):
        paper = int(rng.integers(190, 256))
        page = Image.new("L", (size, size), paper)
        draw = ImageDraw.Draw(page)
        top = int(rng.integers(2, 12))
        while True:
            font = ImageFont.load_default(size=int(rng.integers(9, 17)))
            kind = 1 + int(rng.integers(0, 2)) if kinds else 1
            alphabet = LETTERS if not kinds else LETTERS[-10:] if kind == 2 else LETTERS[:-10]
            words = [''.join(rng.choice(alphabet, int(rng.integers(2, 8)))) for _ in range(int(rng.integers(1, 4)))]
            line = " ".join(words)
            left = int(rng.integers(2, size // 3))
            x0, y0, x1, y1 = draw.textbbox((left, top), line, font=font)
            if y1 > size - 2:
                break
            draw.text((left, top), line, fill=int(rng.integers(0, paper - 120)), font=font)
            masks[index, 0, y0:y1, x0:min(x1, size)] = kind
            top = y1 + int(rng.integers(6, 30))
        pixels = np.asarray(page, np.float32) + rng.normal(0, 4, (size, size))
        pages[index] = np.clip(pixels / 127.5 - 1.0, -1, 1)[None]
    return pages, masks


def _train(model: nn.Module, pages: np.ndarray, masks: np.ndarray, steps: int, seed: int) -> nn.Module:
    reset_weights(model, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(pages), torch.from_numpy(masks)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    return model.eval()


def trained_detector(steps: int = 700, seed: int = 0) -> nn.Module:
    pages, masks = text_pages(512, seed=21)
    return cached_training(TextMapDetector(), (inspect.getsource(TextMapDetector), inspect.getsource(_train),
                                                repr((steps, seed, torch.__version__)), pages.tobytes(), masks.tobytes()),
                           lambda: _train(TextMapDetector(), pages, masks, steps, seed))


def rarest_active_channel(activation: torch.Tensor) -> int:
    """The channel of a ReLU activation `[N, C, H, W]` positive at the fewest pixels, but at some."""
    active = (activation > 0).float().mean(dim=(0, 2, 3))
    return int(torch.where(active > 0, active, torch.inf).argmin())


def with_outlier_channel(model: TextMapDetector, factor: float, pages: np.ndarray) -> TextMapDetector:
    """A copy of `model` computing the same maps, whose `context` activation has one channel `factor`
    times its size: the channel active at the fewest pixels of `pages` (but at some), so that its
    values are rare outliers of the whole tensor."""
    import copy

    planted = copy.deepcopy(model)
    with torch.no_grad():
        x = torch.from_numpy(pages)
        e2 = model.relu(model.enc2(model.relu(model.enc1(x))))
        channel = rarest_active_channel(model.relu(model.context(model.relu(model.enc3(e2)))))
        # ReLU(k z) = k ReLU(z) for k > 0, and nearest upsampling and concatenation carry the scale
        # to dec2's input, whose weights on the channel undo it.
        planted.context.weight[channel] *= factor
        planted.context.bias[channel] *= factor
        planted.dec2.weight[:, channel] /= factor
    return planted.eval()


class TextOrPaper(nn.Module):
    """The zoo's text detector read as a two-class segmenter: per pixel, [paper, text]."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        text = self.detector(x)
        return torch.cat([1 - text, text], 1)


def with_outliers_everywhere(model: TextMapDetector, factor: float, pages: np.ndarray) -> TextMapDetector:
    """A copy of `model` computing the same maps, with the most active channel of three activations
    (each read by one Conv: enc3's, dec2's, dec1's) `factor` times its size: max ranges crush the
    rest of each, and no one node kept float brings the map back."""
    import copy

    planted = copy.deepcopy(model)
    with torch.no_grad():
        m, x = planted, torch.from_numpy(pages)
        e1 = m.relu(m.enc1(x))
        e2 = m.relu(m.enc2(e1))
        h3 = m.relu(m.enc3(e2))
        d2 = m.relu(m.dec2(torch.cat([m.up(m.relu(m.context(h3))), e2], 1)))
        d1 = m.relu(m.dec1(torch.cat([m.up(d2), e1], 1)))
        for producer, consumer, activation in ((m.enc3, m.context, h3), (m.dec2, m.dec1, d2), (m.dec1, m.head, d1)):
            channel = int((activation > 0).float().mean(dim=(0, 2, 3)).argmax())
            producer.weight[channel] *= factor
            producer.bias[channel] *= factor
            consumer.weight[:, channel] /= factor
    return planted.eval()


def compile_inputs(planted: Callable[[np.ndarray], nn.Module], folder: Path, name: str, output: str) -> Path:
    """The zoo's pages as a compile's data (`cal.npz`: 16 pages, `held.npz`: 16 others, input `x`) and
    `planted(calibration pages)`, a model made from them, as `folder/name.onnx` with a dynamic batch."""
    calibration, _ = text_pages(16, seed=31)
    held, _ = text_pages(16, seed=32)
    path = folder / f"{name}.onnx"
    torch.onnx.export(planted(calibration), torch.from_numpy(calibration[:1]), str(path), dynamo=False,
                      input_names=["x"], output_names=[output], dynamic_axes={"x": {0: "n"}, output: {0: "n"}})
    np.savez(folder / "cal.npz", x=calibration)
    np.savez(folder / "held.npz", x=held)
    return path
