"""DicomwebClient's store against a real Orthanc that refuses Segmentation Storage.

Orthanc's DICOMweb plugin (1.x) answers a STOW-RS request with an instance its filter refuses
in two ways: HTTP 200 confirming nothing and giving no reason when the instance is small (60 kB
and 380 kB SEGs), HTTP 500 with Orthanc's message when it is large (a 1.8 MB SEG, as of a real
CT). Both must name the PACS and what happened, never the patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from medseg.errors import PacsRefusedError, PacsUnavailableError
from medseg.io.dicom.seg import write_dicom_seg
from medseg.pacs.config import DicomwebSettings
from medseg.pacs.dicomweb import DicomwebClient
from tests.orthanc_server import OrthancServer
from tests.phantoms import PHANTOM_LABELS, small_phantom, write_phantom_dicom

PASSWORD_ENV = "MEDSEG_TEST_DICOMWEB_PASSWORD"
PATIENT_ID = "FAKE-STOW-0001"


@pytest.fixture
def client(pacs: OrthancServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[DicomwebClient]:
    monkeypatch.setenv(PASSWORD_ENV, pacs.password)
    settings = DicomwebSettings(
        url=pacs.dicomweb_url, username=pacs.username, password_env=PASSWORD_ENV
    )
    dicomweb = DicomwebClient(settings, "test-pacs")
    yield dicomweb
    dicomweb.close()


def _phantom_seg(folder: Path, spacing_mm: tuple[float, float, float]) -> tuple[Path, list[Path]]:
    """A SEG of a phantom CT series on a grid of ``spacing_mm``, and the series' files."""
    files = write_phantom_dicom(folder / "ct", 9, patient_id=PATIENT_ID, spacing_mm=spacing_mm)
    seg = write_dicom_seg(
        small_phantom(9, spacing_mm=spacing_mm)[1],
        source_files=files,
        label_names=PHANTOM_LABELS,
        out_path=folder / "result-seg.dcm",
        algorithm_version="0-test",
    )
    return seg, files


@pytest.fixture(scope="module")
def phantom_seg(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A SEG of the usual small phantom (49 x 39 x 33 voxels): about 60 kB."""
    return _phantom_seg(tmp_path_factory.mktemp("phantom"), (3.0, 3.0, 4.0))


def _stored(pacs: OrthancServer, path: Path) -> bool:
    return pacs.find_instance(str(pydicom.dcmread(path).SOPInstanceUID)) is not None


def test_accepted_instances_are_confirmed(
    client: DicomwebClient, pacs: OrthancServer, phantom_seg: tuple[Path, list[Path]]
) -> None:
    _, files = phantom_seg
    client.store(files[:3])
    assert all(_stored(pacs, path) for path in files[:3])
    first = pydicom.dcmread(files[0])
    uids = (str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    assert client.has_instance(*uids, str(first.SOPInstanceUID))


def test_refused_instance_in_a_small_request_is_named(
    client: DicomwebClient, pacs: OrthancServer, phantom_seg: tuple[Path, list[Path]]
) -> None:
    seg, _ = phantom_seg
    assert seg.stat().st_size < 10**6
    with pytest.raises(PacsRefusedError) as refused:
        client.store([seg])
    assert str(refused.value) == (
        "test-pacs: DICOMweb store refused result-seg.dcm (failure reason not given)"
    )
    assert not _stored(pacs, seg)


def test_refused_large_instance_is_the_pacs_http_500(
    client: DicomwebClient, pacs: OrthancServer, tmp_path: Path
) -> None:
    seg, _ = _phantom_seg(tmp_path, (0.6, 0.6, 1.0))  # 245 x 195 pixels, 129 slices
    assert seg.stat().st_size > 1.5e6
    with pytest.raises(PacsUnavailableError) as refused:
        client.store([seg])
    message = str(refused.value)
    assert message == "test-pacs: DICOMweb store: HTTP 500 (Cannot execute a Lua command)"
    assert PATIENT_ID not in message
    assert not _stored(pacs, seg)
