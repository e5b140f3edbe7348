"""Fixtures of the PACS tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import SegmentationStorage

from tests.orthanc_server import OrthancServer, require_orthanc, running_orthanc


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc per test module, refusing Segmentation Storage (a Lua filter)."""
    require_orthanc()
    folder = tmp_path_factory.mktemp("orthanc")
    with running_orthanc(folder, refuse_sop_classes=[SegmentationStorage]) as server:
        yield server
