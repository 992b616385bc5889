"""The measures of a candidate's outputs against a reference's: cosine similarity over the data set
and per sample, element-wise errors and their histogram, top-1 agreement, and what kind of output
it is (pure functions of arrays).

What an output is (`output_kind`), read from FP32's values over the whole data set, decides the
measure its default check reads (`tao_qc.evaluate.checks`):
- `classifier`: `[N, C]`, C > 1 (logits or probabilities): top-1 agreement.
- `class_scores`: class probabilities at every position: `[N, T, C]` (a CTC recognizer's per-step
  softmax: where a blank class is found, `tao_qc.evaluate.ctc_reading` decodes it) or `[N, C, H, W]` (a segmenter's per-pixel softmax: its label maps are compared, `label_map_iou`), C >= 2, recognised by the values:
  every value in [0, 1] and each position's values summing to 1 over the class axis within
  `SUM_TOLERANCE` (or log-probabilities: every value <= 0, log-sum-exp 0). The class axis is the last
  one of a 3-D output and axis 1 of a 4-D one (NCHW), else the other of the two. Logits are not
  recognised (nothing in their values tells them from features): they keep the cosine.
- `probability_map`: `[N, 1, H, W]` with every value in [0, 1] and at least `SATURATED_FRACTION`
  of them within `SATURATED_MARGIN` of 0 or 1 (a sigmoid the model has decided at nearly every
  pixel, as a text detector's map: PP-OCRv5's detector has 99.5% of its pixels within 0.02 of 0 or
  1 on pages of text). A depth map or an image scaled to [0, 1] spreads its values over the range
  and stays `values`.
- `values`: everything else (boxes, features, regression): the cosine over the data set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tao_qc.errors import InputError
from tao_qc.evaluate import ctc_reading, text_regions
from tao_qc.evaluate.results import OutputMetrics

_HISTOGRAM_BINS = 24

# Softmax in fp32 sums to 1 within ~1e-6 even over PP-OCRv5's 18,000 classes; 1e-2 also accepts fp16
# outputs, and a regression output that sums to 1 within 1% at every position while every value lies
# in [0, 1] is a distribution in all but name.
SUM_TOLERANCE = 1e-2
SATURATED_MARGIN = 0.1
SATURATED_FRACTION = 0.9
# A probability map is read where the model decides: a pixel is "on" at probability >= 0.5, the
# point where either answer is as likely. (PP-OCR's DB post-processing binarizes at 0.3 before it
# grows boxes; on its saturated maps the two thresholds select all but the same pixels.)
MASK_THRESHOLD = 0.5


def _flat(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as float64 [samples, elements]; non-finite candidate values count as 0 (a NaN
    output is then far from a non-zero reference instead of poisoning the sum)."""
    samples = reference.shape[0] if reference.ndim else 1
    r = np.nan_to_num(reference.reshape(samples, -1).astype(np.float64))
    c = np.nan_to_num(candidate.reshape(samples, -1).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return r, c


def _cosine_rows(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    r_norm, c_norm = np.linalg.norm(r, axis=-1), np.linalg.norm(c, axis=-1)
    norms, dots = r_norm * c_norm, np.einsum("...i,...i->...", r, c)
    both_zero = (r_norm == 0) & (c_norm == 0)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))


def sample_slices(samples: int, row_elements: int) -> list[slice]:
    """Slices of the samples whose rows hold at most CHUNK_ELEMENTS values together: figures are
    summed a slice at a time in float64, never from a float64 copy of a whole output (a text
    recognizer's output on 64 lines is 47M values: 376 MB a copy)."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(i, i + step) for i in range(0, samples, step)]


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(array.shape[0] if array.ndim else 1, -1)


def output_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the output over the whole data set (all samples as one vector; 1 where
    both are all zero).

    Why not the mean of per-sample cosines: a cosine is blind to scale, so a sample whose output
    carries next to nothing (a detector's objectness map on a photo with no object at that stride:
    probabilities of 1e-5, logits near -11) would be held to the same relative precision as one with
    the signal. There INT8's ~2-3% relative error on deep features becomes a 25-30% relative error
    of the probabilities (exp amplifies it), and the sample's cosine drops to 0.97 while the boxes
    found are FP32's. Over the data set each sample weighs in by its share of the output's energy,
    as signal-to-quantization-noise ratios are measured; `per_sample_cosine` is still reported."""
    ref_rows, cand_rows = _rows(reference), _rows(candidate)
    dot = ref_energy = cand_energy = 0.0
    for part in sample_slices(*ref_rows.shape):
        r, c = _flat(ref_rows[part], cand_rows[part])
        with np.errstate(over="ignore", invalid="ignore"):  # an Inf reference element: its energy is Inf
            dot += float(np.einsum("ij,ij->", r, c))
            ref_energy += float(np.einsum("ij,ij->", r, r))
            cand_energy += float(np.einsum("ij,ij->", c, c))
    return cosine_from_sums(dot, ref_energy, cand_energy)


def cosine_from_sums(dot: float, energy_a: float, energy_b: float) -> float:
    """The cosine of two vectors from their dot product and squared norms (summed a slice at a
    time); 1 where both are all zero, as `output_cosine`."""
    norms = np.sqrt(energy_a) * np.sqrt(energy_b)
    return float(dot / norms) if norms > 0 else (1.0 if energy_a == 0 and energy_b == 0 else 0.0)


def per_sample_cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened output (1 where both are all zero)."""
    ref_rows, cand_rows = _rows(reference), _rows(candidate)
    return np.concatenate([_cosine_rows(*_flat(ref_rows[part], cand_rows[part]))
                           for part in sample_slices(*ref_rows.shape)] or [np.ones(0)])


def error_histogram(abs_error: np.ndarray, bins: int = _HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of |error| in log10-spaced bins (errors span magnitudes); exact zeros counted apart."""
    flat = abs_error[np.isfinite(abs_error)].ravel()
    zeros = int(np.count_nonzero(flat == 0))
    nonzero = flat[flat > 0]
    if nonzero.size == 0:
        return {"log10_edges": [], "counts": [], "zeros": zeros, "total": int(flat.size)}
    # The logs in the errors' own dtype (float32 from output_metrics: no float64 copy of a large
    # output's errors), and the edges from those same logs, so that the extremes fall inside.
    logs = np.log10(nonzero)
    low, high = float(logs.min()), float(logs.max())
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(logs, bins=bins, range=(low, high))
    return {"log10_edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "zeros": zeros, "total": int(flat.size)}


def guarded_relative_error(abs_error: np.ndarray, reference: np.ndarray, finite: np.ndarray,
                           floor: float | None = None) -> np.ndarray:
    """|candidate - reference| / max(|reference|, mean |reference| of the output).

    Where the reference is ~0 a plain relative error is an artifact: a post-ReLU zero or a sigmoid's
    1e-30 against a quantized 1e-3 read 1e+27 and made the mean of a whole output 6.6e+13 (1e+29 on
    YuNet). The floor is the output's own typical magnitude over the data set, so values at or above
    it get their true relative error and smaller ones are measured against what the output usually
    carries (all zero: against 1, i.e. the absolute error). `floor`: that mean, where `reference`
    is only a part of the output."""
    magnitude = np.abs(np.where(finite, reference, 0.0))
    if floor is None:
        floor = float(magnitude.mean()) if magnitude.size else 0.0
    return abs_error / np.maximum(magnitude, floor if floor > 0 else 1.0)


# The error figures are summed a slice of samples at a time, in float64, so that a large output
# (PP-OCRv5's recognizer: 72 lines x 40 steps x 18,385 classes, 53M values) needs a few float64
# slices and one float32 copy of its errors rather than a dozen float64 copies of the whole
# (4.7 GB of peak memory in compile before).
CHUNK_ELEMENTS = 1 << 22


def output_metrics(name: str, reference: np.ndarray, candidate: np.ndarray, *, labels: np.ndarray | None = None,
                   atol: float | None = None, rtol: float | None = None, classify: bool = True) -> OutputMetrics:
    """Error figures of `candidate` against `reference` (all samples stacked on axis 0); `classify`
    False: a 2-D output is not read as class scores (detection and dense tasks)."""
    if reference.shape != candidate.shape:
        raise InputError(f"output '{name}' has shape {list(candidate.shape)} in the candidate but {list(reference.shape)} in the reference")
    ref_rows, cand_rows = _rows(reference), _rows(candidate)
    samples = ref_rows.shape[0]
    chunks = sample_slices(*ref_rows.shape)
    size = ref_rows.size

    floor = sum(float(np.abs(np.nan_to_num(ref_rows[c].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)).sum())
                for c in chunks) / size if size else 0.0
    abs_errors = np.empty(ref_rows.shape, dtype=np.float32)  # for the 99th percentile and the histogram
    nonfinite = 0
    error_sum = rel_sum = dot = ref_energy = cand_energy = 0.0
    error_max = rel_max = 0.0
    within = 0
    cosines = []
    for rows in chunks:
        ref = ref_rows[rows].astype(np.float64)
        cand = cand_rows[rows].astype(np.float64)
        finite = np.isfinite(ref)
        nonfinite += int(np.count_nonzero(finite & ~np.isfinite(cand)))
        abs_error = np.abs(cand - ref)
        abs_error = np.where(finite, abs_error, 0.0)
        abs_error = np.where(np.isfinite(abs_error), abs_error, np.inf)
        abs_errors[rows] = abs_error
        rel_error = guarded_relative_error(abs_error, ref, finite, floor)
        if abs_error.size:
            error_sum += float(abs_error.sum())
            error_max = max(error_max, float(abs_error.max()))
            rel_sum += float(rel_error.sum())
            rel_max = max(rel_max, float(rel_error.max()))
        if atol is not None or rtol is not None:
            # numpy's allclose rule (|error| <= rtol * |reference|), not the guarded ratio: a tolerance the
            # user wrote means what it means in numpy.
            ok = (abs_error <= (atol or 0.0)) | (abs_error <= (rtol or 0.0) * np.abs(np.where(finite, ref, 0.0)))
            within += int(np.count_nonzero(ok))
        r, c = _flat(ref, cand)
        cosines.append(_cosine_rows(r, c))
        with np.errstate(over="ignore", invalid="ignore"):  # an Inf reference element: its energy is Inf, as before
            dot += float(np.einsum("ij,ij->", r, c))
            ref_energy += float(np.einsum("ij,ij->", r, r))
            cand_energy += float(np.einsum("ij,ij->", c, c))
    cosine = cosine_from_sums(dot, ref_energy, cand_energy)
    flat_abs = abs_errors.ravel()

    metrics = OutputMetrics(
        name=name,
        shape=list(reference.shape[1:]),
        max_abs_error=error_max if size else 0.0,
        mean_abs_error=error_sum / size if size else 0.0,
        p99_abs_error=_p99(flat_abs),
        max_rel_error=rel_max if size else 0.0,
        mean_rel_error=rel_sum / size if size else 0.0,
        cosine=cosine,
        min_cosine=float(np.concatenate(cosines).min()) if cosines else 1.0,
        nonfinite=nonfinite,
        error_histogram=error_histogram(flat_abs),
    )
    if atol is not None or rtol is not None:
        metrics.within_tolerance = within / size if size else 1.0
    kind, axis = output_kind(reference, classify=classify)
    metrics.kind, metrics.class_axis = kind, axis
    if kind == "class_scores":
        metrics.position_top1_agreement = position_top1_agreement(reference, candidate, axis)
        if reference.ndim == 4:  # a segmenter's per-pixel softmax: its label map is what is read
            metrics.label_map_iou, metrics.class_iou = label_map_iou(reference, candidate, axis)
        if axis == 2 and (blank := ctc_reading.blank_class(reference)) is not None:
            metrics.blank_class = blank
            metrics.sequence_agreement, metrics.characters_read = ctc_reading.sequence_agreement(reference, candidate, blank)
    elif kind == "probability_map":
        metrics.mask_iou = mask_iou(reference, candidate)
        found = text_regions.region_agreement(reference, candidate)
        metrics.region_agreement = found.h_mean
        metrics.regions = {"fp32": found.reference, "quantized": found.candidate, "matched": found.matched}
    if classify and is_classifier_output(reference):
        metrics.is_classifier = True
        ref_top = reference.argmax(axis=1)
        cand_top = np.nan_to_num(candidate, nan=-np.inf).argmax(axis=1)
        metrics.top1_agreement = float(np.mean(ref_top == cand_top))
        if labels is not None:
            if len(labels) != samples:
                raise InputError(f"--labels: {len(labels)} labels for {samples} compared samples (give one label per sample)")
            metrics.reference_top1 = float(np.mean(ref_top == labels))
            metrics.candidate_top1 = float(np.mean(cand_top == labels))
    return metrics


def _p99(values: np.ndarray) -> float:
    if not values.size:
        return 0.0
    with np.errstate(invalid="ignore"):  # an Inf error (NaN candidate) makes the interpolation NaN
        p99 = float(np.percentile(values, 99, method="higher"))
    return p99


def output_kind(reference: np.ndarray, *, classify: bool = True) -> tuple[str, int | None]:
    """What FP32's output `reference` (samples first) is, and its class axis (the module docstring
    gives the rules); `classify` False: a 2-D output is not read as class scores."""
    if is_classifier_output(reference):
        return ("classifier" if classify else "values"), None
    if not np.isfinite(reference).all():
        return "values", None
    axis = class_scores_axis(reference)
    if axis is not None:
        return "class_scores", axis
    if is_probability_map(reference):
        return "probability_map", None
    return "values", None


def class_scores_axis(reference: np.ndarray) -> int | None:
    """The axis over which every position of a 3-D or 4-D output holds class probabilities, or None."""
    order = {3: (2, 1), 4: (1, 3)}.get(reference.ndim, ())
    if not reference.size:
        return None
    low, high = float(reference.min()), float(reference.max())
    for axis in order:
        if reference.shape[axis] < 2:
            continue
        if low >= 0.0 and high <= 1.0 + SUM_TOLERANCE:
            totals = reference.sum(axis=axis, dtype=np.float64)  # summed in float64, no float64 copy of the whole
        elif high <= 0.0:  # log-probabilities (log_softmax, as CTC losses take them); exp of <= 0 cannot overflow
            totals = np.exp(reference).sum(axis=axis, dtype=np.float64)
        else:
            return None
        if float(np.abs(totals - 1.0).max()) <= SUM_TOLERANCE:
            return axis
    return None


def is_probability_map(reference: np.ndarray) -> bool:
    """`[N, 1, H, W]` of probabilities decided at nearly every pixel (see the module docstring)."""
    if reference.ndim != 4 or reference.shape[1] != 1 or reference.shape[2] < 2 or reference.shape[3] < 2:
        return False
    if float(reference.min()) < 0.0 or float(reference.max()) > 1.0:
        return False
    saturated = (reference <= SATURATED_MARGIN) | (reference >= 1.0 - SATURATED_MARGIN)
    return float(saturated.mean()) >= SATURATED_FRACTION


def position_top1_agreement(reference: np.ndarray, candidate: np.ndarray, axis: int) -> float:
    """The fraction of positions (every sample, step or pixel) whose argmax over `axis` agrees."""
    ref_top = reference.argmax(axis=axis)
    cand_top = np.nan_to_num(candidate, nan=-np.inf).argmax(axis=axis)
    return float(np.mean(ref_top == cand_top)) if ref_top.size else 1.0


def label_map_iou(reference: np.ndarray, candidate: np.ndarray, axis: int) -> tuple[float, dict[int, float]]:
    """The mean over classes of the IoU of the positions FP32's argmax over `axis` gives a class and
    those the candidate's gives it, each class's intersection and union summed over the data set
    (a segmenter's mIoU, FP32's label map taken as the truth); the classes are those FP32's maps
    hold. Also each class's IoU. 1 where there are no positions."""
    ref_top = reference.argmax(axis=axis)
    cand_top = np.nan_to_num(candidate, nan=-np.inf).argmax(axis=axis)
    ious = {}
    for label in np.unique(ref_top):
        ref_has, cand_has = ref_top == label, cand_top == label
        ious[int(label)] = float(np.count_nonzero(ref_has & cand_has) / np.count_nonzero(ref_has | cand_has))
    return (float(np.mean(list(ious.values()))) if ious else 1.0), ious


def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    """IoU over the whole data set of the pixels at or above `threshold` in both maps (1 where neither
    has any: the two agree that there is nothing)."""
    ref_on = reference >= threshold
    cand_on = np.nan_to_num(candidate, nan=0.0) >= threshold
    union = int(np.count_nonzero(ref_on | cand_on))
    return float(np.count_nonzero(ref_on & cand_on) / union) if union else 1.0


def is_classifier_output(array: np.ndarray) -> bool:
    """Logits or probabilities: `[N, C]` with more than one class."""
    return array.ndim == 2 and array.shape[1] > 1
