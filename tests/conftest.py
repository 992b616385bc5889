"""Shared fixtures: the vendored test models, the larger third-party models beside the repo, and
golden-file updating.

The core tests run on the small models in tests/assets/ (see its MANIFEST.tsv), so a clone of the
repository alone passes its suite. Tests that need the larger models of ../shared/models take the
`shared_models` fixture: they skip, naming the path, where that folder is absent, and fail where
TAO_QC_SHARED_MODELS names a folder that does not exist (someone asked for them explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS_DEFAULT = REPO.parent / "shared" / "models"


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite golden/ files from the current output instead of comparing against them.",
    )


@pytest.fixture(scope="session")
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """../shared/models beside the repo (TAO_QC_SHARED_MODELS overrides)."""
    explicit = os.environ.get("TAO_QC_SHARED_MODELS")
    path = Path(explicit) if explicit else SHARED_MODELS_DEFAULT
    if not path.is_dir():
        if explicit:
            pytest.fail(f"TAO_QC_SHARED_MODELS={explicit} is not a folder")
        pytest.skip(f"needs the third-party models in {path}, which is absent (set TAO_QC_SHARED_MODELS to use another folder)")
    return path


@pytest.fixture(scope="session")
def mnist_cntk_compiled(tmp_path_factory):
    """The vendored mnist_cntk compiled as a user would (`tao_qc.driver.compile_model`, default
    target tensorrt, comparison on): INT8, compared with FP32 on 300 held-out labelled digits, pass
    dumps after every change. modelopt declines its GEMV MatMul Times212, so the report has a node
    the spec selected and the backend left in float. Read-only for the tests that share it."""
    import hashlib

    import numpy as np

    from _compile_helpers import MNIST_CNTK, MNIST_INPUT, digits
    from tao_qc.driver import compile_model

    root = tmp_path_factory.mktemp("mnist-cntk-compiled")
    images, labels = digits()
    np.savez(root / "calibration.npz", **{MNIST_INPUT: images[:48]})
    np.savez(root / "held_out.npz", **{MNIST_INPUT: images[100:400]})
    np.save(root / "held_out_labels.npy", labels[100:400])
    spec = {"quantize": {"device": "cpu", "calibration": {"data": str(root / "calibration.npz")},
                         "compare": {"data": str(root / "held_out.npz"), "labels": str(root / "held_out_labels.npy")}}}
    before = hashlib.sha256(MNIST_CNTK.read_bytes()).hexdigest()
    result = compile_model(MNIST_CNTK, spec, results_dir=root / "results", dump="after-change")
    assert hashlib.sha256(MNIST_CNTK.read_bytes()).hexdigest() == before  # the input model is only read
    return result
