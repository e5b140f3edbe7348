"""Find every scan under a path: DICOM series (by content) and volume files (by suffix: NIfTI,
NRRD, MetaImage and any format registered in ``medseg.io.formats``).

Shared by the ingest stage, the predictor and the batch: each scan becomes a ``ScanTask`` that
knows where it came from, its case id, how to read its volume (closest-RAS order, screened for
non-finite voxels by ``medseg.ingest.non_finite``) and how it may be named in what is written.
Nothing is dropped silently (``medseg.ingest.walk``): files and folders that cannot be read,
symbolic links not followed, files that are not scans and medseg's own temporary files are all
in the ``Discovery``, for the reports.

Patient data: with ``--case-ids hash`` (the default) a scan is named by its case id in
reports, logs and messages (``ScanTask.public_name``), and ``ScanTask.redact`` removes its
paths from error messages; only ``--case-ids folder`` shows the paths relative to the input.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import (
    ChannelsError,
    InputFileError,
    UnreadableInputError,
    UnreadableSliceError,
)
from medseg.ingest.case_ids import (
    CaseIdScheme,
    dicom_case_id,
    file_reference,
    relative,
    unreadable_case_id,
    volume_file_case_id,
)
from medseg.ingest.non_finite import NonFinitePolicy, screen_non_finite
from medseg.ingest.walk import FileWalk, walk_files
from medseg.io.channels import channel_case, channel_number, stack_channels
from medseg.io.dicom import DicomScan, DicomSeries, load_series, scan_dicom_files
from medseg.io.formats import (
    data_files,
    format_for_path,
    is_volume_path,
    read_volume,
    volume_stem,
    volume_suffix,
)
from medseg.phi import REDACTED, redact_scan
from medseg.progress import ProgressCallback
from medseg.volume import Volume

NOT_A_SCAN = "neither DICOM nor a volume file format medseg reads"
TEMPORARY_FILE = "medseg temporary file or folder (left by an interrupted write)"


@dataclass
class ScanTask:
    """One scan to process: where it is, what it is called, how to read it."""

    source: str  # path relative to the searched folder: may name the patient (public_name)
    case_id: str
    files: list[Path]
    reader: Callable[[str], Volume]  # reads the volume; the argument names the scan in messages
    series: DicomSeries | None = None  # set for DICOM inputs
    root: Path = Path(".")
    paths_shown: bool = False  # --case-ids folder: paths may appear in reports and logs
    unreadable_beside: tuple[Path, ...] = ()  # unreadable files in the folders of its slices
    channel_files: tuple[Path, ...] = ()  # set for a case's nnU-Net channel files (in order)
    recipe: str = ""  # how its files make its volume, beyond which files (a channel rule's)

    @property
    def public_name(self) -> str:
        """How reports, logs and messages name the scan: its source with ``--case-ids
        folder``, else its case id."""
        return self.source if self.paths_shown else self.case_id

    def redact(self, text: str) -> str:
        """``text`` without the scan's paths unless they may be shown (``medseg.phi``)."""
        if self.paths_shown:
            return text
        files = [*self.files, *self.unreadable_beside]
        return redact_scan(text, source=self.source, files=files, root=self.root)

    def error_message(self, error: BaseException) -> str:
        """``str(error)`` as it may be written, starting with ``public_name`` (once): with
        hashed ids the scan's paths are replaced by ``<scan>`` (``redact``)."""
        text = self.redact(str(error))
        for prefix in (f"{self.public_name}: ", f"{self.case_id}: ", f"{REDACTED}: "):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        return f"{self.public_name}: {text}"

    def read(self, non_finite: NonFinitePolicy = NonFinitePolicy.ERROR) -> Volume:
        """The scan's volume, screened for NaN/Inf voxels (``medseg.ingest.non_finite``).

        Raises:
            UnreadableSliceError: files beside its slices cannot be read.
            NonFiniteVoxelsError: non-finite voxels (with ``ERROR``), or no finite voxel.
            InputError: the scan cannot be read.
        """
        if self.unreadable_beside:
            names = ", ".join(
                path.name
                if self.paths_shown
                else unreadable_case_id(path, root=self.root, scheme=CaseIdScheme.HASH)
                for path in self.unreadable_beside[:3]
            )
            more = ", ..." if len(self.unreadable_beside) > 3 else ""
            raise UnreadableSliceError(
                self.public_name,
                f"{len(self.unreadable_beside)} file(s) beside its slices cannot be read "
                f"({names}{more}): they may be slices of this series, so it is not built",
            )
        volume = self.reader(self.public_name)
        return screen_non_finite(volume, policy=non_finite, where=self.public_name)


@dataclass(frozen=True)
class FailedInput:
    """A file or folder that cannot be read, or a DICOM file with a malformed header, as
    reports name it: ``source`` (relative path) only with ``--case-ids folder``, and the
    reason without paths otherwise."""

    path: Path  # absolute: never written out
    case_id: str  # unreadable_<hash>, or unreadable_<path> with --case-ids folder
    source: str | None
    reason: str
    error_type: str


@dataclass
class Discovery:
    """The scans found, and everything else the search saw."""

    root: Path
    case_ids: CaseIdScheme
    tasks: list[ScanTask]
    scan: DicomScan
    walk: FileWalk = field(default_factory=FileWalk)

    @property
    def failed(self) -> list[InputFileError]:
        """Files and folders that could not be read, and DICOM files with a malformed header:
        each may have been (part of) a scan."""
        return [*self.walk.unreadable, *self.scan.failed]

    def failed_inputs(self) -> list[FailedInput]:
        """``failed`` as reports name them (see ``FailedInput``)."""
        shown = self.case_ids is CaseIdScheme.FOLDER
        entries = []
        for error in self.failed:
            path = Path(error.path)
            source = relative(path, self.root)
            reason = error.problem
            if not shown:
                reason = redact_scan(reason, source=source, files=[path], root=self.root)
            entries.append(
                FailedInput(
                    path=path,
                    case_id=unreadable_case_id(path, root=self.root, scheme=self.case_ids),
                    source=source if shown else None,
                    reason=reason,
                    error_type=type(error).__name__,
                )
            )
        return entries

    def other_files(self) -> list[tuple[Path, str]]:
        """Files that are not scans, with the reason: non-image DICOM, other formats and
        medseg's temporary files."""
        other = [(skipped.path, skipped.reason) for skipped in self.scan.skipped]
        other += [(path, NOT_A_SCAN) for path in self.scan.not_dicom]
        other += [(path, TEMPORARY_FILE) for path in self.walk.temporary]
        return sorted(other)

    def reference(self, path: Path) -> str:
        """How a report may name a file or folder that is not a scan (``file_reference``)."""
        return file_reference(path, root=self.root, scheme=self.case_ids)

    def report(self, *, leave_out: frozenset[Path] = frozenset()) -> dict[str, Any]:
        """The JSON section of a report on what is not a scan (``leave_out``: files the
        caller reports as failures)."""
        return {
            "other_files": [
                {"file": self.reference(path), "reason": reason}
                for path, reason in self.other_files()
                if path not in leave_out
            ],
            "links_not_followed": [
                {"folder": self.reference(path), "reason": reason}
                for path, reason in self.walk.links_not_followed
            ],
        }


def discover_scans(
    input_path: Path,
    *,
    case_ids: CaseIdScheme = CaseIdScheme.HASH,
    workers: int | None = None,
    exclude: Path | None = None,
    on_progress: ProgressCallback | None = None,
    channels: int = 1,
) -> Discovery:
    """Every DICOM series and volume file at or under ``input_path`` (``exclude`` left out).

    The data file a detached header (``.nhdr``, ``.mhd``) names is part of its scan's task, not
    a file of its own. With ``channels`` > 1 (a multi-channel model), the nnU-Net channel
    files of one case in one folder (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``...) are
    one scan (``channel_files_task``)."""
    input_path = Path(input_path).resolve()
    scheme = CaseIdScheme(case_ids)
    root = input_path if input_path.is_dir() else input_path.parent
    if input_path.is_dir():
        walk = walk_files(input_path, exclude=exclude)
    else:
        walk = FileWalk(files=[input_path])
    progress = on_progress or (lambda phase, done, total: None)
    volume_files = [path for path in walk.files if is_volume_path(path)]
    taken = {*volume_files, *(data for path in volume_files for data in data_files(path))}
    others = [path for path in walk.files if path not in taken]
    scan = _scan_with_progress(others, progress, workers)
    tasks = _dicom_tasks(scan.series, root, scheme, workers)
    tasks += _volume_tasks(volume_files, root=root, scheme=scheme, channels=channels)
    _make_ids_unique(tasks)
    _mark_unreadable_slices(tasks, [*walk.unreadable, *scan.failed])
    return Discovery(root=root, case_ids=scheme, tasks=tasks, scan=scan, walk=walk)


def _scan_with_progress(
    paths: list[Path], progress: ProgressCallback, workers: int | None
) -> DicomScan:
    def counted() -> Iterator[Path]:
        for done, path in enumerate(paths):
            if done % 50 == 0:
                progress("Reading headers", done, len(paths))
            yield path
        progress("Reading headers", len(paths), len(paths))

    return scan_dicom_files(counted(), workers=workers)


def _mark_unreadable_slices(tasks: list[ScanTask], failed: list[InputFileError]) -> None:
    """Give each DICOM task the unreadable files (not volume files) in the folders of its
    slices."""
    by_folder: dict[Path, list[Path]] = {}
    for error in failed:
        path = Path(error.path)
        if isinstance(error, UnreadableInputError) and not is_volume_path(path):
            by_folder.setdefault(path.parent, []).append(path)
    for task in tasks:
        if task.series is not None:
            folders = {path.parent for path in task.files}
            task.unreadable_beside = tuple(
                sorted(path for folder in folders for path in by_folder.get(folder, []))
            )


def _dicom_tasks(
    series_list: list[DicomSeries], root: Path, scheme: CaseIdScheme, workers: int | None
) -> list[ScanTask]:
    per_folder = Counter((series.files[0].parent, series.series_uid) for series in series_list)
    folders = Counter(folder for folder, _ in per_folder)
    return [
        dicom_task(
            series,
            root=root,
            scheme=scheme,
            case_id=dicom_case_id(
                series, root=root, scheme=scheme, series_in_folder=folders[series.files[0].parent]
            ),
            workers=workers,
        )
        for series in series_list
    ]


def dicom_task(
    series: DicomSeries,
    *,
    root: Path,
    scheme: CaseIdScheme,
    case_id: str,
    workers: int | None = None,
) -> ScanTask:
    """The task of one DICOM series under ``root``."""
    return ScanTask(
        source=series.describe(root),
        case_id=case_id,
        files=series.files,
        reader=functools.partial(_read_series, series, workers),
        series=series,
        root=root,
        paths_shown=scheme is CaseIdScheme.FOLDER,
    )


def _read_series(series: DicomSeries, workers: int | None, name: str) -> Volume:
    return load_series(series, workers=workers, source=name)


def _read_volume_file(path: Path, name: str) -> Volume:
    """``name`` is unused: the readers' errors name the file, which ``redact`` removes."""
    volume = read_volume(path).to_closest_ras()
    volume.metadata.setdefault("modality", "unknown")
    return volume


def volume_file_task(path: Path, *, root: Path, scheme: CaseIdScheme) -> ScanTask:
    """The task of one volume file (NIfTI, NRRD, ...) under ``root``; its files are ``path``
    and the data file its header names, if any."""
    volume_format = format_for_path(path)
    prefix = volume_format.name if volume_format is not None else "scan"
    return ScanTask(
        source=relative(path, root),
        case_id=volume_file_case_id(path, root=root, prefix=prefix, scheme=scheme),
        files=[path, *data_files(path)],
        reader=functools.partial(_read_volume_file, path),
        root=root,
        paths_shown=scheme is CaseIdScheme.FOLDER,
    )


def _volume_tasks(
    volume_files: list[Path], *, root: Path, scheme: CaseIdScheme, channels: int
) -> list[ScanTask]:
    """One task per volume file, or per case's channel files when ``channels`` > 1."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in volume_files:
        case = channel_case(path) if channels > 1 else None
        key = (path.parent, case) if case else (path, "")
        groups.setdefault(key, []).append(path)
    return [
        channel_files_task(paths, root=root, scheme=scheme, channels=channels)
        if case
        else volume_file_task(paths[0], root=root, scheme=scheme)
        for (_, case), paths in groups.items()
    ]


def _read_channel_files(paths: tuple[Path, ...], channels: int, name: str) -> Volume:
    numbers = [channel_number(path) for path in paths]
    missing = [f"_{n:04d}" for n in range(channels) if n not in numbers]
    beyond = [f"_{n:04d}" for n in numbers if n is not None and n >= channels]
    if missing or beyond:
        found = ", ".join(f"_{n:04d}" for n in numbers if n is not None)
        problem = f"missing {', '.join(missing)}" if missing else f"{', '.join(beyond)} too many"
        raise ChannelsError(
            name, f"channel files {found}: the model takes {channels} channels ({problem})"
        )
    volume = stack_channels([(str(path), read_volume(path)) for path in paths])
    volume.metadata.setdefault("modality", "unknown")
    return volume


def channel_files_task(
    paths: list[Path], *, root: Path, scheme: CaseIdScheme, channels: int
) -> ScanTask:
    """The task of one case's channel files (``<case>_0000``... in one folder), read as one
    ``(X, Y, Z, C)`` volume; named like a file ``<case>`` (its channel 0 file in reports).
    Reading it fails (``ChannelsError``) unless the files are channels 0 to ``channels`` - 1,
    co-registered."""
    paths = sorted(paths, key=lambda path: channel_number(path) or 0)
    first = paths[0]
    case = channel_case(first) or volume_stem(first)
    volume_format = format_for_path(first)
    return ScanTask(
        source=relative(first, root),
        case_id=volume_file_case_id(
            first.with_name(case + volume_suffix(first)),
            root=root,
            prefix=volume_format.name if volume_format is not None else "scan",
            scheme=scheme,
        ),
        files=[file for path in paths for file in (path, *data_files(path))],
        reader=functools.partial(_read_channel_files, tuple(paths), channels),
        root=root,
        paths_shown=scheme is CaseIdScheme.FOLDER,
        channel_files=tuple(paths),
    )


def _make_ids_unique(tasks: list[ScanTask]) -> None:
    """Two inputs that would get the same case id get a numbered suffix instead of colliding."""
    seen: Counter[str] = Counter()
    for task in tasks:
        seen[task.case_id] += 1
        if seen[task.case_id] > 1:
            task.case_id = f"{task.case_id}_{seen[task.case_id]}"
