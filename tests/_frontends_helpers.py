"""A small CNN trained on scikit-learn's bundled digits, shared by the frontends tests.

The classes here are also the model factories the CLI tests name (`_frontends_helpers:DigitsCNN`):
pytest puts tests/ on sys.path.
"""

from __future__ import annotations

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
    # The initial weights too come from `seed`: built before this call, they would depend on whatever
    # the process drew before (which tests ran first), and so would every figure measured on the model.
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[index]), yt[index]).backward()
            optimizer.step()
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
