"""Shared fixtures and the skip policy (tests/skip_policy.py: ``shared_data``, strict mode)."""

from __future__ import annotations

from tests.tiny_dataset import tiny_dataset  # noqa: F401  (a session fixture for every test)

pytest_plugins = ["tests.skip_policy"]
