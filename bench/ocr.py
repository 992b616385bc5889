"""PP-OCRv5 pages and the detector's text-map measure for the placement benchmark. The recognizer's
lines, preprocessing, CTC decoding and character error rate are tao_qc.testing.corpus's (the
same code the tests and the accuracy benchmark read text with).

Pages: text lines of ../shared/models/ppocrv5/lines pasted in rows on white 640x640 pages, BGR,
`(pixel / 255 - 0.5) / 0.5`, as PaddleOCR's detector takes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAGE = 640  # pages are PAGE x PAGE (the detector takes multiples of 32)
# DBNet's usual threshold on the text probability map.
TEXT_THRESHOLD = 0.3


def normalize(bgr: np.ndarray) -> np.ndarray:
    """HWC uint8 BGR -> CHW float32, (x / 255 - 0.5) / 0.5."""
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def pages(folder: Path, count: int, seed: int = 0) -> np.ndarray:
    """[count, 3, 640, 640]: text lines pasted in rows on white pages, as the detector sees documents."""
    from PIL import Image

    from tao_qc.testing.corpus import text_lines

    rng = np.random.default_rng(seed)
    lines = text_lines(folder).files
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
