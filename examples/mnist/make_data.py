"""Regenerate the demo's labelled data from scikit-learn's bundled digits (no download).

The 8x8 digits are upscaled to 20x20 and centred on a 28x28 canvas in [0, 1], the layout MNIST
models expect. `calib.npz` holds calibration samples; `test.npz` + `labels.npy` a disjoint
labelled set for the FP32-vs-INT8 comparison.

    python examples/mnist/make_data.py
"""

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent


def digits_28x28() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = np.zeros((len(digits.images), 1, 28, 28), np.float32)
    for index, image in enumerate(digits.images):
        small = Image.fromarray((image / 16 * 255).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
        images[index, 0, 4:24, 4:24] = np.asarray(small, np.float32) / 255
    return images, digits.target.astype(np.int64)


if __name__ == "__main__":
    images, labels = digits_28x28()
    order = np.random.default_rng(0).permutation(len(images))
    calib, test = order[:128], order[128:428]
    np.savez_compressed(HERE / "calib.npz", **{"0": images[calib]})
    np.savez_compressed(HERE / "test.npz", **{"0": images[test]})
    np.save(HERE / "labels.npy", labels[test])
    print(f"wrote {len(calib)} calibration and {len(test)} labelled test samples to {HERE}")
