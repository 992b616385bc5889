"""Shared fixtures: the real third-party models beside the repo, and golden-file updating."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
    path = Path(os.environ.get("TAO_QC_SHARED_MODELS", REPO.parent / "shared" / "models"))
    if not path.is_dir():
        pytest.fail(f"shared models not found at {path} (set TAO_QC_SHARED_MODELS)")
    return path
