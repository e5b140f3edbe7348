"""Case identifiers of ingested volumes.

Default (``hash``): ``<modality>_<16 hex digits>`` from the SeriesInstanceUID (DICOM) or the
file's path relative to the input folder (NIfTI). It identifies the case without revealing
anything about the patient. ``folder`` uses the series folder (or NIfTI file) name, for users
who name folders themselves and ask for readable ids; it is their choice to make.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from medseg.io.dicom import DicomSeries
from medseg.io.nifti import nifti_stem
from medseg.phi import hash_identifier


class CaseIdScheme(StrEnum):
    """How ingest names cases."""

    HASH = "hash"
    FOLDER = "folder"


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def dicom_case_id(
    series: DicomSeries, *, root: Path, scheme: CaseIdScheme, series_in_folder: int
) -> str:
    """Case id of a DICOM series; ``series_in_folder`` counts series sharing its folder."""
    if scheme is CaseIdScheme.HASH:
        modality = str(series.metadata.get("modality", "scan")).lower()
        return f"{_safe(modality)}_{series.series_id}"
    folder = series.files[0].parent
    relative = folder.relative_to(root) if folder.is_relative_to(root) else Path(folder.name)
    name = _safe("_".join(relative.parts) or root.name)
    number = series.metadata.get("series_number")
    if series_in_folder > 1 and number is not None:
        name += f"_s{int(number)}"
    if series.part:
        name += f"_p{series.part}"
    return name


def nifti_case_id(path: Path, *, root: Path, modality: str, scheme: CaseIdScheme) -> str:
    """Case id of a NIfTI input file."""
    if scheme is CaseIdScheme.HASH:
        return f"{_safe(modality.lower())}_{hash_identifier(str(path.relative_to(root)))}"
    return _safe(nifti_stem(path))
