"""The ingest stage: every DICOM series and volume file (NIfTI, NRRD, MetaImage) under a folder
becomes a canonical volume (NIfTI, whatever the input format).

Output layout (``OUT_DIR``)::

    images/<case_id>.nii.gz     volume in closest-RAS voxel order (see medseg.volume)
    images/<case_id>.json       sidecar: non-PHI metadata, geometry, corrections, checksums
    labels/<case_id>.nii.gz     label map, when ``labels_dir`` holds one for the case (a
                                ``<case_id>`` file of any volume format: .nii.gz, .nrrd, .mha...)
    manifest.jsonl              one record per volume (medseg.manifest)
    ingest_report.json          every input's outcome: converted, unchanged, skipped, failed
                                (unreadable files and folders too), and the files that are
                                not scans

Idempotent and resumable: a case whose sidecar records the same input fingerprint (file names,
sizes, modification times, medseg version, non-finite policy, the channel rule of a case it
assembles) and whose image is present is not converted again. One bad series never stops the
others; it is reported with the reason. A scan with NaN or infinite voxels is refused unless
``non_finite`` says to replace them (``medseg.ingest.non_finite``). Temporary files a killed
run left in ``OUT_DIR`` are removed (one ingest per ``OUT_DIR`` at a time).

With ``--case-ids hash`` nothing written names an input path: outcomes carry case ids (and
``unreadable_<hash>`` / ``file_<hash>`` for files that are not scans), reasons have the paths
replaced by ``<scan>``.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from medseg import __version__, shutdown
from medseg.errors import InputFileError, MedsegError, UnreadableInputError
from medseg.ingest.case_ids import CaseIdScheme, relative
from medseg.ingest.channel_rule import ChannelRule, assemble_channels
from medseg.ingest.discovery import Discovery, ScanTask, discover_scans
from medseg.ingest.non_finite import NonFinitePolicy
from medseg.ingest.sidecar import ConvertedCase, check_label, write_case
from medseg.io.atomic import TEMPORARY_PREFIX, write_json_atomic
from medseg.io.formats import read_volume, volume_files_named
from medseg.manifest import ManifestRecord, write_manifest
from medseg.phi import hash_identifier
from medseg.progress import ProgressCallback
from medseg.volume import Volume

logger = logging.getLogger(__name__)

EXIT_SOME_FAILED = 1
"""Exit code of ``medseg ingest`` when some inputs failed (the others were still written)."""


class OutcomeKind(StrEnum):
    """What happened to one input."""

    CONVERTED = "converted"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class IngestOutcome:
    """The fate of one input (a series, a volume file, or a group of skipped files).

    ``source`` (the path relative to the input folder) is None with ``--case-ids hash``.
    """

    kind: OutcomeKind
    source: str | None
    reason: str = ""
    case_id: str | None = None
    files: int = 1
    record: ManifestRecord | None = None


@dataclass
class IngestReport:
    """Everything ``ingest`` did, for the summary table and the exit code."""

    manifest_path: Path
    outcomes: list[IngestOutcome] = field(default_factory=list)
    ignored_files: int = 0  # neither DICOM nor a volume file, or medseg's temporary files
    unreadable: int = 0  # files and folders that cannot be read (also failed outcomes)
    links_not_followed: int = 0  # symbolic links to folders searched already
    discovery: dict = field(default_factory=dict)  # the report's section on non-scan files

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
    non_finite: NonFinitePolicy = NonFinitePolicy.ERROR,
    on_progress: ProgressCallback | None = None,
    channel_rule: ChannelRule | None = None,
) -> IngestReport:
    """Convert every scan under ``input_dir`` into ``out_dir`` and write the manifest.

    Args:
        input_dir: folder searched recursively; DICOM files are recognised by content.
        out_dir: output folder (created).
        case_ids: naming scheme of the cases (see ``medseg.ingest.case_ids``).
        labels_dir: optional folder of ``<case_id>.nii.gz`` (or ``.nrrd``, ``.mha``... any
            registered volume format) label maps on the scans' grids.
        workers: decoder processes for compressed DICOM (default: all cores).
        force: convert again even when a case's inputs are unchanged.
        non_finite: refuse scans with NaN/Inf voxels, or replace them (``non_finite``).
        on_progress: called with (phase, done, total) while working.

    Raises:
        InputFileError: ``labels_dir`` is given but is not a folder (checked before any work).
    """
    input_dir, out_dir = Path(input_dir).resolve(), Path(out_dir).resolve()
    if labels_dir is not None and not Path(labels_dir).is_dir():
        problem = "is not a folder" if Path(labels_dir).exists() else "no such folder"
        raise InputFileError(labels_dir, f"labels folder: {problem}")
    case_ids = CaseIdScheme(case_ids)
    non_finite = NonFinitePolicy(non_finite)
    progress = on_progress or (lambda phase, done, total: None)
    remove_temporary_leftovers(out_dir)
    found = discover_scans(
        input_dir, case_ids=case_ids, workers=workers, exclude=out_dir, on_progress=progress
    )
    tasks = found.tasks if channel_rule is None else assemble_channels(found.tasks, channel_rule)
    report = IngestReport(
        manifest_path=out_dir / "manifest.jsonl",
        ignored_files=len(found.scan.not_dicom) + len(found.walk.temporary),
        unreadable=sum(isinstance(e, UnreadableInputError) for e in found.failed),
        links_not_followed=len(found.walk.links_not_followed),
        discovery=found.report(),
    )
    report.outcomes.extend(_skipped_and_unreadable(found))
    for done, task in enumerate(tasks):
        progress("Converting", done, len(tasks))
        report.outcomes.append(
            _run_task(task, out_dir=out_dir, labels_dir=labels_dir, force=force, policy=non_finite)
        )
    progress("Converting", len(tasks), len(tasks))
    records = [o.record for o in report.outcomes if o.record is not None]
    write_manifest(records, report.manifest_path)
    write_json_atomic(out_dir / "ingest_report.json", _report_payload(report))
    return report


def remove_temporary_leftovers(out_dir: Path) -> int:
    """Delete the temporary files a killed run left in ``out_dir``; returns how many."""
    removed = 0
    for folder in (out_dir, out_dir / "images", out_dir / "labels"):
        for path in folder.glob(f"{TEMPORARY_PREFIX}*") if folder.is_dir() else ():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) of an interrupted run from %s", removed, out_dir)
    return removed


def _skipped_and_unreadable(found: Discovery) -> list[IngestOutcome]:
    """One outcome per (folder, reason) of skipped files (per reason with hashed ids), one per
    file or folder that cannot be read."""
    shown = found.case_ids is CaseIdScheme.FOLDER
    groups = Counter(
        (relative(s.path.parent, found.root) if shown else None, s.reason)
        for s in found.scan.skipped
    )
    outcomes = [
        IngestOutcome(OutcomeKind.SKIPPED, source=folder, reason=reason, files=count)
        for (folder, reason), count in sorted(groups.items(), key=lambda item: str(item[0]))
    ]
    outcomes += [
        IngestOutcome(OutcomeKind.FAILED, source=f.source, reason=f.reason, case_id=f.case_id)
        for f in found.failed_inputs()
    ]
    return outcomes


def _fingerprint(
    files: list[Path], labels: Path | None, policy: NonFinitePolicy, recipe: str = ""
) -> str:
    parts = [__version__, f"non_finite={policy.value}", *([recipe] if recipe else [])]
    for path in [*files, *([labels] if labels is not None and labels.exists() else [])]:
        if not path.exists():  # e.g. the data file of a detached header: reading it fails
            parts.append(f"{path}|missing")
            continue
        stat = path.stat()
        parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
    return hash_identifier("\n".join(parts))


def _run_task(
    task: ScanTask,
    *,
    out_dir: Path,
    labels_dir: Path | None,
    force: bool,
    policy: NonFinitePolicy,
) -> IngestOutcome:
    label_files = volume_files_named(labels_dir, task.case_id) if labels_dir is not None else []
    label_path = label_files[0] if label_files else None
    case = ConvertedCase(out_dir=out_dir, case_id=task.case_id)
    fingerprint = _fingerprint(task.files, label_path, policy, task.recipe)
    source_hash = hash_identifier("\n".join(str(p) for p in task.files))
    source = task.source if task.paths_shown else None
    try:
        if not force and case.is_current(fingerprint):
            return IngestOutcome(
                OutcomeKind.UNCHANGED,
                source,
                case_id=task.case_id,
                files=len(task.files),
                record=case.record(),
            )
        if len(label_files) > 1:
            names = " and ".join(path.name for path in label_files)
            raise InputFileError(labels_dir, f"labels folder holds {names}: which is the label?")
        volume = task.read(policy)
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
        reason = task.redact(_problem(error))
        logger.warning("%s: %s", task.public_name, reason)
        return IngestOutcome(
            OutcomeKind.FAILED, source, reason=reason, case_id=task.case_id, files=len(task.files)
        )
    except Exception as error:  # one bad scan must never stop the batch
        shutdown.reraise_if_stopping(error)
        reason = task.redact(f"unexpected {type(error).__name__}: {error}")
        logger.error("%s: %s", task.public_name, reason)
        logger.debug("%s", task.redact(traceback.format_exc()))
        return IngestOutcome(
            OutcomeKind.FAILED, source, reason=reason, case_id=task.case_id, files=len(task.files)
        )
    corrections = "; ".join(volume.metadata.get("corrections", []))
    return IngestOutcome(
        OutcomeKind.CONVERTED,
        source,
        reason=corrections,
        case_id=task.case_id,
        files=len(task.files),
        record=record,
    )


def _problem(error: MedsegError) -> str:
    return getattr(error, "problem", None) or str(error)


def _load_label(path: Path, image: Volume) -> Volume:
    return check_label(read_volume(path).to_closest_ras(), image, path=path)


def _report_payload(report: IngestReport) -> dict:
    outcomes = []
    for o in report.outcomes:
        entry = {"kind": o.kind.value, "case_id": o.case_id, "files": o.files, "reason": o.reason}
        outcomes.append(entry if o.source is None else {**entry, "source": o.source})
    return {
        "medseg_version": __version__,
        "manifest": report.manifest_path.name,
        "ignored_files": report.ignored_files,
        "unreadable": report.unreadable,
        "counts": dict(Counter(o.kind.value for o in report.outcomes)),
        "outcomes": outcomes,
        **report.discovery,
    }
