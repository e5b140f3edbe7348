"""An RT Structure Set references its source series, puts each contour on its image's plane and
reads back to the label map it came from.

On phantom series written by the test: the usual axial one and an oblique sagittal one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RTStructureSetStorage

from medseg.demo.phantom import make_phantom
from medseg.errors import GeometryMismatchError
from medseg.io.dicom import read_dicom_series
from medseg.io.dicom.rtstruct import read_rtstruct, write_rtstruct
from medseg.io.dicom.sc import segment_colour
from medseg.volume import Volume
from tests.phantoms import PHANTOM_LABELS, SMALL_SPACING_MM, write_phantom_dicom

VERSION = "0.1.0-test"
PHANTOM_SEED = 5
PATIENT_NAME = "FAKE^RTPATIENT"
MIN_DICE = 0.95
PLANE_TOLERANCE_MM = 0.01
GEOMETRIES = {
    "axial": {"orientation": "LPS"},
    "oblique-sagittal": {"orientation": "PIL", "rotation_deg": (12.0, 0.0, 0.0)},
}


@dataclass
class RtstructCase:
    """A written RTSTRUCT, the source files it references and the label map it encodes."""

    path: Path
    source_files: list[Path]
    image: Volume  # the source series as read_dicom_series builds it
    labels: Volume  # on that grid


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> RtstructCase:
    tmp = tmp_path_factory.mktemp(request.param)
    grid = {"spacing_mm": SMALL_SPACING_MM, **GEOMETRIES[request.param]}
    files = write_phantom_dicom(tmp / "ct", PHANTOM_SEED, patient_name=PATIENT_NAME, **grid)
    image = read_dicom_series(tmp / "ct", workers=1)
    labels = make_phantom(seed=PHANTOM_SEED, **grid)[1].to_closest_ras()  # type: ignore[arg-type]
    assert labels.same_grid(image)
    path = write_rtstruct(
        labels,
        source_files=files,
        label_names=PHANTOM_LABELS,
        out_path=tmp / "out" / "rtstruct.dcm",
        algorithm_version=VERSION,
    )
    return RtstructCase(path, files, image, labels)


def _sources(case: RtstructCase) -> dict[str, pydicom.Dataset]:
    """Source headers by SOPInstanceUID."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in case.source_files]
    return {str(h.SOPInstanceUID): h for h in headers}


def test_rtstruct_is_a_structure_set_in_the_source_study(case: RtstructCase) -> None:
    rtstruct = pydicom.dcmread(case.path)
    source = pydicom.dcmread(case.source_files[0], stop_before_pixels=True)
    assert rtstruct.SOPClassUID == RTStructureSetStorage == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.StudyInstanceUID == source.StudyInstanceUID
    assert (rtstruct.PatientName, rtstruct.PatientID) == (PATIENT_NAME, source.PatientID)
    assert rtstruct.SeriesInstanceUID != source.SeriesInstanceUID
    assert not list(case.path.parent.glob(".tmp-*"))


def test_one_roi_per_structure_with_its_name_and_the_capture_colour(case: RtstructCase) -> None:
    rtstruct = pydicom.dcmread(case.path)
    present = [int(v) for v in np.unique(case.labels.array) if v > 0]
    assert len(present) == 5
    rois = rtstruct.StructureSetROISequence
    assert [int(roi.ROINumber) for roi in rois] == present
    assert [roi.ROIName for roi in rois] == [PHANTOM_LABELS[v] for v in present]
    assert {roi.ROIGenerationAlgorithm for roi in rois} == {"AUTOMATIC"}
    colours = [[int(c) for c in item.ROIDisplayColor] for item in rtstruct.ROIContourSequence]
    assert colours[0] == [31, 119, 180]  # the capture's first segment colour (tab10 blue)
    assert colours == [[round(c * 255) for c in segment_colour(n)] for n in range(1, 6)]
    assert [int(item.ReferencedROINumber) for item in rtstruct.ROIContourSequence] == present
    observations = rtstruct.RTROIObservationsSequence
    assert [int(o.ReferencedROINumber) for o in observations] == present
    assert {o.RTROIInterpretedType for o in observations} == {"ORGAN"}


def test_references_are_the_source_frame_study_series_and_instances(case: RtstructCase) -> None:
    rtstruct = pydicom.dcmread(case.path)
    sources = _sources(case)
    first = next(iter(sources.values()))
    (frame,) = rtstruct.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert {roi.ReferencedFrameOfReferenceUID for roi in rtstruct.StructureSetROISequence} == {
        first.FrameOfReferenceUID
    }
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert referenced == set(sources)
    for item in series.ContourImageSequence:
        assert item.ReferencedSOPClassUID == sources[item.ReferencedSOPInstanceUID].SOPClassUID


def test_every_contour_lies_on_the_plane_of_the_image_it_references(case: RtstructCase) -> None:
    rtstruct = pydicom.dcmread(case.path)
    sources = _sources(case)
    distances = []
    for roi in rtstruct.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            (image,) = contour.ContourImageSequence
            source = sources[image.ReferencedSOPInstanceUID]  # KeyError: not of the series
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints) >= 3
            orientation = np.asarray(source.ImageOrientationPatient, float)
            normal = np.cross(orientation[:3], orientation[3:])
            offsets = points - np.asarray(source.ImagePositionPatient, float)
            distances.append(np.abs(offsets @ normal).max())
    assert len(distances) > 20
    assert max(distances) < PLANE_TOLERANCE_MM


def test_read_back_gives_every_structure_with_dice_at_least_095(case: RtstructCase) -> None:
    read = read_rtstruct(case.path, case.image)
    assert read.labels.same_grid(case.image)
    assert read.names == PHANTOM_LABELS | {} if 0 not in PHANTOM_LABELS else read.names
    dice = {}
    for value, name in read.names.items():
        expected, got = case.labels.array == value, read.labels.array == value
        dice[name] = 2 * (expected & got).sum() / (expected.sum() + got.sum())
    print(f"RTSTRUCT read back: minimum Dice {min(dice.values()):.4f} ({dice})")
    assert min(dice.values()) >= MIN_DICE
    assert set(np.unique(read.labels.array)) == set(np.unique(case.labels.array))


def test_holes_are_contours_of_their_own_and_read_back_by_the_even_odd_rule(
    tmp_path: Path,
) -> None:
    files = write_phantom_dicom(tmp_path / "ct", PHANTOM_SEED)
    image = read_dicom_series(tmp_path / "ct", workers=1)
    array = np.zeros(image.shape, np.uint8)
    array[10:30, 10:30, 5:8] = 2  # a tube: a square ring with a hole holding an island
    array[14:26, 14:26, 5:8] = 0
    array[18:22, 18:22, 5:8] = 2
    labels = image.with_array(array)
    path = write_rtstruct(
        labels,
        source_files=files,
        label_names=PHANTOM_LABELS,
        out_path=tmp_path / "rtstruct.dcm",
        algorithm_version=VERSION,
    )
    (roi,) = pydicom.dcmread(path).ROIContourSequence
    assert len(roi.ContourSequence) == 3 * 3  # outline, hole and island on each of 3 slices
    read = read_rtstruct(path, image)
    assert np.array_equal(read.labels.array, array)


def test_label_map_on_another_grid_is_refused_naming_the_source_file(tmp_path: Path) -> None:
    files = write_phantom_dicom(tmp_path / "ct", PHANTOM_SEED)
    image = read_dicom_series(tmp_path / "ct", workers=1)
    shifted = image.affine_ras.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, 2]  # half a slice along k
    labels = Volume(np.ones(image.shape, np.uint8), shifted)
    with pytest.raises(GeometryMismatchError, match="not on the grid of the source series") as e:
        write_rtstruct(
            labels,
            source_files=files,
            label_names=PHANTOM_LABELS,
            out_path=tmp_path / "rtstruct.dcm",
            algorithm_version=VERSION,
        )
    assert any(str(path) in str(e.value) for path in files)
    assert not (tmp_path / "rtstruct.dcm").exists()


def test_reading_onto_a_grid_the_contours_do_not_lie_on_names_the_file(
    case: RtstructCase,
) -> None:
    shifted = case.image.affine_ras.copy()
    shifted[:3, 3] += 0.5 * shifted[:3, :3].sum(axis=1)  # half a voxel along every axis
    with pytest.raises(GeometryMismatchError, match="does not lie in a plane of voxels") as e:
        read_rtstruct(case.path, Volume(np.zeros(case.image.shape, np.int16), shifted))
    assert str(case.path) in str(e.value)
