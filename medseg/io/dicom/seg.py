"""Label map -> DICOM Segmentation (SEG) object that references the series it was made from.

The label map lies on the grid that ``medseg.io.dicom.load_series`` built from the source
files (closest-RAS voxel order). A SEG, however, stores one frame per source image, pixel for
pixel, so the label map is mapped back onto the source images:

* For every source image, its pixel positions (ImagePositionPatient, ImageOrientationPatient
  and PixelSpacing, LPS millimetres converted to RAS by negating x and y) are taken through
  the inverse of ``labels.affine_ras`` to voxel indices. They must lie within
  ``GRID_TOLERANCE_VOXELS`` of voxel centres, step by exactly one voxel along a volume axis per
  row and column, and the images together must cover every voxel exactly once. Anything else
  means the label map is not on the source grid (another series, a resampled volume, a
  tilt-corrected or slice-equalised series) and raises ``GeometryMismatchError``. Because the
  mapping goes through the affine, flips, axis permutations and oblique orientations need no
  special cases.
* Frame ``f`` of the pixel array is source image ``f``; highdicom records, per frame, the
  referenced SOP instance and the segment number.

Decisions:

* Segmentation type BINARY, not LABELMAP. LABELMAP is a new SOP class (DICOM 2024c,
  highdicom >= 0.24); archives and viewers that predate it may refuse to store it or cannot
  display it, whereas BINARY Segmentation Storage is read by every SEG-capable viewer and PACS.
  The cost is one bit-packed frame per segment and slice that holds the segment (empty frames
  are omitted), which stays small.
* Segments are the named structures present in the map (value > 0 with at least one voxel),
  numbered 1..n in increasing label value; the segment label is the structure name. Named
  structures absent from the map get no segment. A value present in the map without a name is
  an error: dropping it would lose a structure silently.
* Tolerance: the reader stacks slices without resampling when their in-plane drift is below
  ``TILT_TOLERANCE_PX`` of a pixel, so a position within that fraction of a voxel centre is the
  voxel the reader filled from that image. A stricter test would refuse real series whose
  positions are decimal strings rounded by the scanner.
* Only classic single-frame CT, MR and PET images are supported as sources; enhanced or other
  multi-frame images raise ``UnsupportedDicomSourceError``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    CTImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from medseg.errors import (
    DicomFileError,
    DicomSegSourceError,
    GeometryMismatchError,
    SegmentationLabelError,
    UnsupportedDicomSourceError,
)
from medseg.io.atomic import atomic_path
from medseg.io.dicom.geometry import TILT_TOLERANCE_PX
from medseg.volume import Volume

logger = logging.getLogger(__name__)

SUPPORTED_SOURCE_CLASSES = frozenset(
    {CTImageStorage, MRImageStorage, PositronEmissionTomographyImageStorage}
)
GRID_TOLERANCE_VOXELS = TILT_TOLERANCE_PX
SEG_SERIES_NUMBER_OFFSET = 1000  # SEG series number = source series number + this
MAX_SERIES_NUMBER = 2**31 - 1  # SeriesNumber is an IS value
MANUFACTURER = "medseg"
DEVICE_SERIAL_NUMBER = "0"  # software has no serial number, but the SEG module requires one
MAX_LABEL_CHARS = 64  # SegmentLabel is a DICOM LO value
MAX_BINCOUNT_VALUE = 1 << 20  # above this, count label values by sorting instead

# Type 2 attributes that highdicom reads from the first source image: they must be present but
# may be empty, and some anonymisers delete them.
_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_GEOMETRY_VALUES = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
_REQUIRED_UIDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])  # and back: negate x and y
_NOT_ON_GRID = "label map is not on the grid of the source series"


@dataclass(frozen=True)
class SourceImage:
    """One source image's header (no pixel data) and the file it came from."""

    path: Path
    dataset: Dataset


def write_dicom_seg(
    labels: Volume,
    *,
    source_files: Sequence[Path],
    label_names: Mapping[int, str],
    out_path: Path,
    series_description: str = "medseg segmentation",
    algorithm_name: str = "medseg",
    algorithm_version: str,
) -> Path:
    """Write ``labels`` as a BINARY DICOM Segmentation that references ``source_files``.

    The SEG joins the source's study: highdicom copies the Patient, General Study, Patient
    Study and Clinical Trial modules (patient name, ID, birth date, sex, study UID, date,
    accession number...) and the FrameOfReferenceUID from the first source image, and
    references every source image by its SOP instance and series UIDs. A PACS needs exactly
    these to file the SEG with the images it segments, so copying them is not a leak of
    identifying data: the object goes back into the same patient's study, to the same
    recipients as the images. Treat the written file as being as identifying as the source
    images. Nothing from these attributes is logged.

    Args:
        labels: integer label map (0 = background) on the grid that ``load_series`` built from
            ``source_files``.
        source_files: the files of one classic single-frame CT, MR or PET series (e.g.
            ``DicomSeries.files``); copies of the same SOP instance are used once.
        label_names: structure name per label value; the names become the segment labels.
            Key 0 (background) is ignored; names of values absent from the map are unused.
        out_path: the SEG file to write (atomically; parent folders are created).
        series_description: SeriesDescription of the SEG series.
        algorithm_name: name of the algorithm that produced the labels (segment algorithm
            identification and ManufacturerModelName).
        algorithm_version: its version (segment algorithm identification and
            SoftwareVersions).

    Returns:
        ``out_path``.

    Raises:
        SegmentationLabelError: the map is not 3D, holds negative, non-integer or unnamed
            values, or no named structure; or a name or algorithm field is empty or too long.
        DicomFileError: a source file cannot be read as DICOM.
        UnsupportedDicomSourceError: a source file is not a classic single-frame CT/MR/PET
            image.
        DicomSegSourceError: a source lacks a UID a SEG must reference, or the files span
            several series or frames of reference.
        GeometryMismatchError: the label map is not on the grid of the source series.

    Example:
        >>> series = scan_dicom_files(files).series[0]
        >>> image = load_series(series)
        >>> write_dicom_seg(
        ...     predict(image), source_files=series.files, label_names={1: "liver"},
        ...     out_path=Path("out/seg.dcm"), algorithm_version="1.2.0")
    """
    started = time.perf_counter()
    _check_text("algorithm_name", algorithm_name)
    _check_text("algorithm_version", algorithm_version)
    _check_text("series_description", series_description)
    if labels.array.ndim != 3:
        raise SegmentationLabelError(f"label map must be 3D, got shape {labels.shape}")
    structures = structures_present(labels.array, label_names)
    sources = read_source_images(source_files)
    pixel_array = _source_frames(labels, sources, label_values=sorted(structures))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=structures[value],
            # No per-structure code list exists in medseg: a generic category and type, with
            # the structure named by the segment label.
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(sorted(structures), start=1)
    ]
    first = sources[0].dataset
    with _highdicom_quiet():
        segmentation = hd.seg.Segmentation(
            source_images=[source.dataset for source in sources],
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=derived_series_number(first, SEG_SERIES_NUMBER_OFFSET),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm_name,
            software_versions=algorithm_version,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_description=series_description,
        )
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        segmentation.save_as(tmp, enforce_file_format=True)
    logger.info(
        "wrote DICOM SEG with %d segment(s) over %d source image(s) to %s in %.1f s",
        len(descriptions),
        len(sources),
        out_path,
        time.perf_counter() - started,
    )
    return out_path


@contextlib.contextmanager
def _highdicom_quiet() -> Iterator[None]:
    """Silence highdicom's INFO/DEBUG records, which name source SOP instance UIDs.

    medseg logs no identifiers; warnings and errors still get through. The level is global to
    the process, so concurrent writers in threads may briefly see it changed.
    """
    highdicom_logger = logging.getLogger("highdicom")
    previous = highdicom_logger.level
    highdicom_logger.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        highdicom_logger.setLevel(previous)


def _check_text(field: str, value: str) -> None:
    """A DICOM LO value: 1 to 64 characters, not blank, no backslash or control characters."""
    if (
        not value
        or not value.strip()
        or len(value) > MAX_LABEL_CHARS
        or "\\" in value
        or any(ord(char) < 32 for char in value)
    ):
        raise SegmentationLabelError(
            f"{field} must be 1 to {MAX_LABEL_CHARS} characters of text without backslash or "
            f"control characters, got {value!r}"
        )


def structures_present(array: np.ndarray, label_names: Mapping[int, str]) -> dict[int, str]:
    """Names of the label values > 0 that occur in ``array``, by value."""
    present = _present_values(array)
    unnamed = [value for value in present if value not in label_names]
    if unnamed:
        raise SegmentationLabelError(
            f"label value(s) {unnamed} occur in the label map but have no name in label_names"
        )
    if not present:
        raise SegmentationLabelError(
            "the label map holds no structure (all voxels are 0): a SEG needs at least one segment"
        )
    structures = {value: label_names[value] for value in present}
    for value, name in structures.items():
        _check_text(f"label_names[{value}]", name)
    return structures


def _present_values(array: np.ndarray) -> list[int]:
    """Label values > 0 with at least one voxel, checked to be non-negative integers.

    Works one slice at a time so a large map is never copied whole.
    """
    if array.dtype == np.bool_:
        return [1] if bool(array.any()) else []
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise SegmentationLabelError(f"label map has non-numeric dtype {array.dtype}")
    present: set[int] = set()
    for k in range(array.shape[2]):
        plane = array[:, :, k]
        if plane.size == 0:
            continue
        if np.issubdtype(plane.dtype, np.floating) and not (
            np.all(np.isfinite(plane)) and np.all(plane == np.round(plane))
        ):
            raise SegmentationLabelError(
                f"label map slice k={k} holds non-integer or non-finite values"
            )
        low, high = plane.min(), plane.max()
        if low < 0:
            raise SegmentationLabelError(f"label map slice k={k} holds negative value {low}")
        values = plane.astype(np.int64, copy=False).ravel()
        if high < MAX_BINCOUNT_VALUE:
            present.update(np.flatnonzero(np.bincount(values)).tolist())
        else:
            present.update(np.unique(values).tolist())
    present.discard(0)
    return sorted(int(value) for value in present)


def read_source_images(source_files: Sequence[Path]) -> list[SourceImage]:
    """Read and check the source headers; one entry per distinct SOP instance, input order."""
    if not source_files:
        raise DicomSegSourceError("source_files", "no source files given")
    sources: list[SourceImage] = []
    seen: dict[str, Path] = {}
    for path in (Path(p) for p in source_files):
        dataset = _read_header(path)
        _check_source(path, dataset)
        instance_uid = str(dataset.SOPInstanceUID)
        if instance_uid in seen:  # not logged by name: paths may carry patient names
            continue
        seen[instance_uid] = path
        sources.append(SourceImage(path, dataset))
    first = sources[0]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        for source in sources[1:]:
            if source.dataset[keyword].value != first.dataset[keyword].value:
                raise DicomSegSourceError(
                    source.path,
                    f"{keyword} differs from that of {first.path}: the source files must be "
                    "one series",
                )
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in first.dataset:
            setattr(first.dataset, keyword, "")  # present-but-empty is valid for Type 2
    return sources


def _read_header(path: Path) -> Dataset:
    try:
        # highdicom needs only the metadata of the source images, not their pixels
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomFileError(path, f"unreadable DICOM file: {exc}") from exc


def _check_source(path: Path, dataset: Dataset) -> None:
    media_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop_class = str(dataset.get("SOPClassUID", "") or media_class)
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 0  # malformed: not a classic single-frame image either
    if sop_class not in SUPPORTED_SOURCE_CLASSES or frames != 1:
        name = UID(sop_class).name if sop_class and UID(sop_class).is_valid else repr(sop_class)
        raise UnsupportedDicomSourceError(
            path,
            f"{name} with {frames or 'unreadable NumberOfFrames'} frame(s): writing a SEG is "
            "implemented only for classic single-frame CT, MR and PET series (not enhanced or "
            "other multi-frame images)",
        )
    missing = [keyword for keyword in _REQUIRED_UIDS if not str(dataset.get(keyword, "") or "")]
    if missing:
        raise DicomSegSourceError(
            path,
            f"empty or missing {', '.join(missing)}: a SEG must reference the study, series and "
            "instance of each source image (were the UIDs removed by an anonymiser?)",
        )
    if not dataset.get("Rows") or not dataset.get("Columns"):
        raise DicomSegSourceError(path, "missing Rows or Columns: not an image")
    for keyword, count in _GEOMETRY_VALUES.items():
        if len(dataset.get(keyword) or ()) != count:
            raise DicomSegSourceError(
                path, f"missing or invalid {keyword}: cannot place the image on the label map"
            )


def _source_frames(
    labels: Volume, sources: list[SourceImage], *, label_values: list[int]
) -> np.ndarray:
    """(n_sources, rows, columns) segment numbers; frame ``f`` is source image ``f``.

    Segment number ``n`` is the ``n``-th smallest of ``label_values``; 0 is background.
    """
    placements = place_source_images(labels, sources)
    ranks = np.array([0, *label_values], dtype=np.int64)  # sorted, so rank = segment number
    dtype = np.uint8 if len(label_values) < 256 else np.uint16
    frames = np.empty((len(placements), placements[0].rows, placements[0].columns), dtype)
    for frame, placement in enumerate(placements):
        i, j, k = placement.voxel_indices()
        values = labels.array[i, j, k].astype(np.int64, copy=False)
        frames[frame] = np.searchsorted(ranks, values)
    return frames


def place_source_images(labels: Volume, sources: list[SourceImage]) -> list[ImagePlacement]:
    """Where each source image's pixels fall in ``labels``, checked to cover it exactly once.

    Raises:
        GeometryMismatchError: the label map is not on the grid of the source series.
    """
    placements = [_place_image(labels, source) for source in sources]
    _check_coverage(labels, placements)
    return placements


@dataclass(frozen=True)
class ImagePlacement:
    """Where a source image's pixels fall in the label map: pixel (r, c) is voxel
    ``start + c * column_step + r * row_step``."""

    path: Path
    start: np.ndarray  # (3,) voxel index of pixel (0, 0)
    column_step: np.ndarray  # (3,) one voxel along one axis, +-1
    row_step: np.ndarray
    rows: int
    columns: int

    @property
    def column_axis(self) -> int:
        return int(np.flatnonzero(self.column_step)[0])

    @property
    def row_axis(self) -> int:
        return int(np.flatnonzero(self.row_step)[0])

    @property
    def slice_axis(self) -> int:
        return 3 - self.column_axis - self.row_axis

    def voxel_indices(self) -> np.ndarray:
        """(3, rows, columns) voxel indices of every pixel."""
        row_index = np.arange(self.rows)[None, :, None]
        column_index = np.arange(self.columns)[None, None, :]
        return (
            self.start[:, None, None]
            + self.column_step[:, None, None] * column_index
            + self.row_step[:, None, None] * row_index
        )


def _place_image(labels: Volume, source: SourceImage) -> ImagePlacement:
    """Map one source image's pixel grid into the label map's voxel grid.

    Raises:
        GeometryMismatchError: a pixel is not at a voxel centre, a row or column step is not
            one voxel along one axis, or the image reaches outside the label map.
    """
    dataset = source.dataset
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    position_lps = np.array([float(v) for v in dataset.ImagePositionPatient])
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    to_voxel = np.linalg.inv(labels.affine_ras)
    origin = to_voxel[:3, :3] @ (position_lps * _LPS_TO_RAS) + to_voxel[:3, 3]
    # The first orientation vector is the direction of increasing column index, the second
    # that of increasing row index; PixelSpacing is (row spacing, column spacing).
    column_step = to_voxel[:3, :3] @ (orientation[:3] * column_spacing * _LPS_TO_RAS)
    row_step = to_voxel[:3, :3] @ (orientation[3:] * row_spacing * _LPS_TO_RAS)
    unit_column, unit_row = np.rint(column_step), np.rint(row_step)
    for name, step, unit in (("column", column_step, unit_column), ("row", row_step, unit_row)):
        if np.abs(unit).sum() != 1:
            raise GeometryMismatchError(
                f"{_NOT_ON_GRID}: {source.path}: one {name} step of the image spans "
                f"{np.round(step, 3).tolist()} voxels, not one voxel along one axis "
                "(different spacing or orientation)"
            )
    if np.array_equal(np.abs(unit_column), np.abs(unit_row)):
        raise GeometryMismatchError(
            f"{_NOT_ON_GRID}: {source.path}: the image's rows and columns run along the same "
            "axis of the label map"
        )
    start = np.rint(origin)
    # The offset from the voxel grid is affine in (row, column), so it peaks at a corner.
    corners = np.array([[0, 0], [0, columns - 1], [rows - 1, 0], [rows - 1, columns - 1]])
    exact = origin + corners[:, 1:2] * column_step + corners[:, 0:1] * row_step
    nearest = start + corners[:, 1:2] * unit_column + corners[:, 0:1] * unit_row
    offset = float(np.max(np.abs(exact - nearest)))
    if offset > GRID_TOLERANCE_VOXELS:
        raise GeometryMismatchError(
            f"{_NOT_ON_GRID}: {source.path}: its pixels lie up to {offset:.3f} voxel from the "
            f"label map's voxel centres (tolerance {GRID_TOLERANCE_VOXELS} voxel)"
        )
    if np.any(nearest < 0) or np.any(nearest >= np.array(labels.shape[:3])):
        raise GeometryMismatchError(
            f"{_NOT_ON_GRID}: {source.path}: the image's corners fall on voxels "
            f"{nearest.astype(int).tolist()}, outside the label map of shape {labels.shape}"
        )
    return ImagePlacement(
        path=source.path,
        start=start.astype(np.int64),
        column_step=unit_column.astype(np.int64),
        row_step=unit_row.astype(np.int64),
        rows=rows,
        columns=columns,
    )


def _check_coverage(labels: Volume, placements: list[ImagePlacement]) -> None:
    """Every voxel of the label map must come from exactly one source pixel.

    Raises:
        GeometryMismatchError: images are not parallel slices of the map, overlap, are
            smaller than its slices, or some of its slices have no image.
    """
    shape = labels.shape[:3]
    first = placements[0]
    slice_axis = first.slice_axis
    owner: dict[int, Path] = {}
    for placement in placements:
        if (placement.column_axis, placement.row_axis) != (first.column_axis, first.row_axis):
            raise GeometryMismatchError(
                f"{_NOT_ON_GRID}: {placement.path} and {first.path} are not parallel slices "
                "of the label map"
            )
        if (placement.columns, placement.rows) != (
            shape[placement.column_axis],
            shape[placement.row_axis],
        ):
            raise GeometryMismatchError(
                f"{_NOT_ON_GRID}: {placement.path} has {placement.columns} columns x "
                f"{placement.rows} rows but the label map's slices have "
                f"{shape[placement.column_axis]} x {shape[placement.row_axis]} voxels"
            )
        index = int(placement.start[slice_axis])
        if index in owner:
            raise GeometryMismatchError(
                f"{_NOT_ON_GRID}: {placement.path} and {owner[index]} fall on the same slice "
                f"{index} of the label map"
            )
        owner[index] = placement.path
    missing = sorted(set(range(shape[slice_axis])) - set(owner))
    if missing:
        raise GeometryMismatchError(
            f"{_NOT_ON_GRID}: {len(missing)} of its {shape[slice_axis]} slices along axis "
            f"{'ijk'[slice_axis]} have no source image (first: {missing[:5]})"
        )


def derived_series_number(source: Dataset, offset: int) -> int:
    """The SeriesNumber of ``source`` + ``offset``, or ``offset`` when that leaves the IS range.

    A derived series (the SEG of an image series, the SR and capture of a SEG) then lists
    next to its source without clashing.
    """
    try:
        number = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    if not 0 <= number <= MAX_SERIES_NUMBER - offset:
        number = 0
    return number + offset
