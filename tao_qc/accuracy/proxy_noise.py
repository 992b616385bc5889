"""How much a proxy check's value moves with the samples drawn: what tells fallback that keeping
more nodes float has stopped moving the proxy it chases.

A default check that is a proxy (`Check.proxy_for`: the output cosine, top-1 agreement per
position) says nothing of the task by itself; where no set of float nodes within
`max_float_fraction` makes it pass, keeping nodes float only buys a proxy's value, at a cost in
speed. Fallback then keeps the fewest ranked nodes whose value is within the noise of what the
most nodes it may keep reach (`tao_qc.accuracy.search`), and none where that itself is within the
noise of the model with every node quantized.

The noise is the standard deviation of the smallest margin of the failing proxy checks over
bootstrap resamples of the data set's samples, from each sample's share of the check (a cosine's
dot product and energies, a sample's agreeing positions): the value's spread had the user brought
other samples of the same kind. Each figure is summed over samples in float64 before dividing, as
the check itself is (`tao_qc.evaluate.measures.output_cosine`), so a resample's value is the
check's value on that resample exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tao_qc.evaluate.measures import _flat, _rows, class_scores_axis, sample_slices
from tao_qc.evaluate.results import Check

RESAMPLES = 200
# A gain of two standard deviations or less is not told apart from the samples drawn (about 95%
# of resamples of one model land within it).
WIDTH = 2.0


def proxy_noise(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], checks: list[Check]) -> float:
    """The standard deviation, over bootstrap resamples of the samples, of the smallest margin of the
    failing checks over their floors, where every failing check is a proxy with a share per sample;
    0.0 otherwise (every check passes, or one that fails is the task's own measure: fallback then
    chases it as it is)."""
    failing = [check for check in checks if not check.passed]
    if not failing or not all(check.default and check.proxy_for and check.metric in _SHARES for check in failing):
        return 0.0
    samples = next(iter(reference.values())).shape[0]
    if samples < 2:
        return 0.0
    draws = np.random.default_rng(0).integers(0, samples, size=(RESAMPLES, samples))
    weights = np.stack([np.bincount(row, minlength=samples) for row in draws]).astype(np.float64)
    margins = np.full(RESAMPLES, np.inf)
    for check in failing:
        shares = _SHARES[check.metric](reference[check.output], candidate[check.output])
        values = _VALUE[check.metric](weights @ shares)
        margins = np.minimum(margins, values - check.threshold)
    return float(np.std(margins))


def _cosine_shares(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per sample: the dot product and both energies, [samples, 3]."""
    ref_rows, cand_rows = _rows(reference), _rows(candidate)
    shares = np.empty((ref_rows.shape[0], 3))
    for part in sample_slices(*ref_rows.shape):
        r, c = _flat(ref_rows[part], cand_rows[part])
        with np.errstate(over="ignore", invalid="ignore"):
            shares[part] = np.stack([np.einsum("ij,ij->i", r, c), np.einsum("ij,ij->i", r, r),
                                     np.einsum("ij,ij->i", c, c)], axis=1)
    return shares


def _cosine_values(sums: np.ndarray) -> np.ndarray:
    norms = np.sqrt(sums[:, 1]) * np.sqrt(sums[:, 2])
    both_zero = (sums[:, 1] == 0) & (sums[:, 2] == 0)
    return np.where(norms > 0, sums[:, 0] / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))


def _position_shares(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per sample: its positions whose top class is FP32's, and its positions, [samples, 2]."""
    axis = class_scores_axis(reference)
    agree = reference.argmax(axis=axis) == np.nan_to_num(candidate, nan=-np.inf).argmax(axis=axis)
    rows = agree.reshape(agree.shape[0], -1)
    return np.stack([rows.sum(axis=1), np.full(rows.shape[0], rows.shape[1])], axis=1).astype(np.float64)


def _position_values(sums: np.ndarray) -> np.ndarray:
    return np.where(sums[:, 1] > 0, sums[:, 0] / np.maximum(sums[:, 1], 1.0), 1.0)


_SHARES = {"cosine": _cosine_shares, "position_top1_agreement": _position_shares}
_VALUE = {"cosine": _cosine_values, "position_top1_agreement": _position_values}
