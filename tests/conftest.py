"""Shared fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_dataset import tiny_dataset  # noqa: F401  (a session fixture for every test)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real public data beside the repository (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is not present")
    return SHARED_DATA
