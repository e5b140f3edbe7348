"""The batch's inventory of a scans tree: what to process, with a stable key per scan.

``medseg.ingest.discovery`` finds the scans; this module turns each into a ``BatchScan`` that
can be sent to a worker process (a ``ScanTask`` holds a closure, which cannot be pickled) and
has the key that decides its shard:

* DICOM: ``dicom:<SeriesInstanceUID>`` (plus ``#<part>`` when discovery split the series);
* NIfTI: ``nifti:<path relative to the scans root>``;
* a file that is corrupt (an unreadable DICOM header, or a ``.dcm``/``.dicom``/``.ima`` file that
  is not DICOM at all): ``file:<relative path>``. It becomes a failure of its shard.

Keys never leave the process (they hold UIDs and paths); shards of one batch must be given the
same SCANS_ROOT, since NIfTI keys are relative to it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.ingest.case_ids import CaseIdScheme, nifti_case_id
from medseg.ingest.discovery import ScanTask, discover_scans, relative
from medseg.io.dicom import DicomSeries, load_series

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


@dataclass(frozen=True)
class BatchScan:
    """One scan of the batch, picklable for worker processes."""

    key: str  # identity for sharding (holds UIDs or paths: never written out)
    case_id: str
    source: str  # where it is, relative to the scans root
    files: tuple[Path, ...]
    series: DicomSeries | None = None

    def task(self) -> ScanTask:
        """The discovery task that loads this scan (rebuilt in the worker process)."""
        if self.series is not None:
            load = functools.partial(load_series, self.series, workers=1, source=self.source)
            return ScanTask(self.source, self.case_id, list(self.files), load, self.series)
        task = discover_scans(self.files[0]).tasks[0]  # a NIfTI file: its loader
        task.case_id, task.source = self.case_id, self.source
        return task


@dataclass(frozen=True)
class UnreadableFile:
    """A file found under the scans root that is corrupt: recorded as a failure."""

    key: str
    case_id: str
    source: str
    reason: str
    error_type: str


@dataclass
class Inventory:
    """Everything a batch found under its scans root (all shards)."""

    root: Path
    scans: list[BatchScan]
    unreadable: list[UnreadableFile]
    ignored_files: int  # not scans: non-image DICOM (reports, localizers...), other files


def scan_key(task: ScanTask, root: Path) -> str:
    """The stable identity of a discovered scan (see the module docstring)."""
    if task.series is not None:
        part = f"#{task.series.part}" if task.series.part else ""
        return dicom_scan_key(task.series.series_uid) + part
    return f"nifti:{Path(relative(task.files[0], root)).as_posix()}"


def take_inventory(
    scans_root: Path,
    *,
    case_ids: CaseIdScheme,
    exclude: Path | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Inventory:
    """Discover every scan and corrupt file under ``scans_root`` (``exclude`` left out)."""
    found = discover_scans(scans_root, case_ids=case_ids, exclude=exclude, on_progress=on_progress)
    scans = [
        BatchScan(
            key=scan_key(task, found.root),
            case_id=task.case_id,
            source=task.source,
            files=tuple(task.files),
            series=task.series,
        )
        for task in found.tasks
    ]
    unreadable = [
        _unreadable(Path(error.path), found.root, case_ids, error.problem, type(error).__name__)
        for error in found.scan.failed
    ]
    not_dicom = [p for p in found.scan.not_dicom if p.suffix.lower() in DICOM_SUFFIXES]
    reason = "named like DICOM but not a DICOM file"
    unreadable += [
        _unreadable(path, found.root, case_ids, reason, "NotDicomFile") for path in not_dicom
    ]
    ignored = len(found.scan.skipped) + len(found.scan.not_dicom) - len(not_dicom)
    return Inventory(found.root, scans, unreadable, ignored)


def _unreadable(
    path: Path, root: Path, scheme: CaseIdScheme, reason: str, error_type: str
) -> UnreadableFile:
    source = relative(path, root)
    if scheme is CaseIdScheme.HASH:
        case_id = nifti_case_id(path, root=root, modality="unreadable", scheme=scheme)
    else:
        case_id = "unreadable_" + re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._")
    return UnreadableFile(
        key=f"file:{Path(source).as_posix()}",
        case_id=case_id,
        source=source,
        reason=reason,
        error_type=error_type,
    )


def dicom_scan_key(series_uid: str) -> str:
    """The shard key of a DICOM series (also used to split PACS pulls between shards)."""
    return f"dicom:{series_uid}"
