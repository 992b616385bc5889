"""What a CTC recognizer reads: its per-step class probabilities `[N, T, C]` decoded greedily (argmax
per step, repeats merged, blanks dropped), and how closely the quantized model's reading follows
FP32's (`sequence_agreement`: 1 - edit distance / length of FP32's reading, over the data set).

This is the task measure of a recognizer, not a proxy for it: where the text FP32 reads is the truth,
it is 1 - CER. Per-step top-1 agreement, which the default check read before, counts the blanks and
repeats that fill most steps and whose argmax flips without changing one character read.

Which class is the blank (`blank_class`): the class that is the argmax at the most steps over FP32's
outputs on the data set, taken as the blank where it is class 0 or the last class and holds at least
`MIN_BLANK_SHARE` of the steps, in an output of at most `MAX_STEPS` steps and at least `MIN_CLASSES`
classes. Why this rule rather than "class 0" alone: both conventions ship
(PaddleOCR and PyTorch's CTCLoss put the blank first, TensorFlow's ctc_loss and Keras's
ctc_batch_cost last), and the blank is what a CTC model emits between characters, so it is the
commonest argmax. Why the share: a per-step classifier with no blank has its commonest class near
its prior (a tenth for ten digit classes), and decoding it as CTC would merge the repeats it means.
"""

from __future__ import annotations

import numpy as np

# A CTC recognizer's steps are its line's width over its stride: 25-40 for CRNN and PP-OCR at 100-320
# pixels, a few hundred for the longest lines. An SSD-style detector's softmax over its anchors has the
# same signature (background, class 0, at most positions) over thousands of positions (UltraFace 4420,
# SSD300 8732): no text to read there. And a blank with one class is a yes/no per position (UltraFace's
# face/background), not an alphabet.
MAX_STEPS = 1024
MIN_CLASSES = 3
# The blank's share of the steps: 56% on PP-OCRv5's recognizer (64 lines of 40 steps), 86% on the
# zoo's digit-string recognizer (tests/_ctc_helpers.py, 200 strips of 40 steps); a per-step classifier
# over ten digit classes, about 10% for its commonest class. A quarter lies well between.
MIN_BLANK_SHARE = 0.25


def blank_class(reference: np.ndarray) -> int | None:
    """The blank class of FP32's `[N, T, C]` per-step probabilities (class axis last), or None where
    none can be identified (see the module docstring for the rule)."""
    if reference.ndim != 3 or reference.shape[2] < MIN_CLASSES or reference.shape[1] > MAX_STEPS or not reference.size:
        return None
    best = reference.argmax(axis=2)
    counts = np.bincount(best.ravel(), minlength=reference.shape[2])
    commonest = int(counts.argmax())
    if commonest not in (0, reference.shape[2] - 1):
        return None
    return commonest if counts[commonest] >= MIN_BLANK_SHARE * best.size else None


def greedy_decode(probabilities: np.ndarray, blank: int) -> list[list[int]]:
    """Best path per sample: argmax per step, repeats merged, blanks dropped (class indices)."""
    best = np.nan_to_num(probabilities, nan=-np.inf).argmax(axis=2)
    keep = np.ones(best.shape, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [row[mask].tolist() for row, mask in zip(best, keep)]


def sequence_agreement(reference: np.ndarray, candidate: np.ndarray, blank: int) -> tuple[float, int]:
    """1 - (edits from FP32's readings to the candidate's) / (characters FP32 read), summed over the
    data set as a CER is, and the characters FP32 read. Below 0 where the candidate's readings need
    more edits than FP32 read characters; where FP32 reads nothing, each character the candidate
    reads counts as one lost."""
    from rapidfuzz.distance import Levenshtein  # C++ edit distance over any sequences of hashables

    fp32, quantized = greedy_decode(reference, blank), greedy_decode(candidate, blank)
    edits = sum(Levenshtein.distance(r, c) for r, c in zip(fp32, quantized, strict=True))
    characters = sum(len(r) for r in fp32)
    return 1.0 - edits / max(1, characters), characters
