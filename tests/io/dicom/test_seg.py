"""A DICOM SEG references its source series and gives back the label map voxel for voxel.

On phantom series written by the test; the reference tests at the end use TotalSegmentator's
real CT and a vendor's enhanced MR from ../shared/data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, SegmentationStorage

from medseg.demo.dicom_writer import FAKE_PHI, TransferSyntax, write_dicom_series
from medseg.errors import (
    DicomSegSourceError,
    GeometryMismatchError,
    SegmentationLabelError,
    UnsupportedDicomSourceError,
)
from medseg.io.dicom import read_dicom_series
from medseg.io.dicom.seg import write_dicom_seg
from medseg.io.nifti import read_nifti
from medseg.volume import Volume
from tests.phantoms import PHANTOM_LABELS, small_phantom, write_phantom_dicom
from tests.real_ct import EXAMPLE, REFERENCE, with_restored_uids
from tests.seg_readback import rebuild_label_map, seg_frames, value_of_segment

# example_seg_dicom.nii.gz holds TotalSegmentator 'total' classes; dataset.json names the fast
# model's classes, which use the same numbers, and lacks these four present in the example.
TOTAL_NAMES_MISSING = {
    69: "humerus_left",
    70: "humerus_right",
    97: "rib_left_6",
    109: "rib_right_6",
}
VERSION = "0.1.0-test"
ALGORITHM = "PhantomSegmenter"
PHANTOM_SEED = 5
PATIENT_ID = "FAKE-SEG-0001"
PATIENT_NAME = "FAKE^SEGPATIENT"


@dataclass
class SegCase:
    """A written SEG, the source files it references and the label map it encodes."""

    seg_path: Path
    source_files: list[Path]
    labels: Volume  # on the grid read_dicom_series built from the source files
    names: dict[int, str]


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> SegCase:
    """A phantom CT as a JPEG 2000 series and its five structures."""
    tmp = tmp_path_factory.mktemp("phantom")
    files = write_phantom_dicom(
        tmp / "ct", PHANTOM_SEED, transfer_syntax=TransferSyntax.JPEG2000_LOSSLESS
    )
    labels = small_phantom(PHANTOM_SEED)[1]
    assert labels.same_grid(read_dicom_series(tmp / "ct", workers=1))
    seg_path = write_dicom_seg(
        labels,
        source_files=files,
        label_names=PHANTOM_LABELS,
        out_path=tmp / "out" / "seg.dcm",
        algorithm_name=ALGORITHM,
        algorithm_version=VERSION,
    )
    return SegCase(seg_path, files, labels, dict(PHANTOM_LABELS))


def _oblique_flipped_affine() -> np.ndarray:
    """Left-handed, permuted (sagittal-like) and rotated 20 degrees: every trap at once."""
    angle = np.radians(20.0)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    permutation = np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]], float)  # j->R, k->A, i->-S
    affine = np.eye(4)
    affine[:3, :3] = rotation @ permutation @ np.diag([0.9, 1.1, 2.0])
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0, 1.0, -1.0])  # left-handed
    affine[:3, 3] = [30.0, -12.5, 7.25]
    return affine


SYNTHETIC_GEOMETRIES = {
    # DICOM's own axial order: i towards Left, j towards Posterior (reader flips both)
    "axial-lps": np.array(
        [[-0.8, 0, 0, 40.0], [0, -0.7, 0, 25.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]
    ),
    "oblique-flipped": _oblique_flipped_affine(),
}


def _synthetic_labels() -> np.ndarray:
    """A (13, 11, 6) map with sparse values 1, 3 and 7 (5 is named but absent)."""
    labels = np.zeros((13, 11, 6), np.uint8)
    labels[2:7, 3:9, 1:4] = 1
    labels[8:12, 1:4, 0:6] = 3
    labels[4, 9, 5] = 7  # a single voxel on the last slice
    labels[0, 0, 0] = 3  # the corner pixel (0, 0) of the first slice
    return labels


SYNTHETIC_NAMES = {0: "background", 1: "liver", 3: "spleen", 5: "kidney_left", 7: "lesion"}


@dataclass
class SyntheticSeries:
    """A written series, its labels as written (file k holds slice k) and as read back."""

    files: list[Path]
    written_labels: np.ndarray  # indexed [i, j, k] on the written grid
    labels: Volume  # on the grid read_dicom_series built


def _synthetic_series(folder: Path, affine: np.ndarray, *, uid_seed: str) -> SyntheticSeries:
    written = _synthetic_labels()
    image = Volume((written.astype(np.int16) * 40 - 100), affine)
    files = write_dicom_series(
        image,
        folder,
        series_description="seg source",
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        uid_seed=uid_seed,
    )
    read_back = read_dicom_series(folder, workers=1)
    labels = Volume(written, affine).to_closest_ras()
    assert labels.same_grid(read_back)
    return SyntheticSeries(files, written, Volume(labels.array, read_back.affine_ras))


@pytest.fixture(params=sorted(SYNTHETIC_GEOMETRIES))
def synthetic(request: pytest.FixtureRequest, tmp_path: Path) -> SyntheticSeries:
    affine = SYNTHETIC_GEOMETRIES[request.param]
    return _synthetic_series(tmp_path / "series", affine, uid_seed=request.param)


def _write(series: SyntheticSeries, out_path: Path, **overrides: object) -> Path:
    arguments: dict[str, object] = {
        "source_files": series.files,
        "label_names": SYNTHETIC_NAMES,
        "out_path": out_path,
        "algorithm_version": VERSION,
    }
    arguments.update(overrides)
    labels = arguments.pop("labels", series.labels)
    return write_dicom_seg(labels, **arguments)  # type: ignore[arg-type]


# --- a phantom CT ------------------------------------------------------------------------------


def test_seg_is_segmentation_storage_in_the_source_study(phantom_case: SegCase) -> None:
    seg = pydicom.dcmread(phantom_case.seg_path)
    source = pydicom.dcmread(phantom_case.source_files[0], stop_before_pixels=True)
    assert seg.SOPClassUID == SegmentationStorage
    assert (seg.Modality, seg.SegmentationType) == ("SEG", "BINARY")
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert not list(phantom_case.seg_path.parent.glob(".tmp-*"))


def test_seg_references_every_source_instance_of_the_series(phantom_case: SegCase) -> None:
    seg = pydicom.dcmread(phantom_case.seg_path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in phantom_case.source_files]
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        source.SOPInstanceUID for source in sources
    }


def _assert_segments_are_the_structures_present(case: SegCase, count: int, algorithm: str) -> None:
    seg = hd.seg.segread(case.seg_path)
    present = sorted(int(v) for v in np.unique(case.labels.array) if v > 0)
    assert len(present) == count
    descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.segment_label for d in descriptions] == [case.names[v] for v in present]
    assert {d.algorithm_type for d in descriptions} == {hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC}
    identification = descriptions[0].algorithm_identification[0]
    assert (identification.AlgorithmName, identification.AlgorithmVersion) == (algorithm, VERSION)


def _assert_frames_rebuild_the_label_map(case: SegCase) -> None:
    seg = pydicom.dcmread(case.seg_path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in case.source_files]
    labels = case.labels
    rebuilt, covered = rebuild_label_map(seg, sources, case.names, labels.shape, labels.affine_ras)
    assert covered.max() == 1  # no voxel claimed by two segments or two frames
    assert np.array_equal(rebuilt, labels.array)


def test_seg_segments_are_the_structures_present_by_name(phantom_case: SegCase) -> None:
    _assert_segments_are_the_structures_present(phantom_case, 5, ALGORITHM)


def test_seg_frames_rebuild_the_label_map_voxel_for_voxel(phantom_case: SegCase) -> None:
    _assert_frames_rebuild_the_label_map(phantom_case)


def _blank_uids(files: list[Path]) -> None:
    """Blank the UIDs in the data sets, as an anonymiser does; the file meta keeps its own."""
    for path in files:
        dataset = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
            setattr(dataset, keyword, "")
        dataset.save_as(path)


def test_source_whose_uids_were_removed_is_refused(tmp_path: Path) -> None:
    files = write_phantom_dicom(tmp_path / "ct", PHANTOM_SEED)
    _blank_uids(files)
    with pytest.raises(DicomSegSourceError, match=r"empty or missing SOPClassUID, SOPInstance"):
        write_dicom_seg(
            small_phantom(PHANTOM_SEED)[1],
            source_files=files,
            label_names=PHANTOM_LABELS,
            out_path=tmp_path / "seg.dcm",
            algorithm_version=VERSION,
        )
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"SOPClassUID": EnhancedCTImageStorage}, "Enhanced CT Image Storage with 1 frame"),
        ({"NumberOfFrames": 2}, "CT Image Storage with 2 frame"),
    ],
    ids=["enhanced", "multi-frame"],
)
def test_enhanced_or_multiframe_source_is_not_implemented(
    tmp_path: Path, attributes: dict[str, object], message: str
) -> None:
    files = write_phantom_dicom(tmp_path / "ct", PHANTOM_SEED)
    dataset = pydicom.dcmread(files[3])
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.save_as(files[3])
    with pytest.raises(UnsupportedDicomSourceError, match=message) as error:
        write_dicom_seg(
            small_phantom(PHANTOM_SEED)[1],
            source_files=files,
            label_names=PHANTOM_LABELS,
            out_path=tmp_path / "seg.dcm",
            algorithm_version=VERSION,
        )
    assert files[3].name in str(error.value)
    assert not (tmp_path / "seg.dcm").exists()


# --- synthetic series in awkward orientations --------------------------------------------------


def test_frames_reference_the_source_slice_they_segment(
    synthetic: SyntheticSeries, tmp_path: Path
) -> None:
    seg = pydicom.dcmread(_write(synthetic, tmp_path / "seg.dcm"))
    slice_of = {pydicom.dcmread(p).SOPInstanceUID: k for k, p in enumerate(synthetic.files)}
    value_of = value_of_segment(seg, SYNTHETIC_NAMES)
    rebuilt = np.zeros_like(synthetic.written_labels)
    for uid, number, mask in seg_frames(seg):
        # file k holds written slice k; its rows run along j and its columns along i
        rebuilt[:, :, slice_of[uid]][mask.T] = value_of[number]
    assert np.array_equal(rebuilt, synthetic.written_labels)
    assert sorted(value_of.values()) == [1, 3, 7]


def test_highdicom_reads_each_source_instance_back(
    synthetic: SyntheticSeries, tmp_path: Path
) -> None:
    seg = hd.seg.segread(_write(synthetic, tmp_path / "seg.dcm"))
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in synthetic.files]
    masks = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    segment_numbers = np.searchsorted([0, 1, 3, 7], synthetic.written_labels)
    assert np.array_equal(masks, segment_numbers.transpose(2, 1, 0))
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == [
        "liver",
        "spleen",
        "lesion",
    ]


def test_patient_attributes_are_copied_but_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = _synthetic_series(
        tmp_path / "series", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="phi"
    )
    with caplog.at_level(logging.DEBUG):
        seg = pydicom.dcmread(_write(series, tmp_path / "seg.dcm"))
    assert (seg.PatientID, str(seg.PatientName)) == (PATIENT_ID, PATIENT_NAME)
    assert caplog.records
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    identifiers = (source.SOPInstanceUID, source.StudyInstanceUID, source.SeriesInstanceUID)
    for value in (PATIENT_ID, PATIENT_NAME, *FAKE_PHI.values(), *identifiers):
        assert value not in caplog.text


def test_copies_of_a_source_instance_are_used_once(tmp_path: Path) -> None:
    series = _synthetic_series(tmp_path / "series", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="c")
    copy = tmp_path / "copy" / "same-instance.dcm"
    copy.parent.mkdir()
    copy.write_bytes(series.files[2].read_bytes())
    seg = pydicom.dcmread(_write(series, tmp_path / "seg.dcm", source_files=[*series.files, copy]))
    (referenced,) = seg.ReferencedSeriesSequence
    assert len(referenced.ReferencedInstanceSequence) == len(series.files)


def _shifted(labels: Volume, voxels: tuple[float, float, float]) -> Volume:
    affine = labels.affine_ras.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array(voxels)
    return Volume(labels.array, affine)


def _rescaled(labels: Volume, factor: float) -> Volume:
    affine = labels.affine_ras.copy()
    affine[:3, :3] *= factor
    return Volume(labels.array, affine)


WRONG_GRIDS = [
    ("half-voxel shift", lambda s: {"labels": _shifted(s.labels, (0.5, 0, 0))}, "0.500 voxel"),
    ("one slice further", lambda s: {"labels": _shifted(s.labels, (0, 0, 1))}, "outside"),
    ("other spacing", lambda s: {"labels": _rescaled(s.labels, 0.5)}, "not one voxel"),
    ("a slice file missing", lambda s: {"source_files": s.files[1:]}, "have no source image"),
    (
        "one slice fewer",
        lambda s: {"labels": Volume(s.labels.array[:, :, 1:], s.labels.affine_ras)},
        "outside",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "message"), WRONG_GRIDS, ids=[case for case, _, _ in WRONG_GRIDS]
)
def test_label_map_on_another_grid_is_refused(
    tmp_path: Path, case: str, change: object, message: str
) -> None:
    series = _synthetic_series(
        tmp_path / "series", SYNTHETIC_GEOMETRIES["oblique-flipped"], uid_seed="grid"
    )
    with pytest.raises(GeometryMismatchError, match="not on the grid of the source series") as err:
        _write(series, tmp_path / "seg.dcm", **change(series))  # type: ignore[operator]
    assert message in str(err.value)
    assert not (tmp_path / "seg.dcm").exists()


def test_label_map_of_another_series_is_refused(tmp_path: Path) -> None:
    axial = _synthetic_series(tmp_path / "axial", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="a")
    oblique = _synthetic_series(
        tmp_path / "oblique", SYNTHETIC_GEOMETRIES["oblique-flipped"], uid_seed="o"
    )
    with pytest.raises(GeometryMismatchError, match="not on the grid of the source series"):
        _write(axial, tmp_path / "seg.dcm", labels=oblique.labels)


def test_positions_rounded_by_the_scanner_are_accepted(tmp_path: Path) -> None:
    series = _synthetic_series(
        tmp_path / "series", SYNTHETIC_GEOMETRIES["oblique-flipped"], uid_seed="round"
    )
    nudged = _shifted(series.labels, (0.01, -0.01, 0.02))
    seg = hd.seg.segread(_write(series, tmp_path / "seg.dcm", labels=nudged))
    assert seg.segment_numbers == [1, 2, 3]


def test_files_of_two_series_are_refused(tmp_path: Path) -> None:
    first = _synthetic_series(tmp_path / "a", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="1")
    second = _synthetic_series(tmp_path / "b", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="2")
    with pytest.raises(DicomSegSourceError, match="must be one series"):
        _write(first, tmp_path / "seg.dcm", source_files=[*first.files, second.files[0]])


LABEL_ERRORS = [
    ("unnamed value", {}, {1: "liver", 3: "spleen"}, "value(s) [7]"),
    ("empty map", {1: 0, 3: 0, 7: 0}, SYNTHETIC_NAMES, "no structure"),
    ("negative value", {7: -2}, SYNTHETIC_NAMES, "negative value -2"),
    ("fractional value", {7: 0.5}, SYNTHETIC_NAMES, "non-integer"),
    ("blank name", {}, {**SYNTHETIC_NAMES, 3: " "}, "label_names[3]"),
    ("backslash in name", {}, {**SYNTHETIC_NAMES, 1: "liver\\segment"}, "label_names[1]"),
]


@pytest.mark.parametrize(
    ("case", "replace", "names", "message"), LABEL_ERRORS, ids=[c for c, *_ in LABEL_ERRORS]
)
def test_label_maps_that_cannot_become_segments_are_refused(
    tmp_path: Path,
    case: str,
    replace: dict[int, float],
    names: dict[int, str],
    message: str,
) -> None:
    series = _synthetic_series(tmp_path / "series", SYNTHETIC_GEOMETRIES["axial-lps"], uid_seed="l")
    array = series.labels.array.astype(np.float64 if case == "fractional value" else np.int16)
    original = array.copy()
    for old, new in replace.items():
        array[original == old] = new
    labels = Volume(array, series.labels.affine_ras)
    with pytest.raises(SegmentationLabelError) as error:
        _write(series, tmp_path / "seg.dcm", labels=labels, label_names=names)
    assert message in str(error.value)


# --- reference data (../shared/data) ---------------------------------------------------------


@pytest.fixture(scope="module")
def real_case(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> SegCase:
    """TotalSegmentator's 20-slice JPEG 2000 CT and its 31-structure segmentation."""
    tmp = tmp_path_factory.mktemp("real")
    files = with_restored_uids(shared_data / EXAMPLE / "example_ct_dicom", tmp / "ct")
    image = read_dicom_series(tmp / "ct", workers=1)
    labels = read_nifti(shared_data / EXAMPLE / "example_seg_dicom.nii.gz").to_closest_ras()
    assert labels.same_grid(image)
    dataset = json.loads((shared_data / REFERENCE / "dataset.json").read_text())
    names = {int(value): name for value, name in dataset["labels"].items()}
    names.update(TOTAL_NAMES_MISSING)
    seg_path = write_dicom_seg(
        labels,
        source_files=files,
        label_names=names,
        out_path=tmp / "out" / "seg.dcm",
        algorithm_name="TotalSegmentator",
        algorithm_version=VERSION,
    )
    return SegCase(seg_path, files, labels, names)


def test_real_ct_seg_has_its_31_structures_and_rebuilds_voxel_for_voxel(
    real_case: SegCase,
) -> None:
    _assert_segments_are_the_structures_present(real_case, 31, "TotalSegmentator")
    _assert_frames_rebuild_the_label_map(real_case)


def test_real_series_whose_anonymiser_removed_the_uids_is_refused(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = shared_data / EXAMPLE / "example_ct_dicom"
    labels = read_nifti(shared_data / EXAMPLE / "example_seg_dicom.nii.gz").to_closest_ras()
    with pytest.raises(DicomSegSourceError, match=r"empty or missing SOPClassUID, SOPInstance"):
        write_dicom_seg(
            labels,
            source_files=sorted(folder.iterdir()),
            label_names={int(v): f"s{v}" for v in np.unique(labels.array)},
            out_path=tmp_path / "seg.dcm",
            algorithm_version=VERSION,
        )
    assert not (tmp_path / "seg.dcm").exists()


def test_real_enhanced_multiframe_source_is_not_implemented(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = shared_data / "dicom2nifti_tests/tests/data/philips_enhanced/anatomical/001"
    labels = Volume(np.ones((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(UnsupportedDicomSourceError, match="Enhanced MR Image Storage") as error:
        write_dicom_seg(
            labels,
            source_files=sorted(folder.iterdir()),
            label_names={1: "brain"},
            out_path=tmp_path / "seg.dcm",
            algorithm_version=VERSION,
        )
    assert "IM-0001-0170-0001.dcm" in str(error.value)
