"""Realistic data for the real third-party models in `../shared/models`, and their task metrics.

The corpus tests, `bench/accuracy.py` and `bench/placement.py` run these models the way their own
clients do: photos resized and normalized as each detector was trained, text lines preprocessed as
PaddleOCR's recognizer expects and decoded with the character list the model carries in its
metadata, pages of text composed from those lines for the text detector. Random inputs say little
about a quantized model's accuracy; these say what a user would see.

Nothing here is needed to use tao-qc; it is the project's own yardstick.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.data import InputInfo, open_inputs
from tao_qc.errors import InputError
from tao_qc.evaluate.detection import RANK_FLOOR, Detections, batched_nms, image_input
from tao_qc.spec import CalibrationSpec

REPO = Path(__file__).resolve().parents[2]

# PaddleOCR recognizer input: height 48, width by aspect ratio, padded on the right to the batch width.
REC_HEIGHT = 48
REC_WIDTH = 320
# PaddleOCR's DBNet takes heights and widths that are multiples of 32.
DET_MULTIPLE = 32


def shared_models_dir() -> Path:
    """`../shared/models` beside the repository (`TAO_QC_SHARED_MODELS` overrides)."""
    return Path(os.environ.get("TAO_QC_SHARED_MODELS", REPO.parent / "shared" / "models"))


def _folder(name: str) -> Path:
    folder = shared_models_dir() / name
    if not folder.is_dir():
        raise InputError(f"{folder} not found (the shared models; set TAO_QC_SHARED_MODELS)")
    return folder


# ---------------------------------------------------------------------------------------------
# Text lines: the PP-OCRv5 recognizer


@dataclass(frozen=True)
class TextLines:
    """Rendered text lines with their known text, in file order."""

    files: list[Path]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def split(self, first: int) -> tuple[TextLines, TextLines]:
        return (TextLines(self.files[:first], self.texts[:first]), TextLines(self.files[first:], self.texts[first:]))


def text_lines(folder: str | Path | None = None) -> TextLines:
    """The lines of `ppocrv5/lines` (`labels.tsv`: file, text)."""
    folder = Path(folder) if folder else _folder("ppocrv5/lines")
    files, texts = [], []
    rows = (folder / "labels.tsv").read_text(encoding="utf-8").splitlines()
    for row in rows[1:]:
        if not row.strip():
            continue
        name, _, text = row.partition("\t")
        files.append(folder / name)
        texts.append(text)
    return TextLines(files, texts)


def _bgr(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1]


def recognizer_input(files: Sequence[Path], width: int = REC_WIDTH) -> np.ndarray:
    """`x` float32[N, 3, 48, width]: each line resized to height 48 keeping its aspect ratio (at most
    `width` wide), BGR, `(pixel/255 - 0.5)/0.5`, zero-padded on the right (PaddleOCR's preprocessing)."""
    from PIL import Image

    batch = np.zeros((len(files), 3, REC_HEIGHT, width), dtype=np.float32)
    for index, path in enumerate(files):
        with Image.open(path) as image:
            image = image.convert("RGB")
            resized = min(width, max(1, int(np.ceil(REC_HEIGHT * image.width / image.height))))
            pixels = np.asarray(image.resize((resized, REC_HEIGHT), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
        batch[index, :, :, :resized] = ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return batch


def characters_from_metadata(model: Any) -> list[str]:
    """The recognizer's classes from its `character` metadata: index 0 is the CTC blank, then one
    character per line of the metadata, then a space (PaddleOCR's `use_space_char`)."""
    props = {p.key: p.value for p in model.metadata_props}
    if "character" not in props:
        raise InputError("the model has no 'character' metadata: an OCR client cannot decode its outputs")
    return ["<blank>", *props["character"].splitlines(), " "]


def ctc_greedy_decode(probabilities: np.ndarray, characters: Sequence[str]) -> list[str]:
    """Best path per line: argmax per step, repeats merged, blanks (class 0) dropped."""
    best = probabilities.argmax(axis=2)
    texts = []
    for row in best:
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        texts.append("".join(characters[i] for i in row[keep & (row != 0)]))
    return texts


def character_error_rate(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """Edit distance over all lines / characters of the truth (rapidfuzz's Levenshtein)."""
    from rapidfuzz.distance import Levenshtein

    edits = sum(Levenshtein.distance(p, t) for p, t in zip(predicted, truth, strict=True))
    return edits / max(1, sum(len(t) for t in truth))


# ---------------------------------------------------------------------------------------------
# Pages of text: the PP-OCRv5 detector


def text_pages(lines: TextLines, *, count: int, size: tuple[int, int] = (640, 640), lines_per_page: int = 8,
               seed: int = 0) -> np.ndarray:
    """`x` float32[count, 3, H, W]: white pages with the rendered lines pasted at random positions,
    normalized like the recognizer's input (BGR, `(pixel/255 - 0.5)/0.5`). H and W must be
    multiples of 32 (DBNet's constraint)."""
    from PIL import Image

    height, width = size
    if height % DET_MULTIPLE or width % DET_MULTIPLE:
        raise InputError(f"page size {height}x{width}: the text detector needs multiples of {DET_MULTIPLE}")
    rng = np.random.default_rng(seed)
    pages = np.empty((count, 3, height, width), dtype=np.float32)
    for page_index in range(count):
        page = Image.new("RGB", (width, height), (255, 255, 255))
        top = int(rng.integers(8, 40))
        for _ in range(lines_per_page):
            path = lines.files[int(rng.integers(len(lines)))]
            with Image.open(path) as line:
                line = line.convert("RGB")
                if line.width > width - 16:
                    line = line.resize((width - 16, max(1, line.height * (width - 16) // line.width)))
                if top + line.height > height - 8:
                    break
                left = int(rng.integers(8, max(9, width - line.width - 8)))
                page.paste(line, (left, top))
                top += line.height + int(rng.integers(6, 30))
        pixels = np.asarray(page, dtype=np.float32)[:, :, ::-1]
        pages[page_index] = ((pixels / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return pages


# ---------------------------------------------------------------------------------------------
# Photos: the detectors and classifiers


@dataclass(frozen=True)
class PhotoPreprocessing:
    """How a detector's photos become its input (SPEC.md's calibration fields)."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: str
    folder: str


# From ../shared/models/README.md.
PHOTO_MODELS = {
    "ultraface_rfb320": PhotoPreprocessing((240, 320), (127.0,), (128.0,), "rgb", "ultraface_rfb320"),
    "yunet_n_320": PhotoPreprocessing((320, 320), (0.0,), (1.0,), "bgr", "yunet_n_320"),
    "fastestdet": PhotoPreprocessing((352, 352), (0.0,), (255.0,), "rgb", "fastestdet"),
}


def photos(model: str) -> np.ndarray:
    """The photos beside a shared detector, preprocessed as it was trained: float32[N, 3, H, W]."""
    how = PHOTO_MODELS[model]
    calibration = CalibrationSpec(data=str(_folder(how.folder)), size=list(how.size), mean=list(how.mean),
                                  std=list(how.std), color=how.color)
    info = InputInfo("input", (1, 3, *how.size), np.dtype(np.float32))
    batches = open_inputs(calibration.data, [info], calibration=calibration, batch_size=1, key="photos")
    return np.concatenate([batch[info.name] for batch in batches])


def photo_sets(model: str, work: Path) -> dict[str, np.ndarray]:
    """Every photo in ../shared/models (the wolves, the three photos of images/, the four faces),
    preprocessed for the shared detector `model`, in three sets of the same scenes changed as a
    camera would change them, so that no image of the other two was calibrated on: `calibration`,
    as they are (8); `held`, flipped and cropped to their middle 80% (16); `test`, darkened x0.6,
    brightened x1.3, and flipped and darkened (24). The changed photos are written under `work`."""
    from PIL import Image, ImageEnhance, ImageOps

    shared = shared_models_dir()
    sources = [shared / "fastestdet" / "wolves.jpg", *sorted(_folder("images").iterdir()),
               *sorted(_folder("ultraface_rfb320").iterdir())]

    def cropped(image: Any) -> Any:
        w, h = image.size
        return image.crop((w // 10, h // 10, w - w // 10, h - h // 10))

    def lit(factor: float) -> Any:
        return lambda image: ImageEnhance.Brightness(image).enhance(factor)

    changes = {"calibration": [lambda image: image], "held": [ImageOps.mirror, cropped],
               "test": [lit(0.6), lit(1.3), lambda image: lit(0.6)(ImageOps.mirror(image))]}
    how = PHOTO_MODELS[model]
    info = InputInfo("input", (1, 3, *how.size), np.dtype(np.float32))
    sets = {}
    for name, ways in changes.items():
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        for index, change in enumerate(ways):
            for path in sources:
                with Image.open(path) as image:
                    change(image.convert("RGB")).save(folder / f"{index}-{path.stem}.png")
        calibration = CalibrationSpec(data=str(folder), size=list(how.size), mean=list(how.mean), std=list(how.std),
                                      color=how.color)
        sets[name] = np.concatenate([batch[info.name] for batch in
                                     open_inputs(calibration.data, [info], calibration=calibration, batch_size=1)])
    return sets


YUNET_STRIDES = (8, 16, 32)
YUNET_NMS_IOU = 0.3  # YuNet's own post-processing (OpenCV's FaceDetectorYN default)


def decode_yunet(outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> list[Any]:
    """YuNet's faces (`compare.decoder: tao_qc.corpus:decode_yunet`), as its own post-processing
    reads its 12 outputs: per stride s, one prior per cell of the input's s-grid; score
    sqrt(cls x obj) (both already sigmoid), box centre (cell + offset) x s, size exp(log-size) x s;
    NMS at IoU 0.3. Boxes in input pixels, label 0 (face)."""
    _, images = image_input(inputs)
    batch, width = images.shape[0], images.shape[-1]
    faces = []
    for index in range(batch):
        boxes, scores = [], []
        for stride in YUNET_STRIDES:
            columns = width // stride
            cls, obj = (np.clip(outputs[f"{kind}_{stride}"][index, :, 0], 0, 1) for kind in ("cls", "obj"))
            offsets = outputs[f"bbox_{stride}"][index]
            rows, cols = np.divmod(np.arange(len(cls)), columns)
            cx, cy = (cols + offsets[:, 0]) * stride, (rows + offsets[:, 1]) * stride
            w, h = np.exp(offsets[:, 2]) * stride, np.exp(offsets[:, 3]) * stride
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
            scores.append(np.sqrt(cls * obj))
        box, score = np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32)
        kept = score >= RANK_FLOOR
        box, score = box[kept], score[kept]
        labels = np.zeros(len(score), np.int64)
        order = batched_nms(box, score, labels, YUNET_NMS_IOU)
        faces.append(Detections(box[order], score[order], labels[order]))
    return faces


# ---------------------------------------------------------------------------------------------
# A task metric for accuracy-driven quantization (`accuracy.metric: tao_qc.corpus:text_accuracy`)


@functools.lru_cache(maxsize=1)
def _recognizer_characters() -> tuple[str, ...]:
    import onnx

    model = onnx.load(str(shared_models_dir() / "ppocrv5_rec.onnx"), load_external_data=False)
    return tuple(characters_from_metadata(model))


def text_accuracy(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], labels: Any) -> float:
    """1 - character error rate of the recognizer's greedy CTC reading against the lines' text
    (`labels`: the texts, one per sample): the metric an OCR user judges a recognizer by."""
    [probabilities] = candidate.values()
    texts = ctc_greedy_decode(probabilities, _recognizer_characters())
    return 1.0 - character_error_rate(texts, [str(t) for t in labels])
