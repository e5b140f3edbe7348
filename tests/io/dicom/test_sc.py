"""The overlay capture: the busiest source slice with the SEG drawn on it, in the SEG's study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.text import Text
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, SegmentationStorage

from medseg import __version__
from medseg.errors import OverlayCaptureError, VolumeReportError
from medseg.io.dicom.sc import CAPTURE_HEIGHT, CAPTURE_WIDTH, write_overlay_capture
from medseg.io.dicom.sr import derived_uid
from tests.io.dicom.test_sr import FAKE_PATIENT, VolumeCase, build_volume_case

PATIENT_KEYWORDS = {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"}
TEXT_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UT",
}
IMAGE_AREA = (slice(90, 740), slice(0, 680))  # rows, columns of the slice in the picture


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> VolumeCase:
    return build_volume_case(tmp_path_factory.mktemp("sc-case"))


@pytest.fixture(scope="module")
def drawn_texts() -> list[str]:
    """Every text matplotlib draws while the module's captures are rendered."""
    return []


@pytest.fixture(scope="module")
def capture(
    case: VolumeCase, tmp_path_factory: pytest.TempPathFactory, drawn_texts: list[str]
) -> Path:
    original = Text.draw

    def recording_draw(self: Text, renderer: object) -> None:
        drawn_texts.append(self.get_text())
        original(self, renderer)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Text, "draw", recording_draw)
        return write_overlay_capture(
            case.seg_path,
            case.source_files,
            case.volumes_ml,
            out_path=tmp_path_factory.mktemp("sc") / "out" / "overlay.dcm",
        )


def _busiest_source_uids(case: VolumeCase) -> set[str]:
    """The source images over the slice(s) with the most labelled voxels, from the label map.

    Slices with equal counts share the maximum.
    """
    affine = case.labels.affine_ras
    counts = (case.labels.array > 0).sum(axis=(0, 1))
    busiest = set()
    for path in case.source_files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        z = float(source.ImagePositionPatient[2])  # LPS z is RAS z
        if counts[round((z - affine[2, 3]) / affine[2, 2])] == counts.max():
            busiest.add(str(source.SOPInstanceUID))
    assert busiest
    return busiest


def _coloured(pixels: np.ndarray) -> np.ndarray:
    """Pixels far from grey: overlay colours (the CT itself is drawn grey)."""
    wide = pixels.astype(np.int16)
    return (wide.max(axis=2) - wide.min(axis=2)) > 40


def _mid_grey(pixels: np.ndarray) -> np.ndarray:
    """Grey pixels between black and white: the windowed CT."""
    wide = pixels.astype(np.int16)
    grey = (wide.max(axis=2) - wide.min(axis=2)) < 8
    return grey & (wide[:, :, 0] > 40) & (wide[:, :, 0] < 215)


def _text_elements(dataset: Dataset) -> list[tuple[str, str]]:
    """(keyword, value) of every text-like element, in sequences too."""
    return [
        (element.keyword, str(element.value))
        for element in dataset.iterall()
        if element.VR in TEXT_VRS and element.value not in (None, "")
    ]


def test_capture_is_an_rgb_8_bit_secondary_capture(capture: Path, case: VolumeCase) -> None:
    dataset = pydicom.dcmread(capture)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    assert dataset.SOPClassUID == SecondaryCaptureImageStorage
    assert (dataset.Rows, dataset.Columns) == (CAPTURE_HEIGHT, CAPTURE_WIDTH) == (768, 1024)
    assert (dataset.SamplesPerPixel, dataset.PhotometricInterpretation) == (3, "RGB")
    assert (dataset.BitsAllocated, dataset.BitsStored, dataset.PixelRepresentation) == (8, 8, 0)
    assert dataset.pixel_array.shape == (768, 1024, 3)
    assert dataset.pixel_array.dtype == np.uint8
    assert (dataset.ConversionType, dataset.BurnedInAnnotation) == ("WSD", "YES")
    assert (dataset.SeriesDescription, dataset.Manufacturer) == ("medseg overlay", "medseg")
    assert dataset.SeriesNumber == seg.SeriesNumber + 2
    assert list(dataset.PatientOrientation) == ["L", "P"]  # axial, as the CT is displayed
    assert "PixelSpacing" not in dataset
    assert not list(capture.parent.glob(".tmp-*"))


def test_capture_joins_the_seg_study_and_patient(capture: Path, case: VolumeCase) -> None:
    dataset = pydicom.dcmread(capture, stop_before_pixels=True)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    for keyword in (*FAKE_PATIENT, "StudyInstanceUID", "StudyID", "StudyDate", "PatientSex"):
        assert dataset.get(keyword) == seg.get(keyword), keyword
    assert dataset.SeriesInstanceUID != seg.SeriesInstanceUID


def test_picture_shows_the_busiest_slice_with_coloured_segments(
    capture: Path, case: VolumeCase
) -> None:
    dataset = pydicom.dcmread(capture)
    (ct_reference,) = [
        item for item in dataset.SourceImageSequence if item.ReferencedSOPClassUID == CTImageStorage
    ]
    assert ct_reference.ReferencedSOPInstanceUID in _busiest_source_uids(case)
    pixels = dataset.pixel_array
    assert pixels.std() > 20  # not blank
    image = pixels[IMAGE_AREA]
    assert _mid_grey(image).sum() > 50_000  # the windowed CT
    assert _coloured(image).sum() > 20_000  # the segments over it


def test_source_image_sequence_references_the_source_and_the_seg(
    capture: Path, case: VolumeCase
) -> None:
    dataset = pydicom.dcmread(capture, stop_before_pixels=True)
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    sources = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in case.source_files
    }
    by_class = {item.ReferencedSOPClassUID: item for item in dataset.SourceImageSequence}
    assert set(by_class) == {CTImageStorage, SegmentationStorage}
    assert by_class[CTImageStorage].ReferencedSOPInstanceUID in sources
    assert by_class[SegmentationStorage].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    frames = by_class[SegmentationStorage].ReferencedFrameNumber
    assert min(frames) >= 1 and max(frames) <= seg.NumberOfFrames


def test_burned_in_text_has_the_disclaimer_and_volumes_and_no_patient_data(
    capture: Path, case: VolumeCase, drawn_texts: list[str]
) -> None:
    disclaimer = f"medseg {__version__} — automatic segmentation, not for diagnosis without review"
    assert disclaimer in drawn_texts
    for name, volume in case.volumes_ml.items():
        assert name in drawn_texts
        assert f"{volume:.1f}" in drawn_texts
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    forbidden = [*FAKE_PATIENT.values(), seg.StudyDate, seg.StudyInstanceUID]
    for text in drawn_texts:
        for value in forbidden:
            assert value not in text


def test_patient_data_only_in_the_copied_patient_and_study_attributes(capture: Path) -> None:
    dataset = pydicom.dcmread(capture, stop_before_pixels=True)
    elements = _text_elements(dataset)
    assert ("PatientName", FAKE_PATIENT["PatientName"]) in elements
    for keyword, value in elements:
        if keyword in PATIENT_KEYWORDS:
            continue
        for phi in (FAKE_PATIENT["PatientName"], FAKE_PATIENT["PatientID"]):
            assert phi not in value, keyword
            assert phi.split("^")[-1] not in value, keyword


def test_writing_the_same_seg_twice_gives_the_same_object(
    capture: Path, case: VolumeCase, tmp_path: Path
) -> None:
    again = write_overlay_capture(
        case.seg_path, case.source_files, case.volumes_ml, out_path=tmp_path / "again.dcm"
    )
    first, second = pydicom.dcmread(capture), pydicom.dcmread(again)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert capture.read_bytes() == again.read_bytes()
    seg = pydicom.dcmread(case.seg_path, stop_before_pixels=True)
    assert first.SOPInstanceUID != derived_uid(seg, "sr", "instance")  # not the SR's identity


def test_without_source_files_the_segments_are_drawn_on_black(
    case: VolumeCase, tmp_path: Path
) -> None:
    dataset = pydicom.dcmread(
        write_overlay_capture(case.seg_path, None, case.volumes_ml, out_path=tmp_path / "sc.dcm")
    )
    image = dataset.pixel_array[IMAGE_AREA]
    assert _coloured(image).sum() > 20_000
    assert _mid_grey(image).sum() < 1_000  # no CT
    classes = [item.ReferencedSOPClassUID for item in dataset.SourceImageSequence]
    assert classes == [SegmentationStorage]


def test_files_of_another_series_are_refused(case: VolumeCase, tmp_path: Path) -> None:
    busiest = _busiest_source_uids(case)
    others = [
        p
        for p in case.source_files
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID not in busiest
    ]
    with pytest.raises(OverlayCaptureError, match=f"none of the {len(others)} source file"):
        write_overlay_capture(case.seg_path, others, case.volumes_ml, out_path=tmp_path / "sc.dcm")
    assert not (tmp_path / "sc.dcm").exists()


def test_volumes_that_do_not_match_the_segments_are_refused(
    case: VolumeCase, tmp_path: Path
) -> None:
    volumes = {**case.volumes_ml, "kidney_left": 150.0}
    with pytest.raises(VolumeReportError, match=r"\['kidney_left'\], which name no segment"):
        write_overlay_capture(
            case.seg_path, case.source_files, volumes, out_path=tmp_path / "sc.dcm"
        )
    assert not (tmp_path / "sc.dcm").exists()
