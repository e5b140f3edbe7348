"""What medseg needs from a PACS, whatever the protocol: find series, retrieve them, store.

``DicomwebClient`` (QIDO-RS, WADO-RS, STOW-RS) and ``DimseClient`` (C-FIND, C-GET, C-STORE)
implement ``PacsClient``; ``medseg.pacs.connect.open_client`` picks one from the config.
Errors: ``PacsUnavailableError`` when the PACS cannot be reached or fails (worth a retry),
``PacsRefusedError`` when it answers but refuses; messages name the PACS, never a patient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol


def instance_file_name(sop_instance_uid: str) -> str:
    """The file name of a retrieved instance: a hash of its SOP instance UID, so names are
    stable across retrievals and reveal nothing."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:20] + ".dcm"


@dataclass(frozen=True)
class SeriesInfo:
    """One series as the PACS describes it (the attributes the filter rules look at)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    study_date: date | None = None
    series_number: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class SeriesQuery:
    """What is asked of the PACS; the remaining rules are applied by ``SeriesFilter``."""

    modalities: tuple[str, ...] = ()
    study_date_from: date | None = None
    study_date_to: date | None = None
    study_uid: str | None = None


class PacsClient(Protocol):
    """A connection to one PACS."""

    name: str

    def echo(self) -> None:
        """Check that the PACS answers (C-ECHO or a QIDO request); raise otherwise."""

    def find_series(self, query: SeriesQuery) -> list[SeriesInfo]:
        """The series matching ``query``."""

    def retrieve_series(self, series: SeriesInfo, folder: Path) -> list[Path]:
        """Write every instance of ``series`` into ``folder`` (one file each, written
        atomically, named by a hash of the SOP instance UID); returns the files."""

    def store(self, files: Sequence[Path]) -> None:
        """Send DICOM files to the PACS; raise unless every one was accepted."""

    def has_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> bool:
        """Whether the PACS already holds this instance."""

    def close(self) -> None:
        """Release the connection."""
