"""The batch's inventory of a scans tree: what to process, with a stable key per scan.

``medseg.ingest.discovery`` finds the scans; this module turns each into a ``BatchScan`` that
can be sent to a worker process (a ``ScanTask`` holds a closure, which cannot be pickled) and
has the key that decides its shard:

* DICOM: ``dicom:<SeriesInstanceUID>`` (plus ``#<part>`` when discovery split the series);
* a volume file (NIfTI, NRRD, MetaImage...): ``nifti:<path relative to the scans root>`` (the
  prefix of when NIfTI was the only one, kept so that no scan moves to another shard);
* with a model of several input channels, the nnU-Net channel files of one case
  (``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... in one folder, one scan):
  ``channels:<folder relative to the scans root>/<case>`` (``channels:<case>`` at the root),
  whichever of its channel files are there yet (a channel arriving later does not move the
  case to another shard);
* a file or folder that cannot be read, or is corrupt (an unreadable DICOM header, or a
  ``.dcm``/``.dicom``/``.ima`` file that is not DICOM at all): ``file:<relative path>``. It
  becomes a failure of its shard.

Keys never leave the process (they hold UIDs and paths); shards of one batch must be given the
same SCANS_ROOT, since volume file keys are relative to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medseg.ingest.case_ids import CaseIdScheme, relative, unreadable_case_id
from medseg.ingest.discovery import (
    FailedInput,
    ScanTask,
    channel_files_task,
    dicom_task,
    discover_scans,
    volume_file_task,
)
from medseg.io.channels import channel_case
from medseg.io.dicom import DicomSeries
from medseg.progress import ProgressCallback

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}


@dataclass(frozen=True)
class BatchScan:
    """One scan of the batch, picklable for worker processes."""

    key: str  # identity for sharding (holds UIDs or paths: never written out)
    case_id: str
    source: str  # where it is, relative to the scans root
    files: tuple[Path, ...]
    root: Path  # the scans root
    case_ids: CaseIdScheme
    series: DicomSeries | None = None
    unreadable_beside: tuple[Path, ...] = ()
    channel_files: tuple[Path, ...] = ()  # a case's nnU-Net channel files (one scan)
    channels: int = 1  # the model's input channels

    def task(self) -> ScanTask:
        """The discovery task that reads this scan (rebuilt in the worker process)."""
        if self.series is not None:
            task = dicom_task(
                self.series, root=self.root, scheme=self.case_ids, case_id=self.case_id, workers=1
            )
            task.unreadable_beside = self.unreadable_beside
        elif self.channel_files:
            task = channel_files_task(
                list(self.channel_files),
                root=self.root,
                scheme=self.case_ids,
                channels=self.channels,
            )
            task.case_id = self.case_id
        else:
            task = volume_file_task(self.files[0], root=self.root, scheme=self.case_ids)
            task.case_id = self.case_id  # made unique among the tree's scans
        return task


@dataclass(frozen=True)
class UnreadableFile:
    """A file or folder found under the scans root that cannot be read or is corrupt:
    recorded as a failure (``source`` and ``reason`` as they may be written)."""

    key: str
    case_id: str
    source: str | None
    reason: str
    error_type: str


@dataclass
class Inventory:
    """Everything a batch found under its scans root (all shards)."""

    root: Path
    scans: list[BatchScan]
    unreadable: list[UnreadableFile]
    ignored_files: int  # not scans: non-image DICOM (reports, localizers...), other files
    links_not_followed: int = 0  # symbolic links to folders searched already
    report: dict = field(default_factory=dict)  # discovery.json: the files that are not scans


def scan_key(task: ScanTask, root: Path) -> str:
    """The stable identity of a discovered scan (see the module docstring)."""
    if task.series is not None:
        part = f"#{task.series.part}" if task.series.part else ""
        return dicom_scan_key(task.series.series_uid) + part
    if task.channel_files:
        first = task.channel_files[0]
        return (
            f"channels:{Path(relative(first.parent / str(channel_case(first)), root)).as_posix()}"
        )
    return f"nifti:{Path(relative(task.files[0], root)).as_posix()}"


def take_inventory(
    scans_root: Path,
    *,
    case_ids: CaseIdScheme,
    exclude: Path | None = None,
    on_progress: ProgressCallback | None = None,
    channels: int = 1,
) -> Inventory:
    """Discover every scan and unreadable or corrupt file under ``scans_root`` (``exclude``
    left out); with ``channels`` > 1 (the model's input channels), the channel files of a case
    are one scan."""
    found = discover_scans(
        scans_root,
        case_ids=case_ids,
        exclude=exclude,
        on_progress=on_progress,
        channels=channels,
    )
    scans = [
        BatchScan(
            key=scan_key(task, found.root),
            case_id=task.case_id,
            source=task.source,
            files=tuple(task.files),
            root=found.root,
            case_ids=found.case_ids,
            series=task.series,
            unreadable_beside=task.unreadable_beside,
            channel_files=task.channel_files,
            channels=channels,
        )
        for task in found.tasks
    ]
    not_dicom = [p for p in found.scan.not_dicom if p.suffix.lower() in DICOM_SUFFIXES]
    failed = found.failed_inputs() + [
        FailedInput(
            path=path,
            case_id=unreadable_case_id(path, root=found.root, scheme=found.case_ids),
            source=relative(path, found.root) if found.case_ids is CaseIdScheme.FOLDER else None,
            reason="named like DICOM but not a DICOM file",
            error_type="NotDicomFile",
        )
        for path in not_dicom
    ]
    unreadable = [
        UnreadableFile(
            key=f"file:{Path(relative(f.path, found.root)).as_posix()}",
            case_id=f.case_id,
            source=f.source,
            reason=f.reason,
            error_type=f.error_type,
        )
        for f in failed
    ]
    return Inventory(
        found.root,
        scans,
        unreadable,
        ignored_files=len(found.other_files()) - len(not_dicom),
        links_not_followed=len(found.walk.links_not_followed),
        report=found.report(leave_out=frozenset(not_dicom)),
    )


def dicom_scan_key(series_uid: str) -> str:
    """The shard key of a DICOM series (also used to split PACS pulls between shards)."""
    return f"dicom:{series_uid}"
