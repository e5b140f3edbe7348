"""DimseClient against a real Orthanc: C-ECHO, C-FIND, C-GET, C-STORE, refusals, a dead port.

One Orthanc serves the module (``pacs`` in conftest.py: it refuses Segmentation Storage), holding a
phantom CT series in JPEG 2000 (tests/phantoms.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import date
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import JPEG2000Lossless, generate_uid

from medseg.demo.dicom_writer import TransferSyntax
from medseg.errors import PacsRefusedError, PacsUnavailableError
from medseg.pacs.client import SeriesInfo, SeriesQuery, instance_file_name
from medseg.pacs.config import DimseSettings
from medseg.pacs.dimse import DimseClient
from tests.orthanc_server import OrthancServer, free_port
from tests.phantoms import stamp_dicom, write_phantom_dicom

STUDY_DATE = date(2000, 1, 1)  # of every phantom
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-4711"
PHANTOM_SEED = 11


@pytest.fixture(scope="module")
def ct_files(pacs: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A phantom CT series (JPEG 2000, a patient name and ID) uploaded to the PACS by REST."""
    files = write_phantom_dicom(
        tmp_path_factory.mktemp("ct") / "ct",
        PHANTOM_SEED,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        transfer_syntax=TransferSyntax.JPEG2000_LOSSLESS,
    )
    stamp_dicom(files, BodyPartExamined="ABDOMEN", SeriesNumber=7)
    assert {answer["Status"] for answer in pacs.upload(files)} == {"Success"}
    return files


@pytest.fixture
def client(pacs: OrthancServer) -> Iterator[DimseClient]:
    """A client of the module's Orthanc, closed after the test."""
    settings = DimseSettings(
        host=pacs.host, port=pacs.dicom_port, called_ae=pacs.aet, timeout_seconds=10
    )
    dimse = DimseClient(settings, "test-pacs")
    yield dimse
    dimse.close()


def _series(client: DimseClient, ct_files: list[Path]) -> SeriesInfo:
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    [series] = client.find_series(SeriesQuery(study_uid=str(first.StudyInstanceUID)))
    return series


def test_echo(client: DimseClient) -> None:
    client.echo()


def test_find_series_reads_the_filter_attributes(client: DimseClient, ct_files: list[Path]) -> None:
    first = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    query = SeriesQuery(modalities=("CT",), study_date_from=STUDY_DATE, study_date_to=STUDY_DATE)
    assert client.find_series(query) == [
        SeriesInfo(
            study_uid=str(first.StudyInstanceUID),
            series_uid=str(first.SeriesInstanceUID),
            modality="CT",
            body_part="ABDOMEN",
            series_description=f"phantom {PHANTOM_SEED}",
            study_date=STUDY_DATE,
            series_number=7,
            instances=33,
        )
    ]


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        (SeriesQuery(), True),
        (SeriesQuery(modalities=("MR", "CT")), True),
        (SeriesQuery(modalities=("MR",)), False),
        (SeriesQuery(study_date_from=date(1999, 12, 1)), True),
        (SeriesQuery(study_date_to=date(2000, 1, 31)), True),
        (SeriesQuery(study_date_from=date(2000, 1, 2)), False),
        (SeriesQuery(study_date_from=date(1999, 1, 1), study_date_to=date(1999, 12, 31)), False),
        (SeriesQuery(study_uid="1.2.3.4"), False),
    ],
)
def test_find_series_filters(
    client: DimseClient, ct_files: list[Path], query: SeriesQuery, matches: bool
) -> None:
    series_uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).SeriesInstanceUID)
    found = {series.series_uid for series in client.find_series(query)}
    assert (series_uid in found) is matches


def test_retrieve_series_gives_back_the_stored_instances(
    client: DimseClient, ct_files: list[Path], tmp_path: Path
) -> None:
    files = client.retrieve_series(_series(client, ct_files), tmp_path / "got")
    sent = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, ct_files)}
    assert sorted(path.name for path in files) == sorted(map(instance_file_name, sent))
    assert sorted(path.name for path in (tmp_path / "got").iterdir()) == sorted(
        path.name for path in files
    )  # no temporary files left behind
    for path in files:
        got = pydicom.dcmread(path)  # a DICOM file with file meta
        assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless  # as stored, not transcoded
        assert got.PixelData == sent[str(got.SOPInstanceUID)].PixelData


def test_retrieve_unknown_series_is_refused(client: DimseClient, tmp_path: Path) -> None:
    unknown = SeriesInfo(study_uid=generate_uid(), series_uid=generate_uid())
    # Orthanc answers 0xC000 ("Cannot locate resource"), not Success with no sub-operations.
    with pytest.raises(PacsRefusedError, match=r"^test-pacs: DIMSE retrieve: status 0x"):
        client.retrieve_series(unknown, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_store_then_has_instance(
    client: DimseClient, pacs: OrthancServer, ct_files: list[Path], tmp_path: Path
) -> None:
    dataset = pydicom.dcmread(ct_files[0])
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "copy.dcm"
    dataset.save_as(path, enforce_file_format=True)
    uids = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID))
    assert not client.has_instance(*uids, str(dataset.SOPInstanceUID))

    client.store([path])

    assert client.has_instance(*uids, str(dataset.SOPInstanceUID))
    stored = pacs.find_instance(str(dataset.SOPInstanceUID))
    assert stored is not None
    # Orthanc writes its own file meta; the data set is kept as sent.
    assert pydicom.dcmread(BytesIO(pacs.instance_file(stored["ID"]))) == dataset


def _segmentation(source: Path, target: Path) -> Path:
    """A small real SEG (one slice, one segment) of ``source``."""
    image = pydicom.dcmread(source)
    mask = np.zeros((1, image.Rows, image.Columns), dtype=bool)
    mask[0, 10:30, 10:40] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="liver",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(target)
    return target


def test_refused_store_names_the_file_and_status_not_the_patient(
    client: DimseClient, pacs: OrthancServer, ct_files: list[Path], tmp_path: Path
) -> None:
    seg = _segmentation(ct_files[0], tmp_path / "result-seg.dcm")
    accepted = pydicom.dcmread(ct_files[1])
    accepted.SOPInstanceUID = accepted.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    accepted.save_as(tmp_path / "other.dcm", enforce_file_format=True)

    with pytest.raises(PacsRefusedError) as refused:
        client.store([seg, tmp_path / "other.dcm"])

    message = str(refused.value)
    assert message.startswith("test-pacs: ")
    assert "result-seg.dcm (status 0xA700)" in message  # Orthanc: Lua error -> out of resources
    assert "other.dcm" not in message
    assert PATIENT_ID not in message and "Doe" not in message
    assert pacs.find_instance(str(pydicom.dcmread(seg).SOPInstanceUID)) is None
    assert pacs.find_instance(str(accepted.SOPInstanceUID)) is not None  # every file was tried


def test_closed_port_is_unavailable_quickly() -> None:
    settings = DimseSettings(host="127.0.0.1", port=free_port(), called_ae="NOBODY")
    client = DimseClient(settings, "gone-pacs")
    started = time.monotonic()
    with pytest.raises(PacsUnavailableError, match=r"^gone-pacs: DIMSE echo: .*no association"):
        client.echo()
    assert time.monotonic() - started < 5
    client.close()


def test_pynetdicom_does_not_log_identifiers() -> None:
    assert logging.getLogger("pynetdicom").getEffectiveLevel() >= logging.WARNING
