"""The ingest stage: every DICOM series and NIfTI file under a folder becomes a canonical volume.

Output layout (``OUT_DIR``)::

    images/<case_id>.nii.gz     volume in closest-RAS voxel order (see medseg.volume)
    images/<case_id>.json       sidecar: non-PHI metadata, geometry, corrections, checksums
    labels/<case_id>.nii.gz     label map, when ``labels_dir`` holds one for the case
    manifest.jsonl              one record per volume (medseg.manifest)
    ingest_report.json          every input's outcome: converted, unchanged, skipped, failed

Idempotent and resumable: a case whose sidecar records the same input fingerprint (file names,
sizes, modification times, medseg version) and whose image is present is not converted again.
One bad series never stops the others; it is reported with the reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from medseg import __version__, shutdown
from medseg.errors import MedsegError
from medseg.ingest.case_ids import CaseIdScheme
from medseg.ingest.discovery import ScanTask, discover_scans, relative
from medseg.ingest.sidecar import ConvertedCase, check_label, write_case
from medseg.io.atomic import write_json_atomic
from medseg.io.dicom import DicomScan
from medseg.io.nifti import read_nifti
from medseg.manifest import ManifestRecord, write_manifest
from medseg.phi import hash_identifier
from medseg.volume import Volume

logger = logging.getLogger(__name__)

EXIT_SOME_FAILED = 1
"""Exit code of ``medseg ingest`` when some inputs failed (the others were still written)."""

ProgressCallback = Callable[[str, int, int], None]


class OutcomeKind(StrEnum):
    """What happened to one input."""

    CONVERTED = "converted"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class IngestOutcome:
    """The fate of one input (a series, a NIfTI file, or a group of skipped files)."""

    kind: OutcomeKind
    source: str
    reason: str = ""
    case_id: str | None = None
    files: int = 1
    record: ManifestRecord | None = None


@dataclass
class IngestReport:
    """Everything ``ingest`` did, for the summary table and the exit code."""

    manifest_path: Path
    outcomes: list[IngestOutcome] = field(default_factory=list)
    ignored_files: int = 0

    def of_kind(self, *kinds: OutcomeKind) -> list[IngestOutcome]:
        """Outcomes of the given kinds, in input order."""
        return [outcome for outcome in self.outcomes if outcome.kind in kinds]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, ``EXIT_SOME_FAILED`` otherwise."""
        return EXIT_SOME_FAILED if self.of_kind(OutcomeKind.FAILED) else 0


def ingest(
    input_dir: Path,
    out_dir: Path,
    *,
    case_ids: CaseIdScheme = CaseIdScheme.HASH,
    labels_dir: Path | None = None,
    workers: int | None = None,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Convert every scan under ``input_dir`` into ``out_dir`` and write the manifest.

    Args:
        input_dir: folder searched recursively; DICOM files are recognised by content.
        out_dir: output folder (created).
        case_ids: naming scheme of the cases (see ``medseg.ingest.case_ids``).
        labels_dir: optional folder of ``<case_id>.nii.gz`` label maps on the scans' grids.
        workers: decoder processes for compressed DICOM (default: all cores).
        force: convert again even when a case's inputs are unchanged.
        on_progress: called with (phase, done, total) while working.
    """
    input_dir, out_dir = Path(input_dir).resolve(), Path(out_dir).resolve()
    case_ids = CaseIdScheme(case_ids)
    progress = on_progress or (lambda phase, done, total: None)
    found = discover_scans(
        input_dir, case_ids=case_ids, workers=workers, exclude=out_dir, on_progress=progress
    )
    scan, tasks = found.scan, found.tasks
    report = IngestReport(
        manifest_path=out_dir / "manifest.jsonl", ignored_files=len(scan.not_dicom)
    )
    report.outcomes.extend(_skipped_and_unreadable(scan, input_dir))
    for done, task in enumerate(tasks):
        progress("Converting", done, len(tasks))
        report.outcomes.append(_run_task(task, out_dir=out_dir, labels_dir=labels_dir, force=force))
    progress("Converting", len(tasks), len(tasks))
    records = [o.record for o in report.outcomes if o.record is not None]
    write_manifest(records, report.manifest_path)
    write_json_atomic(out_dir / "ingest_report.json", _report_payload(report))
    return report


def _skipped_and_unreadable(scan: DicomScan, root: Path) -> list[IngestOutcome]:
    """One outcome per (folder, reason) of skipped files, one per unreadable file."""
    groups = Counter((relative(s.path.parent, root), s.reason) for s in scan.skipped)
    outcomes = [
        IngestOutcome(OutcomeKind.SKIPPED, source=folder, reason=reason, files=count)
        for (folder, reason), count in sorted(groups.items())
    ]
    outcomes += [
        IngestOutcome(
            OutcomeKind.FAILED, source=relative(Path(error.path), root), reason=error.problem
        )
        for error in scan.failed
    ]
    return outcomes


def _fingerprint(files: list[Path], labels: Path | None) -> str:
    parts = [__version__]
    for path in [*files, *([labels] if labels is not None and labels.exists() else [])]:
        stat = path.stat()
        parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
    return hash_identifier("\n".join(parts))


def _run_task(
    task: ScanTask, *, out_dir: Path, labels_dir: Path | None, force: bool
) -> IngestOutcome:
    label_path = labels_dir / f"{task.case_id}.nii.gz" if labels_dir is not None else None
    case = ConvertedCase(out_dir=out_dir, case_id=task.case_id)
    fingerprint = _fingerprint(task.files, label_path)
    source_hash = hash_identifier("\n".join(str(p) for p in task.files))
    try:
        if not force and case.is_current(fingerprint):
            return IngestOutcome(
                OutcomeKind.UNCHANGED,
                task.source,
                case_id=task.case_id,
                files=len(task.files),
                record=case.record(),
            )
        volume = task.load()
        label = (
            _load_label(label_path, volume)
            if label_path is not None and label_path.exists()
            else None
        )
        with shutdown.deferred():  # a stop signal waits until the case's files are all written
            record = write_case(
                case, volume, label=label, fingerprint=fingerprint, source_hash=source_hash
            )
    except MedsegError as error:
        logger.warning("%s", error)
        return IngestOutcome(
            OutcomeKind.FAILED, task.source, reason=_problem(error), files=len(task.files)
        )
    except Exception as error:  # one bad scan must never stop the batch
        logger.exception("unexpected error while converting %s", task.source)
        return IngestOutcome(
            OutcomeKind.FAILED,
            task.source,
            reason=f"unexpected {type(error).__name__}: {error}",
            files=len(task.files),
        )
    corrections = "; ".join(volume.metadata.get("corrections", []))
    return IngestOutcome(
        OutcomeKind.CONVERTED,
        task.source,
        reason=corrections,
        case_id=task.case_id,
        files=len(task.files),
        record=record,
    )


def _problem(error: MedsegError) -> str:
    return getattr(error, "problem", None) or str(error)


def _load_label(path: Path, image: Volume) -> Volume:
    return check_label(read_nifti(path).to_closest_ras(), image, path=path)


def _report_payload(report: IngestReport) -> dict:
    return {
        "medseg_version": __version__,
        "manifest": report.manifest_path.name,
        "ignored_files": report.ignored_files,
        "counts": dict(Counter(o.kind.value for o in report.outcomes)),
        "outcomes": [
            {
                "kind": o.kind.value,
                "source": o.source,
                "case_id": o.case_id,
                "files": o.files,
                "reason": o.reason,
            }
            for o in report.outcomes
        ],
    }
