"""Find every scan under a path: DICOM series (by content) and NIfTI files (by suffix).

Shared by the ingest stage and the predictor: each scan becomes a ``ScanTask`` that knows
where it came from, its case id and how to load its volume (closest-RAS order); files that are
not scans stay in the ``DicomScan`` (skipped with reasons, unreadable, not DICOM).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg.ingest.case_ids import CaseIdScheme, dicom_case_id, nifti_case_id
from medseg.io.dicom import DicomScan, DicomSeries, load_series, scan_dicom_files
from medseg.io.nifti import is_nifti_path, read_nifti
from medseg.volume import Volume

ProgressCallback = Callable[[str, int, int], None]


@dataclass
class ScanTask:
    """One scan to process: where it is, what it is called, how to load it."""

    source: str  # path relative to the searched folder (for messages)
    case_id: str
    files: list[Path]
    load: Callable[[], Volume]
    series: DicomSeries | None = None  # set for DICOM inputs


@dataclass
class Discovery:
    """The scans found, and what else the DICOM scan saw."""

    root: Path
    tasks: list[ScanTask]
    scan: DicomScan


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else its name."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def discover_scans(
    input_path: Path,
    *,
    case_ids: CaseIdScheme = CaseIdScheme.HASH,
    workers: int | None = None,
    exclude: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> Discovery:
    """Every DICOM series and NIfTI file at or under ``input_path`` (``exclude`` left out)."""
    input_path = Path(input_path).resolve()
    root = input_path if input_path.is_dir() else input_path.parent
    if input_path.is_dir():
        files = sorted(
            p
            for p in input_path.rglob("*")
            if p.is_file() and not (exclude is not None and p.is_relative_to(exclude))
        )
    else:
        files = [input_path]
    progress = on_progress or (lambda phase, done, total: None)
    scan = _scan_with_progress([p for p in files if not is_nifti_path(p)], progress, workers)
    tasks = _dicom_tasks(scan.series, root, CaseIdScheme(case_ids), workers)
    tasks += [
        _nifti_task(path, root, CaseIdScheme(case_ids)) for path in files if is_nifti_path(path)
    ]
    _make_ids_unique(tasks)
    return Discovery(root=root, tasks=tasks, scan=scan)


def _scan_with_progress(
    paths: list[Path], progress: ProgressCallback, workers: int | None
) -> DicomScan:
    def counted():
        for done, path in enumerate(paths):
            if done % 50 == 0:
                progress("Reading headers", done, len(paths))
            yield path
        progress("Reading headers", len(paths), len(paths))

    return scan_dicom_files(counted(), workers=workers)


def _dicom_tasks(
    series_list: list[DicomSeries], root: Path, scheme: CaseIdScheme, workers: int | None
) -> list[ScanTask]:
    per_folder = Counter((series.files[0].parent, series.series_uid) for series in series_list)
    folders = Counter(folder for folder, _ in per_folder)
    tasks = []
    for series in series_list:
        source = series.describe(root)
        case_id = dicom_case_id(
            series, root=root, scheme=scheme, series_in_folder=folders[series.files[0].parent]
        )
        tasks.append(
            ScanTask(
                source=source,
                case_id=case_id,
                files=series.files,
                load=lambda s=series, src=source: load_series(s, workers=workers, source=src),
                series=series,
            )
        )
    return tasks


def _nifti_task(path: Path, root: Path, scheme: CaseIdScheme) -> ScanTask:
    def load() -> Volume:
        volume = read_nifti(path).to_closest_ras()
        volume.metadata.setdefault("modality", "unknown")
        return volume

    case_id = nifti_case_id(path, root=root, modality="nifti", scheme=scheme)
    return ScanTask(source=relative(path, root), case_id=case_id, files=[path], load=load)


def _make_ids_unique(tasks: list[ScanTask]) -> None:
    """Two inputs that would get the same case id get a numbered suffix instead of colliding."""
    seen: Counter[str] = Counter()
    for task in tasks:
        seen[task.case_id] += 1
        if seen[task.case_id] > 1:
            task.case_id = f"{task.case_id}_{seen[task.case_id]}"
