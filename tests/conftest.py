"""Fixtures shared by the tests: the real assets in shared/, and TFRecords made from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path | None:
    """`$BATCH_PREDICT_SHARED`, else `../shared` beside the repository if it exists."""
    configured = os.environ.get("BATCH_PREDICT_SHARED")
    if configured:
        return Path(configured).resolve()
    fallback = REPO.parent / "shared"
    return fallback if fallback.is_dir() else None


def shared_file(relative: str) -> Path:
    """A shared asset. Missing while BATCH_PREDICT_SHARED is set (as in CI): the test fails.
    Missing on a machine without shared/: the test is skipped, saying why."""
    root = shared_root()
    if root is None:
        pytest.skip("shared test assets not found: set BATCH_PREDICT_SHARED or place shared/ beside the repository")
    path = root / relative
    if not path.exists():
        if os.environ.get("BATCH_PREDICT_SHARED"):
            pytest.fail(f"BATCH_PREDICT_SHARED is set but {path} is missing")
        pytest.skip(f"shared asset {relative} not found under {root}")
    return path


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return shared_file("data/photos")


@pytest.fixture(scope="session")
def yolox_dir() -> Path:
    return shared_file("models/yolox_nano")
