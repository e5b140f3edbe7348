"""Label map <-> DICOM RT Structure Set (RTSTRUCT), the contours treatment planning systems read.

Writing (``write_rtstruct``): the label map lies on the grid ``load_series`` built from the
source series, and the source images are placed on it exactly as for the DICOM SEG
(``medseg.io.dicom.seg.place_source_images``: anything not on the source grid raises
``GeometryMismatchError``). Each source image is one plane of voxels of the map; on it, every
structure's mask (inside its bounding box, padded by one empty voxel so that every contour
closes) is traced by scikit-image's ``find_contours`` at level 0.5, i.e. through the midpoints
between voxel centres. The contour points, in voxel indices of that plane, go through the
map's affine to patient coordinates (LPS, mm), so oblique, sagittal or flipped acquisitions
get contours in their own image planes, and every contour references the SOP instance of its
image.

Decisions:

* One ROI per named structure present in the map, in increasing label value:
  ROINumber = label value, ROIName = structure name, ROIGenerationAlgorithm AUTOMATIC,
  RTROIInterpretedType ORGAN. ROIDisplayColor is the colour the overlay capture draws the same
  structure in (``medseg.io.dicom.sc.segment_colour`` of its SEG segment number: its rank among
  the structures present), so SEG capture and RTSTRUCT of a case agree.
* Holes: the outline of a hole (a vertebral canal, a lumen) is written as a contour of its own,
  and so is an island inside a hole. A point belongs to the ROI when it lies inside an odd
  number of the ROI's contours on that plane (the even-odd rule, which Eclipse, RayStation and
  3D Slicer apply); ``read_rtstruct`` applies it too. Readers that fill every contour see holes
  filled.
* Contours are lossy: they cut the corners of voxels diagonally, so a one-voxel-wide diagonal
  chain becomes separate diamonds. Read back with ``read_rtstruct``, the phantom's structures
  keep a Dice of 1.0 (tests/io/dicom/test_rtstruct.py asserts >= 0.95).
* The object joins the source's study: highdicom's ``copy_patient_and_study_information``
  (the same modules the SEG copies) takes the Patient, General Study and Patient Study
  attributes from the first source image. Treat the file as being as identifying as the
  source images; nothing from these attributes is logged.
* Coordinates are written with 4 decimals (0.1 µm), within the DS value's 16 characters.
  Implicit VR Little Endian, the transfer syntax every RT system reads: in explicit VR a DS
  value's length has 16 bits, too few for the ContourData of a long outline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage
from scipy import ndimage
from skimage import draw, measure

from medseg.errors import DicomFileError, GeometryMismatchError, SegmentationLabelError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.sc import segment_colour
from medseg.io.dicom.seg import (
    GRID_TOLERANCE_VOXELS,
    MANUFACTURER,
    ImagePlacement,
    SourceImage,
    _check_text,
    derived_series_number,
    place_source_images,
    read_source_images,
    structures_present,
)
from medseg.volume import Volume

logger = logging.getLogger(__name__)

RTSTRUCT_SERIES_NUMBER_OFFSET = 1003  # source + this; the SEG takes + 1000, its SR and capture
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # RTReferencedStudySequence's SOP class
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
CLOSED_PLANAR = "CLOSED_PLANAR"
COORDINATE_FORMAT = ".4f"
CONTOUR_DATA = Tag(0x3006, 0x0050)


@dataclass(frozen=True)
class StructureSetLabels:
    """An RT Structure Set read onto a grid: the label map (value = ROINumber) and ROI names."""

    labels: Volume
    names: dict[int, str]


def write_rtstruct(
    labels: Volume,
    *,
    source_files: Sequence[Path],
    label_names: Mapping[int, str],
    out_path: Path,
    structure_set_label: str = "medseg",
    series_description: str = "medseg structures",
    algorithm_name: str = "medseg",
    algorithm_version: str,
) -> Path:
    """Write the structures of ``labels`` as an RT Structure Set on the images of ``source_files``.

    Contours are closed planar polygons, one or more per structure and source image; the
    outlines of holes are contours too and the even-odd rule decides what is inside (see the
    module doc).

    Args:
        labels: integer label map (0 = background) on the grid that ``load_series`` built from
            ``source_files``.
        source_files: the files of one classic single-frame CT, MR or PET series.
        label_names: structure name per label value (the ROI names); names of values absent
            from the map are unused.
        out_path: the file to write (atomically; parent folders are created).
        structure_set_label: StructureSetLabel.
        series_description: SeriesDescription of the RTSTRUCT series.
        algorithm_name: ManufacturerModelName and, with the version, each ROI's
            ROIGenerationDescription.
        algorithm_version: SoftwareVersions.

    Returns:
        ``out_path``.

    Raises:
        SegmentationLabelError: the map is not 3D, holds negative, non-integer or unnamed
            values, or no named structure; or a name or text field is empty or too long.
        DicomFileError: a source file cannot be read as DICOM.
        UnsupportedDicomSourceError: a source file is not a classic single-frame CT/MR/PET
            image.
        DicomSegSourceError: a source lacks a UID that must be referenced, or the files span
            several series or frames of reference.
        GeometryMismatchError: the label map is not on the grid of the source series (the
            message names the source file).
    """
    for field, value in (
        ("structure_set_label", structure_set_label),
        ("series_description", series_description),
        ("algorithm_name", algorithm_name),
        ("algorithm_version", algorithm_version),
    ):
        _check_text(field, value)
    if labels.array.ndim != 3:
        raise SegmentationLabelError(f"label map must be 3D, got shape {labels.shape}")
    structures = structures_present(labels.array, label_names)
    sources = read_source_images(source_files)
    placements = place_source_images(labels, sources)
    first = sources[0].dataset
    dataset = hd.SOPClass(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=hd.UID(),
        series_number=derived_series_number(first, RTSTRUCT_SERIES_NUMBER_OFFSET),
        sop_instance_uid=hd.UID(),
        sop_class_uid=RTStructureSetStorage,
        instance_number=1,
        modality="RTSTRUCT",
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        series_description=series_description,
        # explicit VR gives DS values a 16-bit length: too short for a long contour
        transfer_syntax_uid=ImplicitVRLittleEndian,
    )
    if "SpecificCharacterSet" in first:  # the copied names are in the source's character set
        dataset.SpecificCharacterSet = first.SpecificCharacterSet
    dataset.copy_patient_and_study_information(first)
    dataset.OperatorsName = ""  # Type 2 of the RT Series module
    now = datetime.now()
    dataset.StructureSetLabel = structure_set_label
    dataset.StructureSetDate, dataset.StructureSetTime = f"{now:%Y%m%d}", f"{now:%H%M%S}"
    frame_uid = str(first.FrameOfReferenceUID)
    dataset.ReferencedFrameOfReferenceSequence = [_referenced_frame(first, sources)]
    generation = f"{algorithm_name} {algorithm_version}"
    dataset.StructureSetROISequence = [
        _roi(value, name, frame_uid, generation) for value, name in structures.items()
    ]
    contours = _contours(labels, sources, placements, sorted(structures))
    dataset.ROIContourSequence = [
        _roi_contour(value, rank, contours[value])
        for rank, value in enumerate(sorted(structures), start=1)
    ]
    dataset.RTROIObservationsSequence = [_observation(value) for value in sorted(structures)]
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    logger.info(
        "wrote RTSTRUCT with %d ROI(s), %d contour(s) over %d source image(s) to %s",
        len(structures),
        sum(len(items) for items in contours.values()),
        len(sources),
        out_path,
    )
    return out_path


def _referenced_frame(first: Dataset, sources: list[SourceImage]) -> Dataset:
    """Frame of reference -> study -> series -> every source image."""
    series = Dataset()
    series.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series.ContourImageSequence = [_image_reference(source.dataset) for source in sources]
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = str(first.FrameOfReferenceUID)
    frame.RTReferencedStudySequence = [study]
    return frame


def _image_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(source.SOPClassUID)
    item.ReferencedSOPInstanceUID = str(source.SOPInstanceUID)
    return item


def _roi(value: int, name: str, frame_uid: str, generation: str) -> Dataset:
    item = Dataset()
    item.ROINumber = value
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = generation
    return item


def _roi_contour(value: int, segment_number: int, contours: list[Dataset]) -> Dataset:
    item = Dataset()
    item.ReferencedROINumber = value
    item.ROIDisplayColor = [round(channel * 255) for channel in segment_colour(segment_number)]
    item.ContourSequence = contours
    return item


def _observation(value: int) -> Dataset:
    item = Dataset()
    item.ObservationNumber = value
    item.ReferencedROINumber = value
    item.RTROIInterpretedType = "ORGAN"
    item.ROIInterpreter = ""
    return item


def _contours(
    labels: Volume,
    sources: list[SourceImage],
    placements: list[ImagePlacement],
    values: list[int],
) -> dict[int, list[Dataset]]:
    """The contour items of every structure, source image by source image along the slices."""
    contours: dict[int, list[Dataset]] = {value: [] for value in values}
    array = np.asarray(labels.array)
    order = sorted(range(len(placements)), key=lambda n: _slice_index(placements[n]))
    for n in order:
        axis, index = placements[n].slice_axis, _slice_index(placements[n])
        plane = array[_plane_of(axis, index)]
        reference = _image_reference(sources[n].dataset)
        for value, outline in _plane_outlines(plane, values):
            voxels = np.insert(outline, axis, index, axis=1)  # (points, 3) voxel indices
            ras = voxels @ labels.affine_ras[:3, :3].T + labels.affine_ras[:3, 3]
            contours[value].append(_contour_item(ras * RAS_TO_LPS, reference))
    return contours


def _slice_index(placement: ImagePlacement) -> int:
    return int(placement.start[placement.slice_axis])


def _plane_outlines(plane: np.ndarray, values: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(value, (points, 2) plane indices) of every closed outline of each structure on the
    plane, its last point not repeating the first; outer outlines and those of holes."""
    boxes = ndimage.find_objects(plane.astype(np.int32, copy=False))
    for value in values:
        box = boxes[value - 1] if value <= len(boxes) else None
        if box is None:
            continue
        mask = np.pad(plane[box] == value, 1).astype(np.float32)
        offset = np.array([box[0].start - 1.0, box[1].start - 1.0])
        for outline in measure.find_contours(mask, 0.5):
            yield value, outline[:-1] + offset


def _contour_item(points_lps: np.ndarray, reference: Dataset) -> Dataset:
    item = Dataset()
    item.ContourImageSequence = [reference]
    item.ContourGeometricType = CLOSED_PLANAR
    item.NumberOfContourPoints = len(points_lps)
    # pydicom turns every DS value assigned into a validated DSfloat (about 0.1 ms each, and
    # a whole-body CT's contours hold millions): the values are formatted once and stored as
    # the element's bytes, which pydicom writes as they are.
    text = "\\".join(format(float(v), COORDINATE_FORMAT) for v in points_lps.ravel())
    value = text.encode("ascii")
    value += b" " * (len(value) % 2)  # DICOM values have even length
    item[CONTOUR_DATA] = RawDataElement(CONTOUR_DATA, "DS", len(value), value, 0, True, True)
    return item


def read_rtstruct(path: Path, geometry: Volume) -> StructureSetLabels:
    """The ROIs of an RT Structure Set as a label map on the grid of ``geometry``.

    Each closed planar contour must lie in a plane of voxels of the grid (within
    ``GRID_TOLERANCE_VOXELS``); it is rasterized with scikit-image's ``polygon`` (voxels whose
    centres lie inside), and the contours of an ROI on one plane are combined by the even-odd
    rule (exclusive or), so hole outlines cut holes. The voxel's value is the ROINumber. Point
    and open contours (markers, lines) enclose no voxel and are left out, with a warning.

    Args:
        path: the RTSTRUCT file.
        geometry: any volume on the target grid (e.g. the source series read by
            ``read_dicom_series``); only its shape and affine are used.

    Returns:
        The label map (uint16) and the ROI names by ROINumber.

    Raises:
        DicomFileError: the file is not a readable RT Structure Set, or an ROI number is
            claimed by no ROI or a value is malformed.
        GeometryMismatchError: a contour does not lie in a plane of voxels of the grid, or
            two ROIs claim the same voxel (the message names the file).
    """
    path = Path(path)
    dataset = _read_structure_set(path)
    names = {int(item.ROINumber): str(item.ROIName) for item in dataset.StructureSetROISequence}
    shape = geometry.shape[:3]
    labels = np.zeros(shape, np.uint16)
    to_voxel = np.linalg.inv(geometry.affine_ras)
    skipped = 0
    for roi in dataset.get("ROIContourSequence") or ():
        number = int(roi.ReferencedROINumber)
        if number not in names or not 0 < number < 2**16:
            raise DicomFileError(path, f"ROI contour references unknown ROINumber {number}")
        planes: dict[tuple[int, int], np.ndarray] = {}
        for contour in roi.get("ContourSequence") or ():
            if contour.get("ContourGeometricType") != CLOSED_PLANAR:
                skipped += 1
                continue
            points_lps = np.asarray(contour.ContourData, float).reshape(-1, 3)
            voxels = (points_lps * RAS_TO_LPS) @ to_voxel[:3, :3].T + to_voxel[:3, 3]
            axis, index = _contour_plane(voxels, shape, path, names[number])
            inside = _filled(np.delete(voxels, axis, axis=1), np.delete(shape, axis))
            if (axis, index) in planes:
                planes[axis, index] ^= inside
            else:
                planes[axis, index] = inside
        for (axis, index), inside in planes.items():
            plane = labels[_plane_of(axis, index)]  # a view
            clash = inside & (plane != 0)
            if clash.any():
                other = names.get(int(plane[clash][0]), "?")
                raise GeometryMismatchError(
                    f"{path}: ROIs {other!r} and {names[number]!r} both claim "
                    f"{int(clash.sum())} voxel(s) of plane {'ijk'[axis]}={index}: a label map "
                    "holds one structure per voxel"
                )
            plane[inside] = number
    if skipped:
        logger.warning("%s: %d point or open contour(s) enclose no voxel: left out", path, skipped)
    return StructureSetLabels(geometry.with_array(labels), names)


def _read_structure_set(path: Path) -> Dataset:
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomFileError(path, f"unreadable DICOM file: {exc}") from exc
    if str(dataset.get("SOPClassUID", "")) != RTStructureSetStorage:
        raise DicomFileError(path, "not an RT Structure Set (SOPClassUID is not RTSTRUCT's)")
    if "StructureSetROISequence" not in dataset:
        raise DicomFileError(path, "RT Structure Set without StructureSetROISequence")
    return dataset


def _contour_plane(
    voxels: np.ndarray, shape: tuple[int, ...], path: Path, roi_name: str
) -> tuple[int, int]:
    """(axis, index) of the plane of voxels a contour lies in.

    Raises:
        GeometryMismatchError: no axis is constant along the contour at a voxel centre
            inside the grid.
    """
    for axis in range(3):
        coordinate = voxels[:, axis]
        index = int(np.rint(coordinate.mean()))
        if np.max(np.abs(coordinate - index)) <= GRID_TOLERANCE_VOXELS and 0 <= index < shape[axis]:
            return axis, index
    spread = np.round(np.ptp(voxels, axis=0), 3).tolist()
    raise GeometryMismatchError(
        f"{path}: a contour of ROI {roi_name!r} does not lie in a plane of voxels of the grid "
        f"of shape {tuple(shape)} (its extent in voxels: {spread}): is this RTSTRUCT of "
        "another series?"
    )


def _filled(points: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """The (shape) mask of the voxels whose centres lie inside the polygon ``points``."""
    inside = np.zeros(tuple(int(n) for n in shape), bool)
    rows, columns = draw.polygon(points[:, 0], points[:, 1], shape=inside.shape)
    inside[rows, columns] = True
    return inside


def _plane_of(axis: int, index: int) -> tuple[slice | int, ...]:
    """The index of plane ``index`` along ``axis`` of a 3D array."""
    where: list[slice | int] = [slice(None)] * 3
    where[axis] = index
    return tuple(where)
