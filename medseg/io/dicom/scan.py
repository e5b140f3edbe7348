"""Read DICOM headers: recognise DICOM files by content and turn each frame into a record.

A file is DICOM when it carries the Part-10 ``DICM`` marker, or (older files without a
preamble) when it parses as a data set that starts with a group 0x0002/0x0008 element.
Each image frame becomes a ``FrameRecord`` with its geometry and modality LUT; files that are
not scans (DICOMDIR, SR, RT, secondary captures, localizers, colour images...) become a
``SkippedFile`` with the reason.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medseg.errors import DicomFileError, UnreadableInputError
from medseg.io.dicom.fastpath import PixelDataLayout, pixel_data_layout
from medseg.io.dicom.geometry import orthonormal_orientation
from medseg.io.dicom.metadata import series_metadata
from medseg.io.dicom.mosaic import mosaic_records

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
}
NON_VOLUME_IMAGE_TYPES = {"LOCALIZER", "SCOUT", "SCREEN SAVE"}
GROUPING_DECIMALS = 4
SHARED_GROUPS_TAG = 0x52009229  # SharedFunctionalGroupsSequence
DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class FrameRecord:
    """One image frame: where it is, how to scale it, and which file/frame holds it."""

    path: Path
    frame_index: int | None  # index within a multi-frame file; None for a single-frame file
    position_lps: tuple[float, float, float]
    orientation: tuple[float, ...]  # six direction cosines (row direction, column direction)
    pixel_spacing_mm: tuple[float, float]  # DICOM order: (row spacing, column spacing)
    rows: int
    columns: int
    rescale_slope: float
    rescale_intercept: float
    instance_uid: str
    split_key: tuple[Any, ...]  # frames of one series with different keys are split apart
    mosaic_grid: int = 0  # tiles per side of a Siemens mosaic image holding this frame; 0 if none
    pixel_layout: PixelDataLayout | None = None  # set when the fast path can read the pixels
    transfer_syntax: str = ""


@dataclass
class DicomFileHeader:
    """What a DICOM image file contributes: its frames and series-level facts."""

    path: Path
    series_uid: str
    frames: list[FrameRecord]
    thickness_mm: float | None
    spacing_between_slices_mm: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedFile:
    """A DICOM file that is not a scan volume, with the reason."""

    path: Path
    reason: str
    series_uid: str = ""


def dicom_kind(path: Path) -> str | None:
    """Cheap content test: "part10" (DICM marker), "raw" (data set starting with group
    0002/0008, no preamble) or None (not DICOM).

    Raises:
        UnreadableInputError: the file cannot be opened or read (it may be a slice).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as error:
        raise UnreadableInputError(path, f"cannot be read ({error.strerror})") from error
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) < 8:
        return None
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return "raw" if group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008) else None


def read_header(
    path: Path, *, known_series: Container[str] = ()
) -> DicomFileHeader | SkippedFile | None:
    """Read one file's header; None if it is not DICOM at all.

    Series-level metadata is only extracted for a series not in ``known_series`` (it is the
    same for every file of a series, and extracting it dominates the cost of a header).

    Raises:
        DicomFileError: the file is DICOM but malformed or lacks the geometry of an image.
        UnreadableInputError: the file cannot be read at all.
    """
    kind = dicom_kind(path)
    if kind is None:
        return None
    try:
        # defer_size keeps big values (pixel data) on disk but still lists their elements
        dataset = pydicom.dcmread(path, defer_size=DEFER_BYTES, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomFileError(path, f"unreadable DICOM header: {exc}") from exc
    if "DirectoryRecordSequence" in dataset:
        return SkippedFile(path, "DICOMDIR index file, not an image")
    if not any(elem.tag.group in (0x0008, 0x0020, 0x0028) for elem in dataset):
        if kind == "raw":
            return None
        if "PixelData" in dataset:
            raise DicomFileError(
                path, "pixel data without SOP class, image size or geometry: cannot interpret it"
            )
        return SkippedFile(path, "DICOM file without image attributes or pixel data")
    try:
        return _classify(path, dataset, known_series)
    except DicomFileError:
        raise
    except (AttributeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DicomFileError(path, f"malformed DICOM attribute: {exc}") from exc


def _classify(
    path: Path, dataset: Dataset, known_series: Container[str]
) -> DicomFileHeader | SkippedFile:
    media_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop_class = str(dataset.get("SOPClassUID", "") or media_class)
    series_uid = str(dataset.get("SeriesInstanceUID", ""))
    if sop_class == DICOMDIR_SOP_CLASS:
        return SkippedFile(path, "DICOMDIR index file, not an image", series_uid)
    if sop_class and sop_class not in VOLUME_SOP_CLASSES:
        name = UID(sop_class).name if UID(sop_class).is_valid else sop_class
        return SkippedFile(path, f"{name}: not a scan volume", series_uid)
    pixel_tags_seen = "PixelData" in dataset or "FloatPixelData" in dataset
    if not pixel_tags_seen:
        return SkippedFile(path, "no pixel data", series_uid)
    image_type = [str(value).upper() for value in dataset.get("ImageType", [])]
    flagged = NON_VOLUME_IMAGE_TYPES.intersection(image_type)
    if flagged:
        return SkippedFile(
            path,
            f"{sorted(flagged)[0].lower()} image (ImageType {'/'.join(image_type)})",
            series_uid,
        )
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        return SkippedFile(path, f"colour image ({photometric}): not a scan volume", series_uid)
    if not series_uid:
        # Some anonymisers drop the UID; fall back to what still tells series apart.
        series_uid = "no-uid:" + "|".join(
            str(value)
            for value in (
                path.parent,
                dataset.get("StudyInstanceUID", ""),
                dataset.get("SeriesNumber", ""),
                dataset.get("FrameOfReferenceUID", ""),
            )
        )
    frames = _frame_records(path, dataset, image_type)
    return DicomFileHeader(
        path=path,
        series_uid=series_uid,
        frames=frames,
        thickness_mm=_shared_float(dataset, "PixelMeasuresSequence", "SliceThickness"),
        spacing_between_slices_mm=_shared_float(
            dataset, "PixelMeasuresSequence", "SpacingBetweenSlices"
        ),
        metadata={} if series_uid in known_series else series_metadata(dataset),
    )


def _frame_records(path: Path, dataset: Dataset, image_type: list[str]) -> list[FrameRecord]:
    if "MOSAIC" in image_type:
        return mosaic_records(
            _record(path, dataset, image_type, frame_index=None, frame_group=None), dataset
        )
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    if per_frame is not None:
        return [
            _record(path, dataset, image_type, frame_index=index, frame_group=per_frame[index])
            for index in range(frame_count)
        ]
    if frame_count > 1:
        raise DicomFileError(
            path, f"multi-frame image with {frame_count} frames but no per-frame geometry"
        )
    return [_record(path, dataset, image_type, frame_index=None, frame_group=None)]


def _functional_item(
    dataset: Dataset, frame_group: Dataset | None, sequence: str
) -> Dataset | None:
    """The item of a functional group macro for one frame: per-frame first, then shared."""
    if frame_group is None and SHARED_GROUPS_TAG not in dataset:
        return None  # a classic single-frame image: attributes sit at the top level
    for holder in (frame_group, _first(dataset.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def _first(sequence: Any) -> Dataset | None:
    return sequence[0] if sequence else None


def _lookup(dataset: Dataset, frame_group: Dataset | None, sequence: str, keyword: str) -> Any:
    item = _functional_item(dataset, frame_group, sequence)
    if item is not None and keyword in item:
        return item.get(keyword)
    return dataset.get(keyword)


def _shared_float(dataset: Dataset, sequence: str, keyword: str) -> float | None:
    value = _lookup(dataset, None, sequence, keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _record(
    path: Path,
    dataset: Dataset,
    image_type: list[str],
    *,
    frame_index: int | None,
    frame_group: Dataset | None,
) -> FrameRecord:
    position = _lookup(dataset, frame_group, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _lookup(
        dataset, frame_group, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    spacing = _lookup(dataset, frame_group, "PixelMeasuresSequence", "PixelSpacing")
    where = path if frame_index is None else f"{path} (frame {frame_index + 1})"
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        raise DicomFileError(
            where, "no valid ImagePositionPatient/ImageOrientationPatient: cannot place the image"
        )
    if spacing is None or len(spacing) != 2 or min(float(v) for v in spacing) <= 0:
        raise DicomFileError(where, f"missing or invalid PixelSpacing {spacing!r}")
    unit_orientation = orthonormal_orientation(
        np.array([float(v) for v in orientation]), source=str(where)
    )
    slope = _lookup(dataset, frame_group, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _lookup(
        dataset, frame_group, "PixelValueTransformationSequence", "RescaleIntercept"
    )
    pixel_spacing = (float(spacing[0]), float(spacing[1]))
    split_key = (
        tuple(np.round(unit_orientation, GROUPING_DECIMALS)),
        tuple(round(v, GROUPING_DECIMALS) for v in pixel_spacing),
        int(dataset.Rows),
        int(dataset.Columns),
        tuple(image_type),
        str(dataset.get("EchoNumbers", "")),
        str(
            _frame_content(frame_group, "TemporalPositionIndex")
            or dataset.get("TemporalPositionIdentifier", "")
        ),
        str(_frame_content(frame_group, "StackID") or ""),
    )
    instance = str(dataset.get("SOPInstanceUID", "") or path)
    return FrameRecord(
        path=path,
        frame_index=frame_index,
        position_lps=(float(position[0]), float(position[1]), float(position[2])),
        orientation=tuple(float(v) for v in unit_orientation),
        pixel_spacing_mm=pixel_spacing,
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
        rescale_slope=float(slope) if slope not in (None, "") else 1.0,
        rescale_intercept=float(intercept) if intercept not in (None, "") else 0.0,
        instance_uid=instance if frame_index is None else f"{instance}#{frame_index}",
        split_key=split_key,
        pixel_layout=pixel_data_layout(dataset),
        transfer_syntax=str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "")),
    )


def _frame_content(frame_group: Dataset | None, keyword: str) -> Any:
    if frame_group is None or "FrameContentSequence" not in frame_group:
        return None
    item = _first(frame_group.FrameContentSequence)
    return item.get(keyword) if item is not None else None
