"""Fixtures of the fault tests, shared with the component tests they build on."""

from __future__ import annotations

from tests.batch.conftest import batch_model  # noqa: F401  (the packaged model of batch tests)
