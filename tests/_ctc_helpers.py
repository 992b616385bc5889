"""A second CTC recognizer, unlike PP-OCRv5's in every way that matters to its default check: a
small convolutional reader of digit strings (scikit-learn's bundled 8x8 digits set side by side
with random gaps), 11 classes with the blank LAST (TensorFlow's convention, where PP-OCRv5 has
18,385 classes with the blank first), 40 steps, trained here with CTC loss for about a minute and
cached by content (`_frontends_helpers.cached_state`).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from _frontends_helpers import cached_training, digits_split, reset_weights

BLANK = 10  # the last class
HEIGHT, WIDTH = 8, 80
MIN_DIGITS, MAX_DIGITS = 3, 7


class DigitStringRecognizer(nn.Module):
    """Conv stem over a 1x8x80 strip, the height folded into channels, a 1-D head over 40 steps:
    per-step class logits [N, 11, 40] (cross-entropy's layout); `PerStepSoftmax` deploys it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.relu = nn.ReLU()
        self.sequence = nn.Conv1d(64 * 4, 128, 3, padding=1)
        self.classes = nn.Conv1d(128, BLANK + 1, 1)

    def forward(self, x):
        x = self.relu(self.conv3(self.relu(self.conv2(self.relu(self.conv1(x))))))  # [N, 64, 4, 40]
        return self.classes(self.relu(self.sequence(x.flatten(1, 2))))


class PerStepSoftmax(nn.Module):
    """[N, T, C] probabilities, as a deployed CTC recognizer outputs them."""

    def __init__(self, reader: nn.Module):
        super().__init__()
        self.reader = reader

    def forward(self, x):
        return torch.softmax(self.reader(x), dim=1).transpose(1, 2)


def digit_strings(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """`count` strips [count, 1, 8, 80] of 3-7 digits each, 0-3 pixels apart, and their digits."""
    rng = np.random.default_rng(seed)
    strips = np.zeros((count, 1, HEIGHT, WIDTH), np.float32)
    texts = []
    for row in range(count):
        length = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        pick = rng.integers(0, len(labels), length)
        x = int(rng.integers(0, 5))
        for index in pick:
            strips[row, 0, :, x:x + 8] = images[index, 0]
            x += 8 + int(rng.integers(0, 4))
        texts.append([int(labels[i]) for i in pick])
    return strips, texts


def _train(model: nn.Module, strips: np.ndarray, texts: list[list[int]], steps: int, seed: int,
           blank: int = BLANK) -> nn.Module:
    reset_weights(model, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss = nn.CTCLoss(blank=blank, zero_infinity=True)
    x = torch.from_numpy(strips)
    targets = [torch.tensor(t) for t in texts]
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (64,), generator=generator)
        log_probs = torch.log_softmax(model(x[index]), dim=1).permute(2, 0, 1)  # [T, N, C]
        chosen = [targets[i] for i in index.tolist()]
        optimizer.zero_grad()
        loss(log_probs, torch.cat(chosen), torch.full((64,), log_probs.shape[0]),
             torch.tensor([len(t) for t in chosen])).backward()
        optimizer.step()
    return model.eval()


def trained_recognizer(steps: int = 1500, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The recognizer trained on strips of the training digits, and strips of the held-out digits
    (`calibration`, `held`, `test`: disjoint draws) with their texts (`test_texts`)."""
    x_train, y_train, x_test, y_test = digits_split()
    strips, texts = digit_strings(x_train, y_train, 4000, seed=11)
    model = cached_training(DigitStringRecognizer(), (inspect.getsource(DigitStringRecognizer), inspect.getsource(_train),
                                                      repr((steps, seed, torch.__version__)), strips.tobytes(), repr(texts)),
                            lambda: _train(DigitStringRecognizer(), strips, texts, steps, seed))
    calibration, _ = digit_strings(x_train, y_train, 64, seed=12)
    held, _ = digit_strings(x_test, y_test, 128, seed=13)
    test, test_texts = digit_strings(x_test, y_test, 200, seed=14)
    return model, {"calibration": calibration, "held": held, "test": test, "test_texts": test_texts}


# A third recognizer, unlike both others: words of letters and digits in Pillow's own font on 24x160
# lines, 63 classes with the blank FIRST (PaddleOCR's and PyTorch's convention), a depthwise-separable
# backbone three times as wide (bench/default_checks.py measures the default checks' floors on it).
WORD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
WORD_BLANK = 0
WORD_HEIGHT, WORD_WIDTH = 24, 160


class WordRecognizer(nn.Module):
    """[N, 1, 24, 160] line -> per-step class logits [N, 63, 40] (class 0 the blank)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 48, 3, padding=1)
        self.depthwise1 = nn.Conv2d(48, 48, 3, stride=2, padding=1, groups=48)
        self.pointwise1 = nn.Conv2d(48, 96, 1)
        self.depthwise2 = nn.Conv2d(96, 96, 3, stride=2, padding=1, groups=96)
        self.pointwise2 = nn.Conv2d(96, 128, 1)
        self.relu = nn.ReLU()
        self.sequence = nn.Conv1d(128 * 6, 192, 3, padding=1)
        self.classes = nn.Conv1d(192, len(WORD_ALPHABET) + 1, 1)

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(self.pointwise1(self.depthwise1(x)))
        x = self.relu(self.pointwise2(self.depthwise2(x)))  # [N, 128, 6, 40]
        return self.classes(self.relu(self.sequence(x.flatten(1, 2))))


def word_lines(count: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """`count` lines [count, 1, 24, 160] in [-1, 1] (dark text, light paper, a little noise), each a
    word of 3-10 characters, and its classes (1.. for WORD_ALPHABET)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    lines = np.empty((count, 1, WORD_HEIGHT, WORD_WIDTH), np.float32)
    texts = []
    for row in range(count):
        paper = int(rng.integers(180, 256))
        line = Image.new("L", (WORD_WIDTH, WORD_HEIGHT), paper)
        font = ImageFont.load_default(size=int(rng.integers(13, 18)))
        picks = rng.integers(0, len(WORD_ALPHABET), int(rng.integers(3, 11)))
        ImageDraw.Draw(line).text((int(rng.integers(1, 12)), int(rng.integers(1, 5))),
                                  "".join(WORD_ALPHABET[i] for i in picks), fill=int(rng.integers(0, paper - 110)), font=font)
        pixels = np.asarray(line, np.float32) + rng.normal(0, 4, (WORD_HEIGHT, WORD_WIDTH))
        lines[row, 0] = np.clip(pixels / 127.5 - 1.0, -1, 1)
        texts.append([int(i) + 1 for i in picks])
    return lines, texts


def trained_word_recognizer(steps: int = 2500, seed: int = 0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The word recognizer trained on rendered lines, and disjoint draws of others (`calibration`,
    `held`, `test`) with the test lines' texts (`test_texts`)."""
    lines, texts = word_lines(6000, seed=41)
    model = cached_training(WordRecognizer(), (inspect.getsource(WordRecognizer), inspect.getsource(_train),
                                               repr((steps, seed, torch.__version__)), lines.tobytes(), repr(texts)),
                            lambda: _train(WordRecognizer(), lines, texts, steps, seed, blank=WORD_BLANK))
    calibration, _ = word_lines(64, seed=42)
    held, _ = word_lines(128, seed=43)
    test, test_texts = word_lines(400, seed=44)
    return model, {"calibration": calibration, "held": held, "test": test, "test_texts": test_texts}
