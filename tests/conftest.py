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
