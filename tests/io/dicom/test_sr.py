"""A TID 1500 volume report references the SEG it measures and reads back value for value."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage, SegmentationStorage

from medseg.errors import VolumeReportError
from medseg.io.dicom.seg import write_dicom_seg
from medseg.io.dicom.sr import write_volume_report
from medseg.volume import Volume
from tests.phantoms import PHANTOM_LABELS, small_phantom, stamp_dicom, write_phantom_dicom

ALGORITHM = "PhantomSegmenter"
VERSION = "0.1.0-test"
MODEL = "models:/phantom/7"
PHANTOM_SEED = 4
KEPT_VALUES = (1, 2, 4, 5)  # liver, spleen, kidney_right, spine: non-contiguous on purpose
FAKE_PATIENT = {
    "PatientName": "FAKE^VOLUMEPATIENT",
    "PatientID": "FAKE-VOL-0001",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "FAKEACC42",
}
_PATIENT_STUDY = (*FAKE_PATIENT, "PatientSex", "StudyInstanceUID", "StudyID", "StudyDate")


@dataclass
class VolumeCase:
    """A SEG of four structures of a phantom CT, its sources and the structures' volumes."""

    seg_path: Path
    source_files: list[Path]
    labels: Volume  # the four structures, on the grid of the source series
    names: dict[int, str]
    volumes_ml: dict[str, float]


def build_volume_case(folder: Path) -> VolumeCase:
    """Write the SEG of liver, spleen, right kidney and spine of a phantom CT series.

    The series carries fake patient attributes so tests can look for them.
    """
    files = write_phantom_dicom(folder / "ct", PHANTOM_SEED)
    stamp_dicom(files, **FAKE_PATIENT)
    full = small_phantom(PHANTOM_SEED)[1]
    names = {value: PHANTOM_LABELS[value] for value in KEPT_VALUES}
    array = np.where(np.isin(full.array, KEPT_VALUES), full.array, 0).astype(np.uint8)
    labels = Volume(array, full.affine_ras)
    voxel_ml = abs(np.linalg.det(labels.affine_ras[:3, :3])) / 1000.0
    volumes = {name: float(np.count_nonzero(array == v)) * voxel_ml for v, name in names.items()}
    seg_path = write_dicom_seg(
        labels,
        source_files=files,
        label_names=names,
        out_path=folder / "seg.dcm",
        algorithm_name=ALGORITHM,
        algorithm_version=VERSION,
    )
    return VolumeCase(seg_path, files, labels, names, volumes)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> VolumeCase:
    return build_volume_case(tmp_path_factory.mktemp("sr-case"))


@pytest.fixture(scope="module")
def report(case: VolumeCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_volume_report(
        case.seg_path,
        case.volumes_ml,
        out_path=tmp_path_factory.mktemp("sr") / "out" / "sr.dcm",
        algorithm_name=ALGORITHM,
        algorithm_version=VERSION,
        model_reference=MODEL,
    )


def _write(case: VolumeCase, out_path: Path, **overrides: object) -> Path:
    arguments: dict[str, object] = {
        "volumes_ml": case.volumes_ml,
        "out_path": out_path,
        "algorithm_name": ALGORITHM,
        "algorithm_version": VERSION,
    }
    arguments.update(overrides)
    seg_path = arguments.pop("seg_path", case.seg_path)
    return write_volume_report(seg_path, **arguments)  # type: ignore[arg-type]


def _text_values(item: Dataset, code_value: str) -> list[str]:
    """Values of the TEXT content items named by DCM ``code_value``, anywhere below ``item``."""
    found = []
    for child in item.get("ContentSequence") or ():
        if child.ConceptNameCodeSequence[0].CodeValue == code_value and child.ValueType == "TEXT":
            found.append(str(child.TextValue))
        found.extend(_text_values(child, code_value))
    return found


def test_report_is_a_tid1500_comprehensive_3d_sr(report: Path, case: VolumeCase) -> None:
    dataset = pydicom.dcmread(report)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    assert dataset.SOPClassUID == Comprehensive3DSRStorage
    assert dataset.Modality == "SR"
    assert dataset.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (dataset.SeriesDescription, dataset.Manufacturer) == ("medseg organ volumes", "medseg")
    assert dataset.SeriesNumber == seg.SeriesNumber + 1
    assert (dataset.CompletionFlag, dataset.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert dataset.PreliminaryFlag == "PRELIMINARY"
    assert isinstance(hd.sr.srread(report), hd.sr.Comprehensive3DSR)
    assert isinstance(hd.sr.Comprehensive3DSR.from_dataset(dataset), hd.sr.Comprehensive3DSR)
    assert not list(report.parent.glob(".tmp-*"))


def test_each_segment_reads_back_its_volume_and_reference(report: Path, case: VolumeCase) -> None:
    sr = hd.sr.srread(report)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    number_of = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    source_uids = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in case.source_files
    }
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [group.tracking_identifier for group in groups] == list(case.names.values())
    for group in groups:
        label = group.tracking_identifier
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        assert math.isclose(measurement.value, case.volumes_ml[label], rel_tol=0, abs_tol=1e-6)
        unit = measurement.unit
        assert (unit.value, unit.scheme_designator, unit.meaning) == ("ml", "UCUM", "milliliter")
        segment = group.referenced_segment
        assert segment.referenced_sop_class_uid == SegmentationStorage
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment.referenced_segment_numbers == [number_of[label]]
        images = segment.source_images_for_segmentation
        assert images and {image.referenced_sop_instance_uid for image in images} <= set(
            source_uids
        )
        assert group.finding_type == codes.SCT.AnatomicalStructure
        assert group.finding_category == codes.SCT.AnatomicalStructure
        assert _text_values(group[0], "111001") == [ALGORITHM]  # Algorithm Name
        assert _text_values(group[0], "111003") == [VERSION]  # Algorithm Version
        assert _text_values(group[0], "111002") == [f"model: {MODEL}"]  # Algorithm Parameters
    assert len({group.tracking_uid for group in groups}) == len(groups)


def test_report_joins_the_seg_study_with_the_seg_as_evidence(
    report: Path, case: VolumeCase
) -> None:
    sr = hd.sr.srread(report)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    for keyword in _PATIENT_STUDY:
        assert sr.get(keyword) == seg.get(keyword), keyword
    assert str(sr.PatientName) == FAKE_PATIENT["PatientName"]
    assert sr.SeriesInstanceUID not in (
        seg.SeriesInstanceUID,
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID,
    )
    evidence = sr.get_evidence(current_procedure_only=True)
    seg_entry = (
        seg.StudyInstanceUID,
        seg.SeriesInstanceUID,
        seg.SOPInstanceUID,
        SegmentationStorage,
    )
    assert seg_entry in evidence
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in case.source_files]
    for source in sources:  # every instance the content references is listed as evidence
        assert (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
            source.SOPInstanceUID,
            CTImageStorage,
        ) in evidence
    assert "PertinentOtherEvidenceSequence" not in sr


def test_writing_the_same_seg_twice_gives_the_same_object(
    case: VolumeCase, report: Path, tmp_path: Path
) -> None:
    again = _write(case, tmp_path / "again.dcm", model_reference=MODEL)
    first, second = pydicom.dcmread(report), pydicom.dcmread(again)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        second.SOPInstanceUID,
        second.SeriesInstanceUID,
    )
    assert report.read_bytes() == again.read_bytes()  # clock times pinned to the SEG's


def test_another_seg_gives_another_object(case: VolumeCase, report: Path, tmp_path: Path) -> None:
    other_seg = write_dicom_seg(
        case.labels,
        source_files=case.source_files,
        label_names=case.names,
        out_path=tmp_path / "other-seg.dcm",
        algorithm_version=VERSION,
    )
    other = pydicom.dcmread(_write(case, tmp_path / "other.dcm", seg_path=other_seg))
    first = pydicom.dcmread(report)
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    assert other.StudyInstanceUID == first.StudyInstanceUID


MISMATCHES = [
    ("segment without volume", {"spine": None}, r"no volume for segment\(s\) \['spine'\]"),
    ("volume without segment", {"kidney_left": 120.0}, r"for \['kidney_left'\], which name no"),
    ("misspelt name", {"spine": None, "spnie": 3.0}, r"\['spine'\].*\['spnie'\]"),
    ("negative volume", {"liver": -1.0}, r"'liver' must be a finite number >= 0 mL"),
    ("not a number", {"spleen": math.nan}, r"'spleen' must be a finite number"),
    ("text volume", {"kidney_right": "72.5"}, r"'kidney_right' must be a finite number"),
]


@pytest.mark.parametrize(
    ("case_name", "change", "message"), MISMATCHES, ids=[name for name, *_ in MISMATCHES]
)
def test_volumes_that_do_not_match_the_segments_are_refused(
    case: VolumeCase, tmp_path: Path, case_name: str, change: dict[str, object], message: str
) -> None:
    volumes: dict[str, object] = dict(case.volumes_ml)
    for name, value in change.items():
        if value is None:
            del volumes[name]
        else:
            volumes[name] = value
    with pytest.raises(VolumeReportError, match=message) as error:
        _write(case, tmp_path / "sr.dcm", volumes_ml=volumes)
    if "segment" in case_name or "name" in case_name:
        assert "the SEG's segments are ['liver', 'spleen', 'kidney_right', 'spine']" in str(
            error.value
        )
    assert not (tmp_path / "sr.dcm").exists()


def test_a_file_that_is_not_a_seg_is_refused(case: VolumeCase, tmp_path: Path) -> None:
    with pytest.raises(VolumeReportError, match="not a DICOM Segmentation"):
        _write(case, tmp_path / "sr.dcm", seg_path=case.source_files[0])


def test_blank_algorithm_name_is_refused(case: VolumeCase, tmp_path: Path) -> None:
    with pytest.raises(VolumeReportError, match="algorithm_name must be 1 to 64 characters"):
        _write(case, tmp_path / "sr.dcm", algorithm_name=" ")


def test_patient_and_instance_identifiers_are_never_logged(
    case: VolumeCase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        _write(case, tmp_path / "sr.dcm")
    assert caplog.records
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    identifiers = (seg.SOPInstanceUID, seg.StudyInstanceUID, seg.SeriesInstanceUID)
    for value in (*FAKE_PATIENT.values(), *identifiers):
        assert value not in caplog.text


def test_numpy_volumes_are_accepted(case: VolumeCase, tmp_path: Path) -> None:
    volumes = {name: np.float32(value) for name, value in case.volumes_ml.items()}
    sr = hd.sr.srread(_write(case, tmp_path / "sr.dcm", volumes_ml=volumes))
    for group in sr.content.get_volumetric_roi_measurement_groups():
        (measurement,) = group.get_measurements(name=codes.SCT.Volume)
        assert measurement.value == float(volumes[group.tracking_identifier])
