"""Input data for calibration and comparison: `.npz`, `.npy`, a folder of images, or `random`.

Everything that can be checked without reading the data (input names, shapes, dtypes, sample counts)
is checked when the source is opened, so a mismatch is an error before calibration starts.
Batches are streamed: `.npy` files are memory-mapped and `.npz` members are read batch by batch from
the archive, so a large set never has to fit in memory at once.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.ir.shapes import resolve_shape
from tao_qc.spec import CalibrationSpec

log = logging.getLogger("tao_qc.data")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass(frozen=True)
class InputInfo:
    """One graph input: its name, shape (int, or a str/None for a dynamic dimension) and dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def fixed_batch(self) -> int | None:
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) and first > 0 else None

    def describe(self) -> str:
        dims = ",".join("?" if not isinstance(d, int) or d <= 0 else str(d) for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"


def model_inputs(model: Any, constants: Iterable[str] = ()) -> list[InputInfo]:
    """The real inputs of an ONNX model (old-IR models also list initializers as inputs; `constants`
    names more initializers, for a proto serialized without its weights)."""
    from onnx import helper

    graph = model.graph
    initializers = {init.name for init in graph.initializer} | set(constants)
    infos = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                dims.append(dim.dim_param or None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else np.dtype("float32")
        infos.append(InputInfo(value.name, tuple(dims), dtype))
    if not infos:
        raise InputError(f"model {getattr(model.graph, 'name', '')!r} has no inputs")
    return infos


# ---------------------------------------------------------------------------------------------
# Array sources: each yields arrays for one input, sample-major, in chunks.


class _ArraySource:
    """Sequential reader of one array's leading-axis slices."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _NpyArray(_ArraySource):
    def __init__(self, path: Path):
        self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        for start in range(0, limit, batch):
            yield np.ascontiguousarray(self.array[start : min(start + batch, limit)])


class _NpzMember(_ArraySource):
    """One array of an .npz, read from the zip stream a batch at a time.

    numpy's own NpzFile loads a whole member on access; reading the .npy header and then the data
    sequentially keeps memory at one batch.
    """

    def __init__(self, archive: Path, member: str):
        self.archive, self.member = archive, member
        with zipfile.ZipFile(archive) as zf, zf.open(member) as stream:
            shape, fortran, dtype = _read_npy_header(stream)
        if dtype.hasobject:
            raise InputError(f"{archive}: array '{member[:-4]}' holds Python objects (expected numbers)")
        self.shape, self.dtype, self.fortran = tuple(shape), np.dtype(dtype), fortran

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        if self.fortran:  # column-major data cannot be sliced by sample while streaming
            with np.load(self.archive, allow_pickle=False) as npz:
                whole = npz[self.member[:-4]]
            yield from (whole[s : min(s + batch, limit)] for s in range(0, limit, batch))
            return
        sample_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.archive) as zf, zf.open(self.member) as stream:
            _read_npy_header(stream)
            for start in range(0, limit, batch):
                count = min(batch, limit - start)
                raw = stream.read(count * sample_bytes)
                yield np.frombuffer(raw, dtype=self.dtype).reshape((count, *self.shape[1:]))


def _read_npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    return np.lib.format._read_array_header(stream, version)  # noqa: SLF001 - format 3.0 has no public reader


class _ImageFolder(_ArraySource):
    def __init__(self, files: list[Path], info: InputInfo, spec: CalibrationSpec, key: str):
        self.files, self.spec, self.key = files, spec, key
        layout = spec.layout
        shape = info.shape
        channel_axis = 1 if layout == "NCHW" else 3
        if len(shape) != 4:
            raise InputError(f"{key}: an image folder needs a 4-D image input, but {info.describe()} is not")
        channels = shape[channel_axis]
        if not isinstance(channels, int) or channels not in (1, 3):
            raise InputError(
                f"{key}: cannot tell the channel count of {info.describe()} with layout {layout} "
                "(set quantize.calibration.layout: NCHW or NHWC)"
            )
        spatial = [shape[2], shape[3]] if layout == "NCHW" else [shape[1], shape[2]]
        size = spec.size or spatial
        if not all(isinstance(d, int) and d > 0 for d in size):
            raise InputError(f"{key}: input {info.describe()} has a dynamic size; set quantize.calibration.size: [H, W]")
        self.height, self.width = int(size[0]), int(size[1])
        self.channels, self.layout = channels, layout
        self.color = spec.color if spec.color != "auto" else ("gray" if channels == 1 else "rgb")
        if (self.color == "gray") != (channels == 1):
            raise InputError(f"{key}: color '{self.color}' does not fit input {info.describe()} ({channels} channels)")
        self.mean = self._per_channel(spec.mean, "mean")
        self.std = self._per_channel(spec.std, "std")
        if np.any(self.std == 0):
            raise InputError("quantize.calibration.std: must not contain 0")
        body = (channels, self.height, self.width) if layout == "NCHW" else (self.height, self.width, channels)
        self.shape, self.dtype = (len(files), *body), np.dtype(np.float32)

    def _per_channel(self, values: Sequence[float], name: str) -> np.ndarray:
        if len(values) not in (1, self.channels):
            raise InputError(
                f"quantize.calibration.{name}: {len(values)} values for {self.channels} channels (give 1 or {self.channels})"
            )
        return np.asarray(values if len(values) == self.channels else list(values) * self.channels, dtype=np.float32)

    def load(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.color == "gray" else "RGB")
                image = image.resize((self.width, self.height), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{self.key}: cannot read image {path}: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.color == "bgr":
            pixels = pixels[:, :, ::-1]
        pixels = (pixels - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1) if self.layout == "NCHW" else pixels)

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        for start in range(0, limit, batch):
            yield np.stack([self.load(p) for p in self.files[start : min(start + batch, limit)]])


class _Window(_ArraySource):
    """Samples `start` onwards of another source, re-chunked to the batch asked for."""

    def __init__(self, source: _ArraySource, start: int):
        self.source, self.start = source, start
        self.shape, self.dtype = (source.shape[0] - start, *source.shape[1:]), source.dtype

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        seen = waiting = 0
        for chunk in self.source.chunks(batch, self.start + limit):
            skip = max(0, self.start - seen)
            seen += len(chunk)
            if skip < len(chunk):
                pending.append(chunk[skip:])
                waiting += len(chunk) - skip
            while waiting >= batch:
                joined = np.concatenate(pending)
                yield joined[:batch]
                pending, waiting = [joined[batch:]], waiting - batch
        if waiting:
            yield np.concatenate(pending)


class _RandomArray(_ArraySource):
    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, seed: int):
        self.shape, self.dtype, self.seed = shape, dtype, seed

    def chunks(self, batch: int, limit: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        for start in range(0, limit, batch):
            count = min(batch, limit - start)
            yield rng.standard_normal((count, *self.shape[1:])).astype(self.dtype)


# ---------------------------------------------------------------------------------------------


class InputBatches:
    """Re-iterable batches of model inputs: each item is `{input name: array}`."""

    def __init__(self, sources: dict[str, _ArraySource], num_samples: int, batch_size: int, description: str,
                 is_random: bool, key: str):
        self.sources = sources
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.is_random = is_random
        self.key = key
        self._description = description

    def describe(self) -> str:
        return f"{self._description}: {self.num_samples} samples in batches of {self.batch_size}"

    def __len__(self) -> int:
        """Number of batches."""
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        streams = {name: source.chunks(self.batch_size, self.num_samples) for name, source in self.sources.items()}
        while True:
            try:
                yield {name: next(stream) for name, stream in streams.items()}
            except StopIteration:
                return

    def first(self) -> dict[str, np.ndarray]:
        return next(iter(self))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        """One sample at a time (batch dimension kept, size 1)."""
        for batch in self:
            count = next(iter(batch.values())).shape[0]
            for index in range(count):
                yield {name: array[index : index + 1] for name, array in batch.items()}

    def hold_back(self, fraction: float) -> tuple["InputBatches", "InputBatches"]:
        """(the first samples, the last `fraction` of them): data to calibrate on and data to judge on."""
        held = max(1, int(round(self.num_samples * fraction)))
        kept = self.num_samples - held
        head = InputBatches(self.sources, kept, self.batch_size, self._description, self.is_random, self.key)
        tail = InputBatches({name: _Window(source, kept) for name, source in self.sources.items()}, held,
                            self.batch_size, f"{self._description} (last {held}, held back from calibration)",
                            self.is_random, self.key)
        return head, tail

    def validate(self) -> None:
        """Stream through the data once; NaN or Inf anywhere is an error naming the sample."""
        seen = 0
        for batch in self:
            for name, array in batch.items():
                if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                    bad = int(np.argwhere(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1))[0][0])
                    raise InputError(f"{self.key}: {self._description}: input '{name}' has NaN or Inf values (sample {seen + bad})")
            seen += next(iter(batch.values())).shape[0]


def _check_array(name: str, shape: tuple[int, ...], dtype: np.dtype, info: InputInfo, key: str, origin: str) -> None:
    expected_rank = len(info.shape)
    if dtype != info.dtype:
        raise InputError(
            f"{key}: {origin} array '{name}' is {dtype.name} but input {info.describe()} needs {info.dtype.name} "
            f"(convert it with .astype(np.{info.dtype.name}))"
        )
    if len(shape) != expected_rank:
        raise InputError(
            f"{key}: {origin} array '{name}' has shape {list(shape)} but input {info.describe()} needs "
            f"{expected_rank} dimensions, the first one counting samples"
        )
    for axis, (got, want) in enumerate(zip(shape[1:], info.shape[1:]), start=1):
        if isinstance(want, int) and want > 0 and got != want:
            raise InputError(
                f"{key}: {origin} array '{name}' has shape {list(shape)} but input {info.describe()} "
                f"needs size {want} on axis {axis}"
            )


def _open_arrays(path: Path, inputs: list[InputInfo], key: str) -> dict[str, _ArraySource]:
    names = [info.name for info in inputs]
    if path.suffix == ".npy":
        if len(inputs) != 1:
            raise InputError(f"{key}: a .npy file feeds one input, but the model has {len(inputs)} ({', '.join(names)}); use a .npz with arrays named by input")
        try:
            return {inputs[0].name: _NpyArray(path)}
        except ValueError as exc:
            raise InputError(f"{key}: {path} is not a readable .npy array: {exc}") from None
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
    except zipfile.BadZipFile:
        raise InputError(f"{key}: {path} is not a valid .npz archive") from None
    arrays = {m[:-4]: m for m in members}
    if len(inputs) == 1 and inputs[0].name not in arrays and list(arrays) == ["arr_0"]:
        arrays = {inputs[0].name: "arr_0.npy"}  # np.savez(path, x) names its one array arr_0
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(
            f"{key}: {path.name} has no array named {', '.join(repr(m) for m in missing)} "
            f"(arrays: {', '.join(arrays) or 'none'}; the model's inputs: {', '.join(names)})"
        )
    extra = [a for a in arrays if a not in names]
    if extra:
        log.warning("%s: arrays %s are not model inputs and are ignored", path.name, ", ".join(extra))
    try:
        return {name: _NpzMember(path, arrays[name]) for name in names}
    except ValueError as exc:
        raise InputError(f"{key}: {path} holds an unreadable array: {exc}") from None


def open_inputs(
    data: str | Path | None,
    inputs: list[InputInfo],
    *,
    calibration: CalibrationSpec | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    key: str = "quantize.calibration.data",
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> InputBatches:
    """Open `data` as batches fitting `inputs`; every mismatch is an `InputError` naming `key`.

    `shapes` (`{input: full shape}`, e.g. from `--input-shapes`) sizes `random` data where the model
    leaves dimensions open."""
    calibration = calibration or CalibrationSpec()
    max_samples = max_samples if max_samples is not None else calibration.max_samples
    batch_size = batch_size if batch_size is not None else calibration.batch_size
    if data is None:
        raise InputError(
            f"{key}: no data given (valid: a .npz named by input, a .npy for one input, an image folder, "
            "or 'random' to calibrate on noise)"
        )
    fixed = {info.fixed_batch for info in inputs}
    if len(fixed) == 1 and (only := fixed.pop()) is not None and only != batch_size:
        log.info("the model's batch size is fixed at %d: batches of %d samples", only, only)
        batch_size = only

    if str(data) == "random":
        log.warning(
            "%s: calibrating on RANDOM data: the quantization ranges, and any accuracy measured on this "
            "data, mean nothing for real inputs", key
        )
        sources: dict[str, _ArraySource] = {}
        for seed, info in enumerate(inputs):
            if info.dtype.kind != "f":
                raise InputError(f"{key}: random data can only feed float inputs, not {info.describe()}")
            dims = resolve_shape(info, shapes)[1:]
            sources[info.name] = _RandomArray((max_samples, *dims), info.dtype, seed)
        return InputBatches(sources, max_samples, batch_size, "random data", True, key)

    path = Path(data)
    if not path.exists():
        raise InputError(f"{key}: {path} does not exist")
    if path.is_dir():
        if len(inputs) != 1:
            raise InputError(f"{key}: an image folder feeds one input, but the model has {len(inputs)}")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{key}: {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        source = _ImageFolder(files[:max_samples], inputs[0], calibration, key)
        count = len(source.files)
        return InputBatches({inputs[0].name: source}, count, batch_size, f"{path} (images)", False, key)
    if path.suffix not in (".npz", ".npy"):
        raise InputError(f"{key}: {path.name} is not a .npz, .npy or image folder")

    sources = _open_arrays(path, inputs, key)
    counts = set()
    for info in inputs:
        source = sources[info.name]
        _check_array(info.name, source.shape, source.dtype, info, key, path.name)
        counts.add(source.shape[0])
    if len(counts) != 1:
        raise InputError(f"{key}: {path.name}: arrays hold different sample counts ({sorted(counts)})")
    available = counts.pop()
    if available == 0:
        raise InputError(f"{key}: {path.name} holds no samples")
    count = min(available, max_samples)
    fixed_batch = inputs[0].fixed_batch
    if fixed_batch and count % fixed_batch:
        count -= count % fixed_batch  # a fixed batch dimension cannot take a partial last batch
        if count == 0:
            raise InputError(f"{key}: {path.name} holds {available} samples but the model's batch is {fixed_batch}")
    return InputBatches(sources, count, batch_size, str(path), False, key)


def load_labels(path: str | Path, key: str = "quantize.compare.labels", *, others: bool = False) -> np.ndarray | None:
    """Integer class labels from a `.npy` (or a `.npz` with one array, or one named `labels`).

    `others`: labels of another kind (texts, boxes) are allowed, for a user's accuracy metric: then
    None is returned for them (they are no classes to count top-1 against)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{key}: {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                name = "labels" if "labels" in names else names[0] if len(names) == 1 else None
                if name is None:
                    raise InputError(f"{key}: {path.name} has several arrays and none named 'labels'")
                labels = npz[name]
        else:
            labels = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{key}: {path} is not a readable numpy file: {exc}") from None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)  # one-hot
    labels = labels.reshape(-1)
    if labels.dtype.kind not in "iu":
        if others:
            log.info("%s: %s labels are not class indices: no top-1 accuracy (the accuracy metric reads them)",
                     key, labels.dtype.name)
            return None
        raise InputError(f"{key}: labels must be integer class indices, got {labels.dtype.name}")
    return labels
