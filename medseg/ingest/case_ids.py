"""Case identifiers of ingested volumes.

Default (``hash``): ``<modality>_<16 hex digits>`` from the SeriesInstanceUID (DICOM) or the
file's path relative to the input folder (a NIfTI, NRRD or other volume file, whose modality is
unknown: ``nifti_``, ``nrrd_``, ``mha_`` after its format). It identifies the case without
revealing anything about the patient. A volume file already named by such an id (an ingested
volume, ``images/ct_0123456789abcdef.nii.gz``) keeps it, so ingest, predict and evaluate agree
on the names. ``folder`` uses the series folder (or file) name, for users who name folders
themselves and ask for readable ids; it is their choice to make.

Files that are not scans (unreadable, or another format) are named in reports by their path
relative to the input folder with ``folder``, else by ``file_<16 hex digits>`` of that path.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from medseg.io.dicom import DicomSeries
from medseg.io.formats import format_names, volume_stem
from medseg.phi import hash_identifier

# Ids medseg gives with ``hash``: the modality of a DICOM series (or the format of a volume
# file), 16 hex digits, and the part of a split series or the number of a repeated id. They
# carry nothing about the patient.
_MODALITY_PREFIXES = ("ct", "mr", "pt", "nm", "ot", "scan")
_ANONYMOUS_TAIL = r"_[0-9a-f]{16}(?:-\d+)?(?:_\d+)?"


def is_anonymous_id(name: str) -> bool:
    """Whether ``name`` is an id medseg gives with ``hash`` (see above)."""
    prefixes = "|".join(re.escape(p) for p in (*_MODALITY_PREFIXES, *format_names()))
    return re.fullmatch(rf"(?:{prefixes}){_ANONYMOUS_TAIL}", name) is not None


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
    inside = folder.relative_to(root) if folder.is_relative_to(root) else Path(folder.name)
    name = _safe("_".join(inside.parts) or root.name)
    number = series.metadata.get("series_number")
    if series_in_folder > 1 and number is not None:
        name += f"_s{int(number)}"
    if series.part:
        name += f"_p{series.part}"
    return name


def volume_file_case_id(path: Path, *, root: Path, prefix: str, scheme: CaseIdScheme) -> str:
    """Case id of a volume file (NIfTI, NRRD...); ``prefix`` starts a hashed id."""
    stem = volume_stem(path)
    if scheme is CaseIdScheme.HASH:
        if is_anonymous_id(stem):
            return stem
        return f"{_safe(prefix.lower())}_{_path_hash(path, root)}"
    return _safe(stem)


def unreadable_case_id(path: Path, *, root: Path, scheme: CaseIdScheme) -> str:
    """Case id under which a file or folder that cannot be read is reported as failed."""
    if scheme is CaseIdScheme.HASH:
        return f"unreadable_{_path_hash(path, root)}"
    return "unreadable_" + _safe(relative(path, root))


def file_reference(path: Path, *, root: Path, scheme: CaseIdScheme) -> str:
    """How reports name a file or folder that is not a scan (see the module docstring)."""
    if scheme is CaseIdScheme.HASH:
        return f"file_{_path_hash(path, root)}"
    return relative(path, root)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else its name."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name


def _path_hash(path: Path, root: Path) -> str:
    return hash_identifier(relative(path, root))
