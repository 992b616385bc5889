"""Data files as PyTorch model inputs, through `tao_qc.data.open_inputs`.

A PyTorch model does not declare its inputs the way an ONNX graph does, so their shapes come from
the data: the arrays' own shapes for `.npy`/`.npz`, `calibration.size` (or `--input-shape`) and
the colour mode for an image folder, and `--input-shape` for `random`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tao_qc.data import IMAGE_SUFFIXES, InputBatches, InputInfo, open_inputs
from tao_qc.errors import InputError
from tao_qc.spec import CalibrationSpec

ALL_SAMPLES = 1 << 62


def parse_shape(text: str | None, flag: str = "--input-shape") -> tuple[int, ...] | None:
    """`1,3,32,32` (or `3,32,32`, batch 1 implied) as a tuple."""
    if not text:
        return None
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not a shape (give e.g. 1,3,224,224)") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"{flag}: {text!r} is not a shape of positive sizes (give e.g. 1,3,224,224)")
    return dims if len(dims) >= 4 or len(dims) <= 1 else (1, *dims)


def _npz_arrays(path: Path, key: str) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    try:
        with zipfile.ZipFile(path) as archive:
            found = []
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(stream)
                found.append((member[:-4], tuple(shape), np.dtype(dtype)))
            return found
    except (zipfile.BadZipFile, ValueError, OSError):
        raise InputError(f"{key}: {path} is not a valid .npz archive") from None


def infer_inputs(
    data: str | Path,
    *,
    calibration: CalibrationSpec | None = None,
    input_shape: Sequence[int] | None = None,
    exclude: Sequence[str] = ("labels",),
    key: str = "quantize.calibration.data",
) -> list[InputInfo]:
    """The inputs a PyTorch model takes, as the data describes them (batch dimension left open)."""
    calibration = calibration or CalibrationSpec()
    if str(data) == "random":
        if not input_shape:
            raise InputError(f"{key}: 'random' data for a PyTorch model needs its input shape (give --input-shape 1,3,224,224)")
        return [InputInfo("input", (None, *input_shape[1:]), np.dtype("float32"))]
    path = Path(data)
    if not path.exists():
        raise InputError(f"{key}: {path} does not exist")
    if path.is_dir():
        channels = 1 if calibration.color == "gray" else 3
        size = calibration.size or (list(input_shape[-2:]) if input_shape and calibration.layout == "NCHW" else
                                    list(input_shape[1:3]) if input_shape else None)
        if not size:
            raise InputError(f"{key}: an image folder for a PyTorch model needs the image size (set quantize.calibration.size: [H, W] or give --input-shape)")
        body = (channels, *size) if calibration.layout == "NCHW" else (*size, channels)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            raise InputError(f"{key}: {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [InputInfo("input", (None, *body), np.dtype("float32"))]
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{key}: {path} is not a readable .npy array: {exc}") from None
        return [InputInfo("input", (None, *array.shape[1:]), array.dtype)]
    if path.suffix == ".npz":
        arrays = [a for a in _npz_arrays(path, key) if a[0] not in exclude]
        if not arrays:
            raise InputError(f"{key}: {path} holds no input arrays")
        return [InputInfo(name, (None, *shape[1:]), dtype) for name, shape, dtype in arrays]
    raise InputError(f"{key}: {path.name} is not a .npz, .npy, image folder or 'random'")


def open_pytorch_inputs(
    data: str | Path | None,
    *,
    calibration: CalibrationSpec | None = None,
    input_shape: Sequence[int] | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    key: str = "quantize.calibration.data",
) -> InputBatches:
    """Batches (dicts of input name to array, in the model's positional order) for a PyTorch model."""
    if data is None:
        return open_inputs(None, [], key=key)  # raises the one-line "no data" error with the valid forms
    inputs = infer_inputs(data, calibration=calibration, input_shape=input_shape, key=key)
    return open_inputs(data, inputs, calibration=calibration, max_samples=max_samples, batch_size=batch_size, key=key)
