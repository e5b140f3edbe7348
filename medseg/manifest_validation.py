"""Check a manifest against its files: existence, checksums, geometry, label values.

``medseg validate-manifest`` calls ``validate_manifest``; problems are reported per case and
never stop the check of the other cases.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputFileError, NonIntegralLabelError
from medseg.io.formats import data_files, read_volume
from medseg.manifest import (
    SPACING_ATOL_MM,
    CaseProblem,
    ManifestRecord,
    ProblemKind,
    grid_mismatch,
    label_values,
    manifest_spacing,
    read_manifest,
    resolve,
    volume_sha256,
)
from medseg.volume import Volume

logger = logging.getLogger(__name__)


@dataclass
class ManifestValidation:
    """Result of ``validate_manifest``: how many cases were checked and what is wrong."""

    manifest_path: Path
    n_cases: int
    problems: list[CaseProblem]

    @property
    def ok(self) -> bool:
        """True when no case has a problem."""
        return not self.problems

    def by_case(self) -> dict[str, list[CaseProblem]]:
        """Problems grouped by case id (only cases with problems)."""
        grouped: dict[str, list[CaseProblem]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.case_id, []).append(problem)
        return grouped


def _check_file(
    path: Path, expected_sha256: str, *, case_id: str, problems: list[CaseProblem]
) -> Volume | None:
    """Check existence and checksum of one file and read it; record problems."""
    if not path.is_file():
        problems.append(CaseProblem(case_id, ProblemKind.MISSING_FILE, f"{path}: file not found"))
        return None
    for data in data_files(path):  # of a detached header
        if not data.is_file():
            detail = f"{path}: its data file {data} is not found"
            problems.append(CaseProblem(case_id, ProblemKind.MISSING_FILE, detail))
            return None
    actual = volume_sha256(path)
    if actual != expected_sha256:
        detail = f"{path}: sha256 is {actual}, manifest says {expected_sha256}"
        problems.append(CaseProblem(case_id, ProblemKind.CHECKSUM_MISMATCH, detail))
    try:
        return read_volume(path)
    except InputFileError as exc:
        problems.append(CaseProblem(case_id, ProblemKind.UNREADABLE, str(exc)))
        return None


def _check_image(image: Volume, path: Path, record: ManifestRecord) -> list[CaseProblem]:
    problems = []
    if list(image.shape) != record.shape:
        detail = f"{path}: shape {list(image.shape)}, manifest says {record.shape}"
        problems.append(CaseProblem(record.case_id, ProblemKind.SHAPE_MISMATCH, detail))
    spacing = manifest_spacing(image)
    if not np.allclose(spacing, record.spacing, rtol=0, atol=SPACING_ATOL_MM):
        detail = f"{path}: spacing {spacing} mm, manifest says {record.spacing}"
        problems.append(CaseProblem(record.case_id, ProblemKind.SPACING_MISMATCH, detail))
    return problems


def _check_label(
    label: Volume, path: Path, image: Volume | None, case_id: str
) -> list[CaseProblem]:
    problems = []
    try:
        label_values(label.array)
    except NonIntegralLabelError as exc:
        problems.append(CaseProblem(case_id, ProblemKind.NON_INTEGRAL_LABEL, f"{path}: {exc}"))
    mismatch = grid_mismatch(image, label) if image is not None else None
    if mismatch:
        problems.append(CaseProblem(case_id, ProblemKind.GRID_MISMATCH, f"{path}: {mismatch}"))
    return problems


def _validate_record(
    record: ManifestRecord, manifest_path: Path, data_root: Path | None
) -> list[CaseProblem]:
    image_path, label_path = resolve(record, manifest_path, data_root)
    problems: list[CaseProblem] = []
    image = _check_file(image_path, record.sha256, case_id=record.case_id, problems=problems)
    if image is not None:
        problems += _check_image(image, image_path, record)
    if label_path is not None and record.label_sha256 is not None:
        label = _check_file(
            label_path, record.label_sha256, case_id=record.case_id, problems=problems
        )
        if label is not None:
            problems += _check_label(label, label_path, image, record.case_id)
    return problems


def validate_manifest(
    path: str | os.PathLike[str], *, data_root: Path | None = None
) -> ManifestValidation:
    """Check every case of a manifest against its files.

    Per case: files exist, checksums match, the image's shape and spacing are the recorded
    ones, the label is on the image's grid and holds only whole numbers.

    Raises:
        ManifestError: the manifest itself cannot be read (see ``read_manifest``).
    """
    path = Path(path)
    records = read_manifest(path)
    problems: list[CaseProblem] = []
    for record in records:
        problems += _validate_record(record, path, data_root)
    logger.info("checked %d cases of %s: %d problem(s)", len(records), path.name, len(problems))
    return ManifestValidation(manifest_path=path, n_cases=len(records), problems=problems)
