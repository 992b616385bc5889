"""Calibration/comparison inputs: every format, every mismatch caught before calibration."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from _compile_helpers import MNIST_CNTK
from tao_qc.data import InputInfo, load_labels, model_inputs, open_inputs
from tao_qc.errors import InputError
from tao_qc.spec import CalibrationSpec

MNIST = [InputInfo("Input3", (1, 1, 28, 28), np.dtype(np.float32))]
DYNAMIC = [InputInfo("x", ("batch", 3, 8, 8), np.dtype(np.float32))]


def test_model_inputs_skip_initializers_listed_as_inputs():
    # mnist_cntk (old IR) lists its weights as graph inputs too
    model = onnx.load(MNIST_CNTK)
    assert len(model.graph.input) > 1
    assert model_inputs(model) == MNIST


def test_npz_streams_batches_with_exact_values(tmp_path):
    data = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=data)
    batches = open_inputs(tmp_path / "c.npz", DYNAMIC, batch_size=4)
    got = [b["x"] for b in batches]
    assert [g.shape[0] for g in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), data)
    assert len(batches) == 3 and batches.num_samples == 10
    # re-iterable
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), data)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_held_back_samples_are_the_last_fifth_in_whole_batches(tmp_path, suffix):
    data = np.random.default_rng(1).standard_normal((23, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data) if suffix == ".npz" else np.save(tmp_path / "c.npy", data)
    kept, held = open_inputs(tmp_path / f"c{suffix}", DYNAMIC, batch_size=4).hold_back(0.2)
    assert (kept.num_samples, held.num_samples) == (18, 5)
    assert [b["x"].shape[0] for b in held] == [4, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in kept]), data[:18])
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in held]), data[18:])
    assert "held back" in held.describe()


def test_max_samples_and_fixed_batch(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((7, 1, 28, 28), np.float32))
    batches = open_inputs(tmp_path / "c.npy", MNIST, max_samples=5, batch_size=4)
    assert batches.batch_size == 1  # the model's batch is fixed at 1
    assert [b["Input3"].shape for b in batches] == [(1, 1, 28, 28)] * 5


def test_single_unnamed_npz_array_feeds_the_single_input(tmp_path):
    np.savez(tmp_path / "c.npz", np.ones((2, 1, 28, 28), np.float32))
    assert open_inputs(tmp_path / "c.npz", MNIST).first()["Input3"].shape == (1, 1, 28, 28)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"Inputx": np.zeros((2, 1, 28, 28), np.float32)}, "has no array named 'Input3' (arrays: Inputx; the model's inputs: Input3)"),
        ({"Input3": np.zeros((2, 1, 28, 27), np.float32)}, "needs size 28 on axis 3"),
        ({"Input3": np.zeros((2, 28, 28), np.float32)}, "needs 4 dimensions"),
        ({"Input3": np.zeros((2, 1, 28, 28), np.float64)}, "is float64 but input Input3 float32[1,1,28,28] needs float32"),
        ({"Input3": np.zeros((0, 1, 28, 28), np.float32)}, "holds no samples"),
    ],
)
def test_mismatches_fail_when_opened(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match="quantize.calibration.data") as info:
        open_inputs(tmp_path / "bad.npz", MNIST)
    assert message in str(info.value)


def test_nan_and_inf_are_found_with_their_sample(tmp_path):
    data = np.zeros((6, 1, 28, 28), np.float32)
    data[4, 0, 3, 3] = np.inf
    np.save(tmp_path / "c.npy", data)
    batches = open_inputs(tmp_path / "c.npy", MNIST)
    with pytest.raises(InputError, match=r"has NaN or Inf values \(sample 4\)"):
        batches.validate()


def test_bad_paths_and_formats(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_inputs(tmp_path / "nope.npz", MNIST)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="is not a .npz, .npy or image folder"):
        open_inputs(tmp_path / "x.txt", MNIST)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a valid .npz"):
        open_inputs(tmp_path / "broken.npz", MNIST)
    with pytest.raises(InputError, match="no data given"):
        open_inputs(None, MNIST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        open_inputs(tmp_path / "empty", MNIST)


def test_random_only_when_asked_and_warns(caplog):
    batches = open_inputs("random", MNIST, max_samples=3)
    assert batches.is_random and batches.num_samples == 3
    assert "RANDOM data" in caplog.text
    with pytest.raises(InputError, match="dynamic dimension"):
        open_inputs("random", [InputInfo("x", (1, 3, "h", "w"), np.dtype(np.float32))])


def test_image_folder_preprocessing(shared_models):
    from PIL import Image

    spec = CalibrationSpec(mean=[127.0], std=[128.0])
    info = [InputInfo("input", (1, 3, 240, 320), np.dtype(np.float32))]
    batches = open_inputs(shared_models / "images", info, calibration=spec)
    first = batches.first()["input"]
    assert first.shape == (1, 3, 240, 320) and first.dtype == np.float32
    name = sorted(p for p in (shared_models / "images").iterdir())[0]
    expected = (np.asarray(Image.open(name).convert("RGB").resize((320, 240), Image.BILINEAR), np.float32) - 127) / 128
    np.testing.assert_allclose(first[0], expected.transpose(2, 0, 1), atol=1e-6)
    # gray input: converted to one channel; NHWC layout honoured
    gray = open_inputs(shared_models / "mnist_cntk" / "images", MNIST).first()["Input3"]
    assert gray.shape == (1, 1, 28, 28) and 0 <= gray.min() and gray.max() <= 1
    nhwc = [InputInfo("x", (1, 16, 16, 3), np.dtype(np.float32))]
    assert open_inputs(shared_models / "images", nhwc, calibration=CalibrationSpec(layout="NHWC", color="bgr")).first()["x"].shape == (1, 16, 16, 3)


def test_labels(tmp_path):
    np.save(tmp_path / "l.npy", np.array([1, 2, 3]))
    assert load_labels(tmp_path / "l.npy").tolist() == [1, 2, 3]
    np.save(tmp_path / "onehot.npy", np.eye(3)[[2, 0]])
    assert load_labels(tmp_path / "onehot.npy").tolist() == [2, 0]
    np.save(tmp_path / "f.npy", np.array([0.5]))
    with pytest.raises(InputError, match="integer class indices"):
        load_labels(tmp_path / "f.npy")
