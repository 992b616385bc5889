"""A small CNN trained on scikit-learn's bundled digits, shared by the frontends tests.

The classes here are also the model factories the CLI tests name (`_frontends_helpers:DigitsCNN`):
pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two convolutions and two Linear layers over 1x8x8 digits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class WideMLP(nn.Module):
    """Linear-heavy: where weight-only int8 shrinks the file the most."""

    def __init__(self, width: int = 512):
        super().__init__()
        self.fc1 = nn.Linear(64, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        for layer in (self.fc1, self.fc2, self.fc3):
            x = torch.relu(layer(x))
        return self.head(x)


def digits_split():
    """(x_train, y_train, x_test, y_test): float32 NCHW in [0, 1], int64 labels; fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = 1400
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 10, seed: int = 0) -> nn.Module:
    """`model` trained on (x, y), deterministic in `seed`; the weights are cached by content (the
    architecture's source, the data, the settings, torch's version), so modules and xdist workers
    that train the same model share one training."""
    return cached_training(model, (inspect.getsource(type(model)), inspect.getsource(_train),
                                   repr((epochs, seed, torch.__version__)), x.tobytes(), y.tobytes(),
                                   repr((x.shape, x.dtype.str, y.shape, y.dtype.str))),
                           lambda: _train(model, x, y, epochs, seed))


def reset_weights(model: nn.Module, seed: int) -> None:
    """`model`'s initial weights drawn afresh from `seed`, before training. Built before this call,
    they would depend on whatever the process drew before (which tests ran first), and so would every
    figure measured on the trained model."""
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    reset_weights(model, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[index]), yt[index]).backward()
            optimizer.step()
    return model.eval()


CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "tao-qc"
# Weights trained here and committed, under the same content keys: a fresh clone (CI) loads them
# instead of spending minutes of its 2 cores training the zoo. A key changes with the model's source,
# its trainer, its data or torch's version, and then the test run trains afresh into CACHE: copy
# the new file here to commit it (tests/trained/README.md).
TRAINED = Path(__file__).resolve().parent / "trained"


def cached_training(model: nn.Module, parts, build) -> nn.Module:
    """`cached_state` for a trained zoo model: keyed by `parts` (str or bytes: the model's and its
    trainer's source, the settings with torch's version, the training data), named
    `trained-<class>-<key>`."""
    key = hashlib.sha256()
    for part in parts:
        key.update(part if isinstance(part, bytes) else part.encode())
    return cached_state(model, f"trained-{type(model).__name__}-{key.hexdigest()[:20]}", build)


def cached_state(model: nn.Module, name: str, build) -> nn.Module:
    """`model` with the state `build()` gives it, built once per `name` (a content key): read from
    tests/trained/ where committed, else built and kept in .pytest_cache/tao-qc/; a lock makes
    concurrent workers wait for the first one's result."""
    committed = TRAINED / f"{name}.pt"
    if committed.is_file():
        return _load_state(model, committed)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.pt"
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return _load_state(model, path)
        built = build()
        partial = path.with_suffix(".partial")
        torch.save({"state": built.state_dict(), "rng": torch.get_rng_state()}, partial)
        partial.replace(path)
        return built.eval()


def _load_state(model: nn.Module, path: Path) -> nn.Module:
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["state"])
    torch.set_rng_state(saved["rng"])  # where a fresh training would have left torch's generator
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


class CalledThroughContainers(torch.nn.Module):
    """Modules the TorchScript exporter names by their last atom only: reached through a
    ModuleDict, through a parent whose forward never runs, or called twice."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3)
        self.heads = torch.nn.ModuleDict({"cls": torch.nn.Linear(4, 3)})
        self.wrapper = torch.nn.Module()
        self.wrapper.conv = torch.nn.Conv2d(4, 4, 1)
        self.shared = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.shared(self.shared(self.wrapper.conv(self.stem(x))))
        return self.heads["cls"](x.mean((2, 3)))
