"""DICOM series -> ``Volume``: group files into series, then build each volume.

``scan_dicom_files`` reads headers and groups image frames by SeriesInstanceUID, splitting a
series whose frames disagree in orientation, pixel size, matrix, image type, echo or temporal
position. ``load_series`` sorts the frames along the slice normal, validates the spacing
(see ``medseg.io.dicom.geometry`` for the rules), decodes the pixels, applies the modality LUT
and returns a volume in the closest-to-RAS voxel order of ``medseg.volume``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomSeriesError, InputFileError
from medseg.io.dicom.corrections import correct_tilt, equalize_slices
from medseg.io.dicom.geometry import affine_lps_to_ras, measure_stack, plan_slice_layout
from medseg.io.dicom.pixels import apply_modality_lut, decode_stored_values, default_workers
from medseg.io.dicom.scan import DicomFileHeader, FrameRecord, SkippedFile, read_header
from medseg.parallel import process_pool
from medseg.phi import hash_identifier
from medseg.volume import Volume

logger = logging.getLogger(__name__)


@dataclass
class DicomSeries:
    """The frames of one volume-to-be, with the series-level facts of its files."""

    series_uid: str
    part: int  # 0 unless the series was split; then 1, 2, ...
    frames: list[FrameRecord]
    headers: list[DicomFileHeader]
    series_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def series_id(self) -> str:
        """Stable non-identifying id: hash of the SeriesInstanceUID (+ split part)."""
        token = hash_identifier(self.series_uid)
        return token if self.part == 0 else f"{token}-{self.part}"

    @property
    def files(self) -> list[Path]:
        """The files that hold this series' frames, in name order."""
        return sorted({frame.path for frame in self.frames})

    @property
    def metadata(self) -> dict[str, Any]:
        """Series metadata (non-PHI), read from the first file seen of the series."""
        return dict(self.series_metadata)

    def describe(self, root: Path | None = None) -> str:
        """Where the series lives, for messages: its folder (relative to ``root``) and number."""
        folder = self.files[0].parent
        if root is not None and folder.is_relative_to(root):
            folder = folder.relative_to(root)
        number = self.metadata.get("series_number")
        label = f"{folder}" + (f" series {int(number)}" if number is not None else "")
        return label + (f" part {self.part}" if self.part else "")


@dataclass
class DicomScan:
    """What a set of files holds: series to convert, skipped files, unreadable files.

    ``failed`` holds the files that could not be read (``UnreadableInputError``) and the DICOM
    files whose header is malformed (``DicomFileError``).
    """

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    failed: list[InputFileError] = field(default_factory=list)
    not_dicom: list[Path] = field(default_factory=list)


HeaderResult = DicomFileHeader | SkippedFile | InputFileError | None
PARALLEL_SCAN_MIN_FILES = 1000  # below this, process start-up costs more than it saves


def scan_dicom_files(paths: Iterable[Path], *, workers: int | None = None) -> DicomScan:
    """Read the headers of ``paths`` and group the image frames into series.

    Large sets of files are read by ``workers`` processes (default: all cores), each taking a
    contiguous run of the (sorted) paths so a series' metadata is extracted once per run.
    """
    paths = list(paths)
    workers = workers or default_workers()
    if workers > 1 and len(paths) >= PARALLEL_SCAN_MIN_FILES:
        size = -(-len(paths) // (workers * 2))
        chunks = [paths[start : start + size] for start in range(0, len(paths), size)]
        with process_pool(workers, start_method=None) as processes:
            results = [result for chunk in processes.map(_read_headers, chunks) for result in chunk]
    else:
        results = _read_headers(paths)
    scan = DicomScan()
    headers_by_series: dict[str, list[DicomFileHeader]] = defaultdict(list)
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, InputFileError):
            scan.failed.append(result)
        elif result is None:
            scan.not_dicom.append(path)
        elif isinstance(result, SkippedFile):
            scan.skipped.append(result)
        else:
            headers_by_series[result.series_uid].append(result)
    for series_uid in sorted(headers_by_series):
        scan.series.extend(_split_series(series_uid, headers_by_series[series_uid]))
    return scan


def _read_headers(paths: list[Path]) -> list[HeaderResult]:
    known_series: set[str] = set()
    results: list[HeaderResult] = []
    for path in paths:
        result: HeaderResult
        try:
            result = read_header(path, known_series=known_series)
        except InputFileError as error:  # unreadable, or a malformed DICOM header
            result = error
        if isinstance(result, DicomFileHeader):
            known_series.add(result.series_uid)
        results.append(result)
    return results


def _split_series(series_uid: str, headers: list[DicomFileHeader]) -> list[DicomSeries]:
    frames_by_key: dict[tuple[Any, ...], list[FrameRecord]] = defaultdict(list)
    for header in headers:
        for frame in header.frames:
            frames_by_key[frame.split_key].append(frame)
    metadata = next((header.metadata for header in headers if header.metadata), {})
    keys = sorted(frames_by_key, key=lambda key: min(str(f.path) for f in frames_by_key[key]))
    parts = []
    for number, key in enumerate(keys, start=1):
        frames = _unique_instances(frames_by_key[key])
        files = {frame.path for frame in frames}
        part_headers = [header for header in headers if header.path in files]
        part = number if len(keys) > 1 else 0
        parts.append(DicomSeries(series_uid, part, frames, part_headers, metadata))
    return parts


def _unique_instances(frames: list[FrameRecord]) -> list[FrameRecord]:
    """Drop copies of the same SOP instance (the same image stored twice in the tree).

    The log line counts them without naming files: paths may carry patient names.
    """
    seen: dict[str, FrameRecord] = {}
    for frame in sorted(frames, key=lambda f: str(f.path)):
        seen.setdefault(frame.instance_uid, frame)
    if len(seen) < len(frames):
        logger.info("%d duplicate copies of images; one copy of each used", len(frames) - len(seen))
    return list(seen.values())


def load_series(
    series: DicomSeries, *, workers: int | None = None, source: str | None = None
) -> Volume:
    """Build the volume of ``series``: sort, validate, decode, rescale, correct, reorient.

    Raises:
        DicomSeriesError: the slices do not form a volume (duplicates, missing slices...).
        DicomFileError: a file's pixel data cannot be decoded.
    """
    source = source or series.describe()
    first = series.frames[0]
    orientation = np.array(first.orientation)
    stack = measure_stack(np.array([f.position_lps for f in series.frames]), orientation)
    frames = [series.frames[index] for index in stack.order]
    labels = [_frame_label(frame) for frame in frames]
    layout = plan_slice_layout(
        stack,
        pixel_spacing_mm=first.pixel_spacing_mm,
        single_slice_spacing_mm=_single_slice_spacing(series),
        source=source,
        slice_labels=labels,
    )
    stored = decode_stored_values(frames, workers=workers)
    values = apply_modality_lut(stored, frames)
    voxels = values.transpose(2, 1, 0)  # (slice, row, column) -> (i=column, j=row, k=slice)
    grid_start = (0, 0)
    if layout.tilted:
        voxels, grid_start = correct_tilt(voxels, stack, pixel_spacing_mm=first.pixel_spacing_mm)
    if layout.equalized:
        voxels = equalize_slices(voxels, stack, layout)
    affine = affine_lps_to_ras(
        orientation=orientation,
        pixel_spacing_mm=first.pixel_spacing_mm,
        slice_spacing_mm=layout.spacing_mm,
        origin_lps=stack.origin_lps,
    )
    affine[:3, 3] += affine[:3, 0] * grid_start[0] + affine[:3, 1] * grid_start[1]
    metadata = series.metadata
    metadata.update(
        series_id=series.series_id,
        slices=len(frames),
        corrections=layout.corrections,
        slice_thickness_mm=series.headers[0].thickness_mm,
    )
    for correction in layout.corrections:
        logger.warning("%s: %s", source, correction)
    return Volume(voxels, affine, metadata).to_closest_ras()


def _single_slice_spacing(series: DicomSeries) -> float:
    header = series.headers[0]
    for value in (header.spacing_between_slices_mm, header.thickness_mm):
        if value is not None and value > 0:
            return value
    return 1.0


def _frame_label(frame: FrameRecord) -> str:
    return (
        frame.path.name
        if frame.frame_index is None
        else f"{frame.path.name}[frame {frame.frame_index + 1}]"
    )


def read_dicom_series(folder: Path, *, workers: int | None = None) -> Volume:
    """Read the one DICOM series under ``folder`` (convenience for tests and scripts).

    Raises:
        DicomSeriesError: the folder holds no series or more than one.
    """
    scan = scan_dicom_files(sorted(p for p in Path(folder).rglob("*") if p.is_file()))
    if scan.failed:
        raise scan.failed[0]
    if len(scan.series) != 1:
        raise DicomSeriesError(folder, f"expected one DICOM series, found {len(scan.series)}")
    return load_series(scan.series[0], workers=workers, source=str(folder))
