"""The MONAI losses the loss tests compare with."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def monai_losses() -> ModuleType:
    """``monai.losses``, imported only by the tests that compare with it (it takes seconds).

    MONAI is a dependency of medseg: without it these tests fail rather than skip."""
    return importlib.import_module("monai.losses")
