"""PP-OCRv5 data and metrics for the placement benchmark: text lines and pages built from
../shared/models/ppocrv5/lines, the recognizer's character error rate, the detector's text map.

Preprocessing follows PaddleOCR's recognizer: BGR, height 48, width by aspect ratio (at most
320), `(pixel / 255 - 0.5) / 0.5`, right-padded with zeros to 320. Decoding is greedy CTC over the
model's `character` metadata: index 0 the blank, then the listed characters, a space last.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 48, 320
PAGE = 640  # pages are PAGE x PAGE (the detector takes multiples of 32)
# DBNet's usual threshold on the text probability map.
TEXT_THRESHOLD = 0.3


def labelled_lines(folder: Path) -> list[tuple[Path, str]]:
    with open(folder / "labels.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(folder / row["file"], row["text"]) for row in rows]


def normalize(bgr: np.ndarray) -> np.ndarray:
    """HWC uint8 BGR -> CHW float32, (x / 255 - 0.5) / 0.5."""
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def line_batch(paths: list[Path]) -> np.ndarray:
    """[N, 3, 48, 320]: each line resized to height 48 keeping its aspect (width at most 320), BGR,
    normalized, zero-padded on the right."""
    from PIL import Image

    batch = np.zeros((len(paths), 3, HEIGHT, WIDTH), np.float32)
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        width = min(WIDTH, max(1, math.ceil(HEIGHT * image.width / image.height)))
        resized = np.asarray(image.resize((width, HEIGHT), Image.BILINEAR))[:, :, ::-1]
        batch[i, :, :, :width] = normalize(resized)
    return batch


def characters(model_path: Path) -> list[str]:
    """The recognizer's classes: the CTC blank, its `character` metadata list, a space."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    listed = next(p.value for p in model.metadata_props if p.key == "character").split("\n")
    return ["", *listed, " "]


def decode(probabilities: np.ndarray, classes: list[str]) -> list[str]:
    """Greedy CTC: the best class per step, repeats merged, blanks dropped."""
    texts = []
    for steps in probabilities.argmax(axis=-1):
        kept = [index for position, index in enumerate(steps)
                if index != 0 and (position == 0 or index != steps[position - 1])]
        texts.append("".join(classes[index] for index in kept))
    return texts


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def character_error_rate(predicted: list[str], truth: list[str]) -> float:
    """Edit distance over all lines / characters of the truth."""
    return sum(edit_distance(p, t) for p, t in zip(predicted, truth)) / max(1, sum(len(t) for t in truth))


def pages(folder: Path, count: int, seed: int = 0) -> np.ndarray:
    """[count, 3, 640, 640]: text lines pasted in rows on white pages, as the detector sees documents."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = [path for path, _ in labelled_lines(folder)]
    result = np.zeros((count, 3, PAGE, PAGE), np.float32)
    for index in range(count):
        page = Image.new("RGB", (PAGE, PAGE), (255, 255, 255))
        y = int(rng.integers(10, 30))
        while True:
            line = Image.open(lines[int(rng.integers(len(lines)))]).convert("RGB")
            scale = float(rng.uniform(0.6, 1.2))
            line = line.resize((max(1, int(line.width * scale)), max(1, int(line.height * scale))), Image.BILINEAR)
            if line.width > PAGE - 20:
                line = line.crop((0, 0, PAGE - 20, line.height))
            if y + line.height > PAGE - 10:
                break
            page.paste(line, (int(rng.integers(10, PAGE - line.width - 9)), y))
            y += line.height + int(rng.integers(4, 24))
        result[index] = normalize(np.asarray(page)[:, :, ::-1])
    return result


def text_map_agreement(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union of the text pixels (probability above TEXT_THRESHOLD) of two maps."""
    a, b = predicted > TEXT_THRESHOLD, reference > TEXT_THRESHOLD
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
